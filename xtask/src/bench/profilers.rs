//! The profilers a benchmark compares, started against one target process and stopped
//! with their own counts: mapwatch (`attach`, `run`), the probe variants of
//! mapwatch/examples/probe_bench.rs, and bpftrace.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicU16, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::procs::{self, http_get, metric_sum, pinned};

/// The core the profiler and the load generator run on (the target has the other).
pub const PROFILER_CPU: u32 = 0;
pub const TARGET_CPU: u32 = 1;

#[derive(Debug, Clone)]
pub enum Profiler {
    None,
    /// `mapwatch attach --pid P [--exact]`.
    Attach {
        exact: bool,
    },
    /// `mapwatch run` limited to the target's binary name, with extra flags.
    Run {
        flags: Vec<String>,
    },
    /// `mapwatch record --pid P` into a temporary file (every probe on, RETs, stacks at
    /// map growths, `--stack-depth N` at slice growths).
    Record {
        stack_depth: u8,
    },
    /// `probe_bench ARGS… --pid P` (prints {"attached"…}, waits for EOF, prints counts).
    Tool {
        args: Vec<String>,
    },
    /// bpftrace counting hits at these sites of the target's binary, RETs apart (they
    /// are single-stepped: the budget model prices them differently).
    Bpftrace {
        sites: Vec<ProbeSite>,
    },
}

/// A file offset to probe, and whether it is a RET instruction.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSite {
    pub file_offset: u64,
    pub ret: bool,
}

pub struct Paths {
    pub mapwatch: PathBuf,
    pub probe_bench: PathBuf,
}

/// A profiler attached to a target.
pub struct Running {
    child: Option<Child>,
    stdout: Option<BufReader<ChildStdout>>,
    /// Where its /metrics are (mapwatch only).
    pub addr: Option<String>,
    kind: Profiler,
    /// The tool's first JSON line (what it attached, how long it took).
    attached: Option<serde_json::Value>,
    /// Counts before the measured part of the run (see `start_counting`).
    baseline: Counts,
}

/// What a profiler counted, read when it stopped.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub hits: Option<f64>,
    /// Hits of RET probes among `hits` (mapwatch and bpftrace).
    pub ret_hits: Option<f64>,
    pub lost: Option<f64>,
    /// mapwatch: hits per probe name.
    pub hits_by_probe: std::collections::BTreeMap<String, f64>,
    /// mapwatch: the overhead budget's own estimate (`mapwatch_estimated_overhead_ratio`,
    /// summed over workloads) and duty cycle per probe, when the daemon exports them.
    pub estimated_overhead: Option<f64>,
    pub duty_cycle: std::collections::BTreeMap<String, f64>,
    /// The tool's last JSON line.
    pub report: Option<serde_json::Value>,
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(19500);

fn next_addr() -> String {
    format!("127.0.0.1:{}", NEXT_PORT.fetch_add(1, Ordering::Relaxed))
}

impl Profiler {
    pub fn is_mapwatch(&self) -> bool {
        matches!(self, Profiler::Attach { .. } | Profiler::Run { .. })
    }

    pub fn start(&self, paths: &Paths, target_pid: u32, binary: &Path) -> anyhow::Result<Running> {
        let mut running = Running {
            child: None,
            stdout: None,
            addr: None,
            kind: self.clone(),
            attached: None,
            baseline: Counts::default(),
        };
        match self {
            Profiler::None => {}
            Profiler::Attach { exact } => {
                let addr = next_addr();
                let mut command = pinned(PROFILER_CPU, &paths.mapwatch);
                command.args([
                    "attach",
                    "--pid",
                    &target_pid.to_string(),
                    "--listen",
                    &addr,
                ]);
                if *exact {
                    command.arg("--exact");
                }
                running.child = Some(spawn_quiet(command)?);
                wait_ready(&addr, &mut running, |body| body.0 == 200, "/readyz")?;
                running.addr = Some(addr);
            }
            Profiler::Run { flags } => {
                let addr = next_addr();
                let name = binary
                    .file_name()
                    .context("binary name")?
                    .to_string_lossy()
                    .into_owned();
                let mut command = pinned(PROFILER_CPU, &paths.mapwatch);
                command
                    .args(["run", "--listen", &addr, "--kubernetes", "off"])
                    .args(["--include-binary", &name])
                    .args(flags);
                running.child = Some(spawn_quiet(command)?);
                wait_ready(
                    &addr,
                    &mut running,
                    |(status, body)| {
                        status == 200 && metric_sum(&body, "mapwatch_attached_processes", "") >= 1.0
                    },
                    "/metrics",
                )?;
                running.addr = Some(addr);
            }
            Profiler::Record { stack_depth } => {
                let file = std::env::temp_dir().join(format!(
                    "mapwatch-bench-record-{}.mapwatch",
                    std::process::id()
                ));
                let mut command = pinned(PROFILER_CPU, &paths.mapwatch);
                command
                    .args(["record", "--pid", &target_pid.to_string()])
                    .args([
                        "--duration",
                        "1h",
                        "--stack-depth",
                        &stack_depth.to_string(),
                    ])
                    .arg("-o")
                    .arg(&file);
                let mut child = command
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .with_context(|| format!("starting {command:?}"))?;
                // It says "recording pid …" once its probes are attached.
                let mut stderr = BufReader::new(child.stderr.take().context("stderr")?);
                let mut line = String::new();
                while !line.contains("recording pid") {
                    line.clear();
                    if stderr.read_line(&mut line)? == 0 {
                        let _ = child.wait();
                        bail!("mapwatch record exited before attaching");
                    }
                }
                // Keep draining stderr so the recorder never blocks on a full pipe.
                std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
                running.child = Some(child);
            }
            Profiler::Tool { args } => {
                let mut command = pinned(PROFILER_CPU, &paths.probe_bench);
                command.args(args).args(["--pid", &target_pid.to_string()]);
                let mut child = command
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .with_context(|| format!("starting {command:?}"))?;
                let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
                let mut line = String::new();
                stdout.read_line(&mut line)?;
                let Ok(attached) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("probe_bench {args:?} did not attach: {line:?}");
                };
                running.attached = Some(attached);
                running.child = Some(child);
                running.stdout = Some(stdout);
            }
            Profiler::Bpftrace { sites } => {
                ensure_tracefs()?;
                let path = binary.display();
                let probes = |ret: bool| -> Vec<String> {
                    sites
                        .iter()
                        .filter(|s| s.ret == ret)
                        .map(|s| format!("uprobe:{path}:{}", s.file_offset))
                        .collect()
                };
                let mut script = String::from("BEGIN { printf(\"ready\\n\"); }\n");
                for (ret, map) in [(false, "@hits"), (true, "@rets")] {
                    let probes = probes(ret);
                    if !probes.is_empty() {
                        script += &format!("{} {{ {map} = count(); }}\n", probes.join(",\n"));
                    }
                }
                let mut command = pinned(PROFILER_CPU, Path::new("bpftrace"));
                // --unsafe: bpftrace cannot check instruction boundaries in a stripped
                // binary; mapwatch's plan already did (its offsets are checked against
                // objdump in the test suite).
                command.args(["--unsafe", "-B", "line", "-e", &script]);
                let mut child = command
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting bpftrace (Debian package bpftrace)")?;
                let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
                loop {
                    let mut line = String::new();
                    if stdout.read_line(&mut line)? == 0 {
                        let _ = child.wait();
                        bail!("bpftrace exited before attaching");
                    }
                    if line.trim() == "ready" {
                        break;
                    }
                }
                running.child = Some(child);
                running.stdout = Some(stdout);
            }
        }
        Ok(running)
    }

    pub fn name(&self) -> String {
        match self {
            Profiler::None => "no profiler".into(),
            Profiler::Attach { exact: false } => "`mapwatch attach`".into(),
            Profiler::Attach { exact: true } => "`mapwatch attach --exact`".into(),
            Profiler::Run { flags } if flags.is_empty() => "`mapwatch run` (default)".into(),
            Profiler::Run { flags } => format!("`mapwatch run {}`", flags.join(" ")),
            Profiler::Record { stack_depth: 0 } => "`mapwatch record`".into(),
            Profiler::Record { stack_depth } => {
                format!("`mapwatch record --stack-depth {stack_depth}`")
            }
            Profiler::Tool { args } => format!("probe_bench {}", args.join(" ")),
            Profiler::Bpftrace { sites } => format!("bpftrace, {} uprobes", sites.len()),
        }
    }
}

impl Running {
    /// The profiler's own process (its CPU is accounted separately).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// From now on, counts are what happens after this point (mapwatch only: the
    /// other profilers count from their start).
    pub fn start_counting(&mut self) {
        self.baseline = self.counts_since(&Counts::default());
    }

    /// mapwatch's counters (from /metrics) minus `baseline`'s; gauges as they are now.
    fn counts_since(&self, baseline: &Counts) -> Counts {
        let mut counts = Counts::default();
        let Some((200, body)) = http_get(self.addr.as_deref().unwrap_or(""), "/metrics") else {
            return counts;
        };
        let since = |now: f64, before: Option<f64>| Some(now - before.unwrap_or(0.0));
        counts.hits = since(
            metric_sum(&body, "mapwatch_probe_hits_total", ""),
            baseline.hits,
        );
        counts.ret_hits = since(
            metric_sum(&body, "mapwatch_probe_hits_total", "_ret\""),
            baseline.ret_hits,
        );
        counts.lost = since(
            metric_sum(&body, "mapwatch_events_lost_total", ""),
            baseline.lost,
        );
        counts.hits_by_probe = procs::metric_by_label(&body, "mapwatch_probe_hits_total", "probe")
            .into_iter()
            .map(|(probe, hits)| {
                let before = baseline.hits_by_probe.get(&probe).copied().unwrap_or(0.0);
                (probe, hits - before)
            })
            .collect();
        counts.duty_cycle =
            procs::metric_by_label(&body, "mapwatch_probe_duty_cycle_ratio", "probe");
        counts.estimated_overhead = body
            .contains("mapwatch_estimated_overhead_ratio{")
            .then(|| metric_sum(&body, "mapwatch_estimated_overhead_ratio", ""));
        counts
    }

    /// Detaches and collects the counts.
    pub fn stop(mut self) -> anyhow::Result<Counts> {
        let mut counts = Counts::default();
        let Some(mut child) = self.child.take() else {
            return Ok(counts);
        };
        match &self.kind {
            Profiler::None => {}
            Profiler::Attach { .. } | Profiler::Run { .. } => {
                counts = self.counts_since(&self.baseline);
                procs::signal(child.id(), "TERM");
                procs::wait_or_kill(&mut child, Duration::from_secs(30));
            }
            Profiler::Record { .. } => {
                procs::signal(child.id(), "INT");
                procs::wait_or_kill(&mut child, Duration::from_secs(30));
                let _ = std::fs::remove_file(std::env::temp_dir().join(format!(
                    "mapwatch-bench-record-{}.mapwatch",
                    std::process::id()
                )));
            }
            Profiler::Tool { .. } => {
                drop(child.stdin.take());
                let mut rest = String::new();
                if let Some(stdout) = self.stdout.as_mut() {
                    stdout.read_to_string(&mut rest)?;
                }
                procs::wait_or_kill(&mut child, Duration::from_secs(30));
                let mut report: serde_json::Value = serde_json::from_str(rest.trim())
                    .with_context(|| format!("probe_bench said {rest:?}"))?;
                // An empty program counts nothing: no hits rather than zero.
                if report["counts_hits"] != false {
                    counts.hits = report["hits"]
                        .as_f64()
                        .or_else(|| report["site_hits"].as_f64());
                }
                if let (Some(all), Some(first)) = (report.as_object_mut(), self.attached.take())
                    && let Some(first) = first.as_object()
                {
                    all.extend(first.clone());
                }
                counts.report = Some(report);
            }
            Profiler::Bpftrace { .. } => {
                // A SIGINT that lands while bpftrace is still starting its event loop
                // is sometimes lost (seen here once in ~20 runs): ask again.
                for _ in 0..10 {
                    procs::signal(child.id(), "INT");
                    if wait_exit(&mut child, Duration::from_secs(2)) {
                        break;
                    }
                }
                procs::wait_or_kill(&mut child, Duration::from_secs(5));
                let mut rest = String::new();
                if let Some(stdout) = self.stdout.as_mut() {
                    stdout.read_to_string(&mut rest)?;
                }
                let count = |map: &str| -> f64 {
                    rest.lines()
                        .find_map(|l| l.strip_prefix(map))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0.0)
                };
                let rets = count("@rets:");
                counts.hits = Some(count("@hits:") + rets);
                counts.ret_hits = Some(rets);
            }
        }
        Ok(counts)
    }
}

/// True if the child exited within `limit` (it is left running otherwise).
fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn spawn_quiet(mut command: Command) -> anyhow::Result<Child> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env("RUST_LOG", "warn")
        .spawn()
        .with_context(|| format!("starting {command:?}"))
}

fn wait_ready(
    addr: &str,
    running: &mut Running,
    ready: impl Fn((u16, String)) -> bool,
    path: &str,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Some(response) = http_get(addr, path)
            && ready(response)
        {
            return Ok(());
        }
        if let Some(child) = running.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            bail!(
                "{} exited before it was ready: {status}",
                running.kind.name()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Some(mut child) = running.child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    bail!("{} was not ready within 30 s", running.kind.name())
}

/// bpftrace attaches uprobes at raw offsets through tracefs (uprobe_events), which is
/// not mounted on many machines (docs/building.md).
fn ensure_tracefs() -> anyhow::Result<()> {
    if Path::new("/sys/kernel/tracing/uprobe_events").exists() {
        return Ok(());
    }
    let status = Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status()?;
    if !status.success() {
        bail!("mounting tracefs for bpftrace failed: {status}");
    }
    Ok(())
}
