//! The target is never disturbed: the Go standard library's own test suites (built by
//! `cargo xtask fixtures` into target/go-tests) pass the same under `mapwatch run` as
//! without it — same exit status, same tests passed, skipped and failed — with the
//! default probes and with the hot probes. A probe that corrupted a register, the stack
//! or memory of its target, or a uprobe the Go runtime trips over (a uretprobe's
//! hijacked return address breaks Go's stack copying and unwinding), shows up here as a
//! crash, a hang or a failing test.
//!
//! Each probed run is held at its exec (ptrace) until the daemon has attached it: most
//! of these suites finish in less time than the daemon takes to analyse a new binary,
//! and would otherwise run unprobed.
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use support::{Mapwatch, Scrape, in_ci, mapwatch_command, mapwatch_links, privileged};

/// A classic-map and a Swiss-map toolchain (xtask/src/fixtures.rs GO_TEST_TOOLCHAINS),
/// with whether its maps are Swiss tables.
const TOOLCHAINS: [(&str, bool); 2] = [("go1.22.10", false), ("go1.27.3", true)];

/// One `go test -c` binary, `target/go-tests/<toolchain>/<stem>.test`, and what to run
/// of it. Unprobed each takes at most a few seconds; under the hot probes (~1.5 µs more
/// per allocation, ~11-35 µs per int64-keyed map assign) the map-assign-heavy runtime
/// and internal/runtime/maps suites take 10-20 s on a 2-core VM, the others < 1 s.
struct Suite {
    stem: &'static str,
    args: &'static [&'static str],
    /// internal/runtime/maps exists only with Swiss tables.
    swiss_only: bool,
}

const SUITES: &[Suite] = &[
    Suite {
        stem: "strings",
        args: &[],
        swiss_only: false,
    },
    Suite {
        stem: "sort",
        args: &[],
        swiss_only: false,
    },
    Suite {
        stem: "slices",
        args: &[],
        swiss_only: false,
    },
    Suite {
        stem: "maps",
        args: &[],
        swiss_only: false,
    },
    Suite {
        stem: "json",
        args: &[],
        swiss_only: false,
    },
    Suite {
        stem: "list",
        args: &[],
        swiss_only: false,
    },
    Suite {
        stem: "heap",
        args: &[],
        swiss_only: false,
    },
    // The whole runtime suite takes minutes; its map, slice, append and stack-growth
    // tests take ~1-4 s and hit every probe. Stack growth and unwinding are where a
    // probe that changed a return address on a goroutine stack (as a uretprobe does)
    // crashes the runtime.
    Suite {
        stem: "runtime",
        args: &["-test.run", "Map|Slice|Append|Grow"],
        swiss_only: false,
    },
    Suite {
        stem: "runtime-maps",
        args: &[],
        swiss_only: true,
    },
];

/// Every run: verbose (one line per test), once, the short variants, and a timeout so
/// a hang fails with goroutine dumps instead of hanging the test.
const COMMON_ARGS: &[&str] = &[
    "-test.v",
    "-test.count=1",
    "-test.short",
    "-test.timeout=2m",
];

fn go_tests_dir() -> Option<PathBuf> {
    support::fixtures_dir()
        .parent()
        .map(|target| target.join("go-tests"))
}

/// Every (toolchain, suite, binary), or None (skip; a failure in CI) if one is missing.
fn binaries() -> Option<Vec<(&'static str, &'static Suite, PathBuf)>> {
    let dir = go_tests_dir()?;
    let mut all = Vec::new();
    for (go, swiss) in TOOLCHAINS {
        for suite in SUITES.iter().filter(|s| swiss || !s.swiss_only) {
            let path = dir.join(go).join(format!("{}.test", suite.stem));
            if !path.is_file() {
                let message = format!("{} missing: run `cargo xtask fixtures`", path.display());
                assert!(!in_ci(), "skipped in CI: {message}");
                eprintln!("SKIP {message}");
                return None;
            }
            all.push((go, suite, path));
        }
    }
    Some(all)
}

/// What a run of a test binary says about itself.
struct Outcome {
    status: ExitStatus,
    /// `PASS TestX`, `SKIP TestX/sub`, `FAIL …` for every `--- ` line (timings
    /// stripped), plus the binary's final `PASS` or `FAIL` (the `ok <package>` line is
    /// the go command's, not the test binary's).
    results: BTreeSet<String>,
    output: String,
    took: Duration,
}

impl Outcome {
    fn passed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.starts_with("PASS "))
            .count()
    }
}

fn results(output: &str) -> BTreeSet<String> {
    let mut results = BTreeSet::new();
    for line in output.lines() {
        let line = line.trim();
        if line == "PASS" || line == "FAIL" {
            results.insert(line.to_string());
        } else if let Some(rest) = line.strip_prefix("--- ")
            && let Some((verdict, named)) = rest.split_once(": ")
        {
            // "TestX/sub (0.01s)": the name has no spaces (testing rewrites them).
            let name = named.split(" (").next().unwrap_or(named);
            results.insert(format!("{verdict} {name}"));
        }
    }
    results
}

/// The `n` slowest tests of a run with their times, to see where a slow run went.
fn slowest(output: &str, n: usize) -> Vec<String> {
    let mut timed: Vec<(f64, &str)> = output
        .lines()
        .filter_map(|line| {
            let (name, time) = line.trim().strip_prefix("--- PASS: ")?.split_once(" (")?;
            Some((time.strip_suffix("s)")?.parse().ok()?, name))
        })
        .collect();
    timed.sort_by(|a, b| b.0.total_cmp(&a.0));
    timed
        .into_iter()
        .take(n)
        .map(|(secs, name)| format!("{name} {secs}s"))
        .collect()
}

/// The test binary's command: a fixed environment (no `go` on PATH, so tests that need
/// a toolchain skip alike in every run; no GODEBUG/GOGC/GOMAXPROCS from the caller)
/// and a neutral working directory.
fn command(binary: &PathBuf, suite: &Suite) -> Command {
    let mut command = Command::new(binary);
    command
        .args(COMMON_ARGS)
        .args(suite.args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn finish(child: Child, started: Instant) -> Outcome {
    let out = child.wait_with_output().expect("wait for the test binary");
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Outcome {
        status: out.status,
        results: results(&output),
        output,
        took: started.elapsed(),
    }
}

fn run_unprobed(binary: &PathBuf, suite: &Suite) -> Outcome {
    let started = Instant::now();
    let child = command(binary, suite).spawn().expect("start test binary");
    finish(child, started)
}

/// Kills a test binary the test gave up on (it may still be stopped at its exec).
struct Held(Option<Child>);

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the binary stopped at its exec until `daemon` has attached it (the only
/// process its filters admit), then lets it go. Returns its pid too.
fn run_probed(binary: &PathBuf, suite: &Suite, daemon: &Mapwatch) -> (Outcome, u32) {
    let mut command = command(binary, suite);
    // SAFETY: PTRACE_TRACEME is async-signal-safe; the child stops with SIGTRAP once
    // exec has loaded the Go binary, before any of its instructions run.
    unsafe {
        command.pre_exec(|| {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut held = Held(Some(command.spawn().expect("start test binary")));
    let pid = held.0.as_ref().expect("child").id();
    let mut wstatus = 0;
    // SAFETY: waitpid on our own child; ptrace requests come from this thread, which
    // forked it (the tracer).
    let waited = unsafe { libc::waitpid(pid as i32, &mut wstatus, 0) };
    assert_eq!(
        waited,
        pid as i32,
        "waitpid: {}",
        std::io::Error::last_os_error()
    );
    assert!(
        libc::WIFSTOPPED(wstatus) && libc::WSTOPSIG(wstatus) == libc::SIGTRAP,
        "{}: expected a stop at exec, got wait status {wstatus:#x}",
        binary.display()
    );
    daemon.scrape_until(&format!("{} to be attached", binary.display()), |s| {
        s.sum("mapwatch_attached_processes", &[]) == 1
    });
    let started = Instant::now();
    // SAFETY: the child is our tracee, stopped; detaching resumes it with no signal.
    let detached = unsafe { libc::ptrace(libc::PTRACE_DETACH, pid as i32, 0, 0) };
    assert_eq!(
        detached,
        0,
        "PTRACE_DETACH: {}",
        std::io::Error::last_os_error()
    );
    let child = held.0.take().expect("child");
    (finish(child, started), pid)
}

/// Kernel hits per probe between two scrapes (probes with none left out).
fn hits(before: &Scrape, after: &Scrape) -> BTreeMap<String, u64> {
    after
        .label_values("mapwatch_probe_hits_total", "probe")
        .into_iter()
        .map(|probe| {
            let sel = [("probe", probe.as_str())];
            let delta = after.sum("mapwatch_probe_hits_total", &sel)
                - before.sum("mapwatch_probe_hits_total", &sel);
            (probe, delta)
        })
        .filter(|&(_, delta)| delta > 0)
        .collect()
}

/// How one probed run differs from the unprobed one, if it does.
fn difference(baseline: &Outcome, probed: &Outcome) -> Option<String> {
    if probed.status.code() == baseline.status.code() && probed.results == baseline.results {
        return None;
    }
    let only = |a: &Outcome, b: &Outcome| -> Vec<String> {
        a.results.difference(&b.results).cloned().collect()
    };
    // A crash's first words come before pages of goroutine dumps.
    let signs: Vec<&str> = probed
        .output
        .lines()
        .filter(|l| {
            ["fatal error", "panic:", "--- FAIL", "unexpected", "SIG"]
                .iter()
                .any(|sign| l.trim_start().starts_with(sign))
        })
        .take(10)
        .collect();
    let tail: Vec<&str> = probed.output.lines().rev().take(40).collect();
    Some(format!(
        "{} (unprobed: {}); only unprobed: {:?}; only probed: {:?}; first signs:\n{}\n\
         last lines of the probed run:\n{}",
        probed.status,
        baseline.status,
        only(baseline, probed),
        only(probed, baseline),
        signs.join("\n"),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    ))
}

/// One daemon configuration: every suite under it, compared with its unprobed run;
/// each run must hit some of `expected_probes` (any probe if empty). Returns the
/// problems found.
fn probed_runs(
    config: &str,
    extra: &[&str],
    expected_probes: &[&str],
    suites: &[(&'static str, &'static Suite, PathBuf)],
    baselines: &[Outcome],
) -> Vec<String> {
    let include: Vec<String> = SUITES.iter().map(|s| format!("{}.test", s.stem)).collect();
    let mut command = mapwatch_command();
    command
        .args(["run", "--listen", "127.0.0.1:0", "--kubernetes", "off"])
        .args(["--include-binary", &include.join(",")])
        .args(["--rescan-interval", "1h"])
        // The point is that the probes ARE attached while the tests run: under the
        // default budget (1% of a core, 1% of the process's CPU) a busy suite has its
        // busy probes duty-cycled off after the first second. At 100% only a probe
        // that costs about all of the process's CPU is still cycled (mapassign_fast64
        // in the map-assign-heavy runtime suites); that is logged below.
        .args(["--overhead-budget", "100%", "--overhead-share", "100%"])
        .args(extra)
        // Budget decisions are logged at debug: a duty-cycle detach is reported below.
        .env("MAPWATCH_LOG", "info,mapwatch::budget=debug");
    let daemon = Mapwatch::start(command);
    let mut problems = Vec::new();
    let mut pids = Vec::new();
    for ((go, suite, binary), baseline) in suites.iter().zip(baselines) {
        let what = format!("{go} {}.test [{config}]", suite.stem);
        let before = daemon.scrape();
        let (probed, pid) = run_probed(binary, suite, &daemon);
        // Its probes are closed once the daemon saw it exit: the next suite is then
        // the only attached process again, and the hit counts are this run's.
        let after = daemon.scrape_until(&format!("{what} to be detached"), |s| {
            s.sum("mapwatch_attached_processes", &[]) == 0
        });
        let hits = hits(&before, &after);
        eprintln!(
            "{what}: {:.2?} (unprobed {:.2?}, slowest {:?}), {} passed, hits {hits:?}",
            probed.took,
            baseline.took,
            slowest(&probed.output, 3),
            probed.passed(),
        );
        if let Some(diff) = difference(baseline, &probed) {
            problems.push(format!("{what} differs from its unprobed run: {diff}"));
        }
        let expected: u64 = hits
            .iter()
            .filter(|(probe, _)| {
                expected_probes.is_empty() || expected_probes.contains(&probe.as_str())
            })
            .map(|(_, n)| n)
            .sum();
        if expected == 0 {
            problems.push(format!(
                "{what}: no hits of {expected_probes:?}: the suite ran unprobed"
            ));
        }
        pids.push((what, pid));
    }
    let (status, log) = daemon.stop_with_output();
    if !status.success() {
        problems.push(format!("[{config}] mapwatch run after SIGTERM: {status}"));
    }
    for (what, pid) in pids {
        let attached = format!(" attached pid={pid} ");
        if !log.iter().any(|l| l.contains(&attached)) {
            problems.push(format!("{what}: the daemon never logged{attached}"));
        }
    }
    // Not a failure (the target must be undisturbed either way), but then a probe was
    // detached and re-attached while the suite ran, not attached throughout.
    let cycled: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("duty cycle: detached"))
        .collect();
    if !cycled.is_empty() {
        eprintln!(
            "[{config}] the budget detached probes {} times:\n{}",
            cycled.len(),
            cycled
                .iter()
                .map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    if mapwatch_links() != 0 {
        problems.push(format!("[{config}] mapwatch run left BPF behind"));
    }
    problems
}

#[test]
fn go_standard_library_tests_pass_unchanged_under_the_probes() {
    let Some(_kernel) = privileged("go_standard_library_tests_pass_unchanged_under_the_probes")
    else {
        return;
    };
    let Some(suites) = binaries() else {
        return;
    };
    let started = Instant::now();
    let baselines: Vec<Outcome> = suites
        .iter()
        .map(|(go, suite, binary)| {
            let outcome = run_unprobed(binary, suite);
            // Not mapwatch's fault: the suite must pass on this machine to begin with.
            assert!(
                outcome.status.success() && outcome.results.contains("PASS"),
                "{go} {}.test fails without mapwatch ({}):\n{}",
                suite.stem,
                outcome.status,
                outcome.output
            );
            outcome
        })
        .collect();
    let mut problems = probed_runs("default probes", &[], &[], &suites, &baselines);
    problems.extend(probed_runs(
        "hot probes",
        &["--hot-probes", "mapassign_fast64,mallocgc"],
        &["mallocgc", "mallocgc_specialized"],
        &suites,
        &baselines,
    ));
    eprintln!(
        "{} suites, 3 runs each, in {:?}",
        suites.len(),
        started.elapsed()
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

/// The comparison itself: timings do not count, a verdict or the exit status does.
#[test]
fn a_changed_verdict_or_exit_status_is_a_difference() {
    use std::os::unix::process::ExitStatusExt as _;
    let outcome = |code: i32, output: &str| Outcome {
        status: ExitStatus::from_raw(code << 8),
        results: results(output),
        output: output.to_string(),
        took: Duration::ZERO,
    };
    let baseline = outcome(
        0,
        "=== RUN   TestA\n--- PASS: TestA (0.00s)\n    --- SKIP: TestA/b_c (0.01s)\nPASS\n",
    );
    let slower = outcome(
        0,
        "=== RUN   TestA\n--- PASS: TestA (3.20s)\n    --- SKIP: TestA/b_c (1.01s)\nPASS\n",
    );
    assert_eq!(difference(&baseline, &slower), None);
    assert_eq!(
        baseline.results.iter().collect::<Vec<_>>(),
        ["PASS", "PASS TestA", "SKIP TestA/b_c"]
    );
    let failed = outcome(1, "--- FAIL: TestA (0.00s)\nFAIL\n");
    let diff = difference(&baseline, &failed).expect("a failure differs");
    assert!(
        diff.contains("only probed: [\"FAIL\", \"FAIL TestA\"]"),
        "{diff}"
    );
    let crashed = outcome(2, "fatal error: unexpected signal\n");
    assert!(difference(&baseline, &crashed).is_some());
    let same_status_fewer_tests = outcome(0, "--- PASS: TestA (0.00s)\nPASS\n");
    assert!(difference(&baseline, &same_status_fewer_tests).is_some());
    assert_eq!(slowest(slower.output.as_str(), 1), ["TestA 3.2s"]);
}
