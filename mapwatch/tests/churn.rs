//! Nothing is lost silently under process churn: `mapwatch run` as root while hundreds
//! of Go processes start, work and exit, each under its own binary name so that every
//! process's counts can be compared with its own report; and a daemon stopped with
//! SIGTERM while its processes work, then restarted at once.
mod support;

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::PathBuf,
    time::{Duration, Instant},
};

use support::{
    Fixture, MAP_GROWTH_KINDS, Mapwatch, Scrape, bpf_link_count, fixture, mapwatch_command,
    mapwatch_links, privileged, uprobe_links,
};

/// Processes started, in batches that run at once.
const PROCESSES: usize = 200;
const BATCH: usize = 10;
/// A classic-map and a Swiss-map Go, alternating.
const TOOLCHAINS: [&str; 2] = ["go1.22.10", "go1.24.11"];

fn attached(scrape: &Scrape) -> u64 {
    scrape.sum("mapwatch_attached_processes", &[])
}

fn attach_errors(scrape: &Scrape) -> BTreeMap<String, u64> {
    scrape
        .label_values("mapwatch_attach_errors_total", "reason")
        .into_iter()
        .map(|reason| {
            let count = scrape.sum("mapwatch_attach_errors_total", &[("reason", &reason)]);
            (reason, count)
        })
        .filter(|&(_, count)| count > 0)
        .collect()
}

fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mapwatch-churn-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Open files and resident memory (KiB) of a process.
fn footprint(pid: u32) -> (usize, u64) {
    let files = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0);
    let rss = support::rss_kib(pid);
    (files, rss)
}

/// `mapwatch_gc_cycles_total` per `churn-*` binary.
fn gc_cycles_per_binary(scrape: &Scrape) -> BTreeMap<String, u64> {
    scrape
        .series("mapwatch_gc_cycles_total")
        .into_iter()
        .filter_map(|labels| labels.get("binary"))
        .filter(|binary| binary.starts_with("churn-"))
        .map(|binary| {
            let count = scrape.sum("mapwatch_gc_cycles_total", &[("binary", binary)]);
            (binary.clone(), count)
        })
        .collect()
}

/// RSS the daemon may keep after the churn, above what it had once the first batch was
/// done (analyses cached, allocator and metric families warmed up). What a leak per
/// process would cost: its mapped binary (~1.5 MB resident once read), a symbolizer
/// (hundreds of KiB), its aggregation state or metric children (KiBs each, ~30 series):
/// 200 processes turn each into ≥ 200 KiB … 300 MB. The allowance covers what the
/// allocator keeps of the peak (10 processes' state at once) and the metrics registry's
/// growth of its own maps, measured at +1…3 MiB.
const RSS_ALLOWANCE_KIB: u64 = 8 * 1024;

/// Regression: the aggregator forgot a process as soon as its probes were detached,
/// while records they wrote were still in the ring buffer — a process that exited
/// within a drain interval (100 ms) of its last records lost them as orphans (and
/// `scrape_drained`, which requires every kernel hit to arrive, never settled). Now the
/// reader drains the ring before passing the news on.
///
/// 200 fixtures (fixtures/execs: 20 GC cycles each, counted by the runtime itself) of
/// two Go versions, each under its own name — hard links of two files, so the daemon
/// analyses two binaries but labels 200 workloads —, started in batches of 10: attached,
/// run, exited right after reporting, detached. Each workload's series must equal its
/// own process's report, no record may be orphaned, every process must be attached and
/// detached once (the daemon's log), and at the end nothing is attached, no uprobe link
/// is left, and the daemon's open files and RSS are back near where they were after the
/// first batch.
#[test]
fn hundreds_of_short_lived_processes_are_each_counted_exactly_and_let_go() {
    let Some(_kernel) =
        privileged("hundreds_of_short_lived_processes_are_each_counted_exactly_and_let_go")
    else {
        return;
    };
    let Some(sources) = TOOLCHAINS
        .iter()
        .map(|go| fixture(go, "execs"))
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let started = Instant::now();
    let dir = scratch_dir("short-lived");
    let originals: Vec<PathBuf> = sources
        .iter()
        .zip(TOOLCHAINS)
        .map(|(source, go)| {
            let path = dir.join(format!("original-{go}"));
            std::fs::copy(source, &path).unwrap();
            path
        })
        .collect();
    // (name, path, Go version) of each process; linked before the daemon starts (a new
    // link changes the file's ctime, part of the analysis cache's key).
    let processes: Vec<(String, PathBuf, &str)> = (0..PROCESSES)
        .map(|i| {
            let name = format!("churn-{i:03}");
            let path = dir.join(&name);
            std::fs::hard_link(&originals[i % 2], &path).unwrap();
            (name, path, TOOLCHAINS[i % 2])
        })
        .collect();

    let daemon = Mapwatch::run_for(
        "churn-*",
        &[
            // Long enough to compare a batch's series after its processes exited; short
            // enough that all are gone when the footprint is measured.
            "--series-expiry",
            "5s",
            "--overhead-share",
            "100%",
            // Each process is its own workload and every one's series are checked:
            // none may be folded into the node-wide aggregate (tests/series_budget.rs
            // covers that).
            "--series-budget",
            "1000000",
        ],
    );
    let mut reported: BTreeMap<String, u64> = BTreeMap::new();
    let mut baseline = None;
    for batch in processes.chunks(BATCH) {
        let mut running: Vec<(&str, Fixture)> = batch
            .iter()
            .map(|(name, path, _)| (name.as_str(), Fixture::start(path, &["/bin/false"])))
            .collect();
        daemon.scrape_until("the batch to be attached", |s| {
            attached(s) == running.len() as u64
        });
        for (_, process) in &mut running {
            process.start_workload();
        }
        for (name, process) in &mut running {
            reported.insert(name.to_string(), process.wait_done()["gc"]);
        }
        // Exits right after reporting: its last records are likely still in the ring.
        for (_, process) in running {
            assert!(process.finish().success(), "a fixture failed");
        }
        daemon.scrape_until("the batch to be detached", |s| attached(s) == 0);
        let scrape = daemon.scrape_drained();
        // Every series still there (5 s after its process went) is its own process's.
        let counted = gc_cycles_per_binary(&scrape);
        for (name, _, _) in batch {
            assert!(counted.contains_key(name), "no series of {name}");
        }
        for (binary, count) in &counted {
            assert_eq!(
                Some(count),
                reported.get(binary),
                "GC cycles of {binary}: counted {count}, the process reported {:?}",
                reported.get(binary)
            );
        }
        assert_eq!(
            scrape.sum("mapwatch_events_orphaned_total", &[]),
            0,
            "records dropped at process exits"
        );
        baseline.get_or_insert_with(|| footprint(daemon.pid()));
    }
    let churned = started.elapsed();

    let end = daemon.scrape_until("every workload's series to expire", |s| {
        gc_cycles_per_binary(s).is_empty()
    });
    assert_eq!(attached(&end), 0);
    assert_eq!(attach_errors(&end), BTreeMap::new(), "attach errors");
    assert_eq!(uprobe_links(), 0, "uprobes of exited processes left");
    // The series expired with the last scrape; the allocator may give memory back later.
    std::thread::sleep(Duration::from_millis(500));
    let (files_before, rss_before) = baseline.expect("a batch ran");
    let (files_after, rss_after) = footprint(daemon.pid());
    eprintln!(
        "{PROCESSES} processes in {:.1} s; daemon: {files_before} → {files_after} open files, \
         {rss_before} → {rss_after} KiB RSS",
        churned.as_secs_f64()
    );
    // One HTTP connection more or less than at the baseline (the harness's scrapes).
    assert!(
        files_after <= files_before + 1,
        "the daemon holds {files_after} files after the churn ({files_before} after the first batch)"
    );
    assert!(
        rss_after <= rss_before + RSS_ALLOWANCE_KIB,
        "the daemon's RSS grew from {rss_before} to {rss_after} KiB over the churn"
    );

    let (status, log) = daemon.stop_with_output();
    assert!(status.success(), "mapwatch run after SIGTERM: {status}");
    let lines = |what: &str| log.iter().filter(|l| daemon_says(l, what)).count();
    assert_eq!(lines("attached pid="), PROCESSES, "attach log lines");
    assert_eq!(lines("detached pid="), PROCESSES, "detach log lines");
    assert_eq!(mapwatch_links(), 0, "mapwatch run left BPF behind");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A line the daemon's loop logged (`attach/` logs each attach too, with more detail).
fn daemon_says(line: &str, what: &str) -> bool {
    line.contains(&format!("mapwatch::cli::run: {what}"))
}

fn daemon_on(port: u16) -> Mapwatch {
    let mut command = mapwatch_command();
    command.args([
        "run",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--kubernetes",
        "off",
        "--include-binary",
        "budgetloop,mapgrow",
        "--rescan-interval",
        "1h",
        "--overhead-share",
        "100%",
    ]);
    Mapwatch::start(command)
}

/// Processes working (growslice as fast as they can, GC on: the budget duty-cycles
/// growslice, attaching and detaching it, while GC and STW probes fire) when the daemon
/// gets SIGTERM: it exits 0 with every link gone — bpftool says so, not the daemon — and
/// a daemon started right after on the same port attaches each process exactly once:
/// one log line per pid, one probe per planned site (an idle process's map growth
/// counted once, exactly).
#[test]
fn sigterm_under_load_removes_every_probe_and_a_restart_attaches_once() {
    let Some(_kernel) =
        privileged("sigterm_under_load_removes_every_probe_and_a_restart_attaches_once")
    else {
        return;
    };
    let (Some(budgetloop), Some(mapgrow)) = (
        fixture("go1.24.11", "budgetloop"),
        fixture("go1.24.11", "mapgrow"),
    ) else {
        return;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    const WORKERS: usize = 4;
    let mut workers: Vec<Fixture> = (0..WORKERS)
        .map(|_| Fixture::start(&budgetloop, &["-seconds", "10"]))
        .collect();
    let mut idle = Fixture::start(&mapgrow, &[]);
    let first = daemon_on(port);
    first.scrape_until("every process to be attached", |s| {
        attached(s) == WORKERS as u64 + 1
    });
    for worker in &mut workers {
        worker.start_workload();
    }
    // Under load: growslice records flowing, the budget's first duty cycles running.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        bpf_link_count(&["go_probe"]) > 0,
        "no uprobe links while attached"
    );
    let stopping = Instant::now();
    let (status, _) = first.stop_with_output();
    let stop_took = stopping.elapsed();
    assert!(
        status.success(),
        "mapwatch run after SIGTERM under load: {status}"
    );
    // Counted right away, not waited for: the daemon has exited, its links must be
    // closed already (the kernel may take a moment to free them: up to 5 s).
    assert_eq!(uprobe_links(), 0, "uprobes left after SIGTERM");
    assert_eq!(
        mapwatch_links(),
        0,
        "BPF programs or links left after SIGTERM"
    );

    let second = daemon_on(port);
    second.scrape_until("the restarted daemon to attach every process", |s| {
        attached(s) == WORKERS as u64 + 1
    });
    let before = second.scrape_drained();
    let reported = idle.run_workload_fields();
    let after = second.scrape_drained();
    let grown = after.sum("mapwatch_map_grow_total", &[("binary", "mapgrow")])
        - before.sum("mapwatch_map_grow_total", &[("binary", "mapgrow")]);
    let expected: u64 = MAP_GROWTH_KINDS
        .iter()
        .map(|kind| reported.get(*kind).copied().unwrap_or(0))
        .sum();
    assert_eq!(grown, expected, "map growths counted once each");
    for worker in &mut workers {
        assert!(worker.wait_done()["grows"] > 0);
    }
    let pids: Vec<u32> = workers.iter().map(|w| w.pid).chain([idle.pid]).collect();
    for worker in workers {
        assert!(worker.finish().success(), "a worker failed");
    }
    assert!(idle.finish().success(), "the idle fixture failed");
    second.scrape_until("every process to be detached", |s| attached(s) == 0);
    let (status, log) = second.stop_with_output();
    assert!(
        status.success(),
        "restarted mapwatch run after SIGTERM: {status}"
    );
    for pid in pids {
        let attaches = log
            .iter()
            .filter(|l| daemon_says(l, &format!("attached pid={pid} ")))
            .count();
        assert_eq!(
            attaches,
            1,
            "pid {pid} attached {attaches} times:\n{}",
            log.join("\n")
        );
    }
    assert_eq!(mapwatch_links(), 0, "mapwatch run left BPF behind");
    eprintln!("stopped under load in {} ms", stop_took.as_millis());
}
