//! The command line: clap definitions here, one file per command; `session` is the
//! profiling pipeline the commands that profile (`attach`, `run`) start and stop alike.
mod attach;
mod inspect;
pub mod logging;
mod record;
mod report;
mod run;
pub mod run_flags;
mod session;
mod target;

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};

use crate::plan::HotProbe;

/// Errors the user can fix (bad pid, not a Go program, unsupported version, missing
/// privileges): one line, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

#[derive(Debug, Parser)]
#[command(
    name = "mapwatch",
    version,
    about = "Watch maps and slices grow in running Go programs (eBPF uprobes, no restart).",
    long_about = "mapwatch attaches uprobes to the Go runtime in a running Go program — \
slice growth (runtime.growslice), map growth (hashGrow, or the Swiss tables' grow and \
split), make(map) hints, stop-the-world pauses and GC cycles — and serves what it sees \
as Prometheus metrics. No recompile, no restart, no change to the program.\n\n\
Example:\n  sudo mapwatch attach --pid $(pidof myservice) --listen 127.0.0.1:9433\n  \
curl -s 127.0.0.1:9433/metrics | grep mapwatch_slice_grow",
    after_help = "Logs go to stderr. MAPWATCH_LOG (or RUST_LOG) sets what is logged, e.g. \
MAPWATCH_LOG=debug or MAPWATCH_LOG=mapwatch::budget=debug; default: info for `run`, warn \
for the other commands."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr: `auto` is plain text, coloured only on a terminal; `json`
    /// is one object per line, for log collectors.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = logging::LogFormat::Auto,
        env = "MAPWATCH_LOG_FORMAT"
    )]
    pub log_format: logging::LogFormat,
}

impl Cli {
    /// Installs logging for this command line (see [`logging::init`]).
    pub fn init_logging(&self) {
        let default_level = match self.command {
            Command::Run(_) => "info",
            Command::Attach(_) | Command::Inspect(_) | Command::Record(_) | Command::Report(_) => {
                "warn"
            }
        };
        logging::init(self.log_format, default_level);
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The node daemon: profile every Go process on this machine (and in its
    /// containers), following new ones as they start, and serve their metrics.
    Run(Box<run_flags::RunFlags>),
    /// Profile one running Go process and serve its metrics.
    Attach(AttachArgs),
    /// Show what mapwatch can probe in a Go binary (no root needed).
    Inspect(InspectArgs),
    /// Capture a Go program's slice and map growth, GC cycles and stop-the-world pauses
    /// into a file for `mapwatch report`.
    #[command(after_help = "Examples:\n  \
sudo mapwatch record --pid $(pidof myservice) --duration 30s -o myservice.mapwatch\n  \
sudo mapwatch record -- ./loadtest -n 1000\n\n\
Every probe stays attached for the whole capture, RET probes included (each growth \
costs a few microseconds more than under `mapwatch run`): record for seconds or \
minutes, not for days. A capture that is killed is still readable up to its last \
second.")]
    Record(RecordArgs),
    /// Read a capture from `mapwatch record` and say which lines to change: the
    /// append and map-insert sites that grow most, the make(…, N) to write there, and
    /// what it saves.
    #[command(after_help = "Examples:\n  \
mapwatch report myservice.mapwatch                 # Markdown on stdout\n  \
mapwatch report myservice.mapwatch --format json -o report.json\n  \
mapwatch report run.mapwatch --fail-on 'slice_grow_bytes_rate>50MB/s,map_grow>1000'\n\n\
--fail-on takes comma-separated conditions NAME OP VALUE (OP: > >= < <=), any failing \
one fails the gate (exit code 3, summary on stderr). NAMEs: slice_grow, slice_grow_rate, \
slice_grow_bytes, slice_grow_bytes_rate, map_grow, map_grow_rate, gc_cycles, stw_p99, \
stw_max, advised_sites. Units: B kB MB GB KiB MiB GiB; /s after a rate; ms or s for \
pauses; k or M for counts.")]
    Report(ReportArgs),
}

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// Process id of the Go program to profile.
    #[arg(long)]
    pub pid: u32,
    /// Address to serve /metrics, /healthz and /readyz on, IP:PORT or HOST:PORT (port
    /// 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9433", value_parser = crate::config::parse_listen)]
    pub listen: SocketAddr,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C, SIGTERM or the
    /// process exits.
    #[arg(long, value_parser = positive_duration)]
    pub duration: Option<std::time::Duration>,
    /// Also probe RET instructions and check every derived value against the real one
    /// (mapwatch_exact_checks_total). Each RET hit is single-stepped by the kernel,
    /// about 4x the cost of an entry probe: for tests and short investigations.
    /// Every probe stays attached; the estimated cost is printed on exit.
    #[arg(long, conflicts_with = "overhead_budget")]
    pub exact: bool,
    /// Keep the probes' CPU within this share of one core, like 1%: probes that would
    /// cost more are attached only part of the time (duty-cycled) and their counts
    /// scaled and marked as estimates, as `mapwatch run` does [default: every probe
    /// always on; the estimated cost is printed on exit].
    #[arg(long, value_name = "PERCENT")]
    pub overhead_budget: Option<crate::config::Percent>,
    /// Opt-in probes on hot runtime functions, comma-separated (default: none).
    /// `mapassign_fast64`: where int64-keyed map assigns land in their tables
    /// (mapwatch_map_assign_bucket_position, mapwatch_map_probe_length); three probes
    /// per assign, two of them single-stepped: an assign took ~11 us instead of ~20 ns
    /// on a test VM. `mallocgc`: every heap allocation (mapwatch_malloc_total,
    /// _bytes_total), ~1.4-2 us each. Hot code calls these millions of times a
    /// second: for short investigations.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub hot_probes: Vec<HotProbe>,
}

#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// Process id of the Go program to record.
    #[arg(long, conflicts_with = "command", required_unless_present = "command")]
    pub pid: Option<u32>,
    /// How long to record, e.g. 30s or 2m [default: 30s with --pid; with a command,
    /// until it exits]. Ctrl-C ends a capture early and still writes a valid file.
    #[arg(long, value_parser = positive_duration)]
    pub duration: Option<std::time::Duration>,
    /// The file to write [default: BINARY.mapwatch in the current directory].
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Callers to record with each slice growth (frame pointers, up to 32), for
    /// `report --format pprof` traces; map growths always record 8, enough to find the
    /// line that inserted. Each frame is a memory read in the kernel (~0.1 us).
    #[arg(long, default_value_t = 0, value_name = "N",
          value_parser = clap::value_parser!(u8).range(0..=32))]
    pub stack_depth: u8,
    /// The Go program to start and record, with its arguments, after `--`. It starts
    /// with its probes in place; if it still runs when the capture ends, it gets
    /// SIGTERM (SIGKILL 5 s later).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A file written by `mapwatch record`.
    pub file: PathBuf,
    /// md: for people; json: the same content for programs (schema in
    /// docs/report.md); svg: charts for a browser; pprof: a gzipped profile for `go tool
    /// pprof` (needs -o); sarif: GitHub code scanning; vet: file:line:col: message
    /// lines; diff: a patch to your source that applies the advice (needs --source).
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    pub format: ReportFormat,
    /// Your checkout of the recorded program's source, for --format diff (and to make
    /// sarif and vet paths relative to it). Files are matched to the paths compiled into the
    /// binary by their longest common suffix.
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
    /// Sites shown per table.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub top: u32,
    /// Write the report here instead of stdout.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Exit with code 3 when any condition holds, e.g.
    /// 'slice_grow_bytes_rate>50MB/s,map_grow>1000' (see below).
    #[arg(long, value_name = "EXPR")]
    pub fail_on: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Md,
    Json,
    Svg,
    Pprof,
    Sarif,
    Vet,
    Diff,
}

/// A `--fail-on` condition held: the summary is already printed; exit code 3.
#[derive(Debug, thiserror::Error)]
#[error("the --fail-on gate failed")]
pub struct GateFailed;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Path to a Go executable.
    pub binary: PathBuf,
    /// Print the probe plan as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A duration flag that must be more than zero (`--duration 0s` would measure nothing
/// and divide by nothing).
fn positive_duration(text: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be more than 0s".to_string()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs the parsed command. Errors that are the user's to fix are [`UsageError`]s.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    raise_open_files_limit();
    match cli.command {
        Command::Run(flags) => run::run(*flags),
        Command::Attach(args) => attach::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Record(args) => record::run(args),
        Command::Report(args) => match report::run(args)? {
            true => Ok(()),
            false => Err(GateFailed.into()),
        },
    }
}

/// Raises the soft limit on open files to the hard one: the daemon holds a file per
/// analysed binary, per link and per HTTP client, and running out of them means a Go
/// process that starts then is not attached. The soft limit is often 1024 while the
/// hard one is far higher.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::debug!(
                    "raising the open files limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}
