//! `mapwatch run`, the node daemon, as root against real Go processes: it finds a
//! process that was running before it started (the /proc scan) and processes started
//! after it (exec notices — the rescan is set to an hour so only the notices can find
//! them), attaches before their workload starts, counts each workload exactly as the
//! fixture counts itself, detaches from processes that exit, and leaves nothing behind
//! on SIGTERM.
mod support;

use std::collections::HashMap;

use support::{
    Fixture, MAP_GROWTH_KINDS, Mapwatch, Scrape, fixture, mapwatch_command, mapwatch_links,
    privileged, uprobe_links,
};

fn attached(scrape: &Scrape) -> u64 {
    scrape.sum("mapwatch_attached_processes", &[])
}

fn map_growth(scrape: &Scrape, binary: &str, go_version: &str) -> HashMap<&'static str, u64> {
    MAP_GROWTH_KINDS
        .iter()
        .map(|&kind| {
            let selector = [
                ("binary", binary),
                ("go_version", go_version),
                ("kind", kind),
            ];
            (kind, scrape.sum("mapwatch_map_grow_total", &selector))
        })
        .collect()
}

#[test]
fn run_follows_processes_and_counts_each_workload_exactly() {
    let Some(_kernel) = privileged("run_follows_processes_and_counts_each_workload_exactly") else {
        return;
    };
    // Classic maps, Swiss maps, and the newest Go.
    let versions = ["go1.22.10", "go1.24.11", "go1.27.3"];
    let Some(binaries) = versions
        .iter()
        .map(|v| fixture(v, "mapgrow"))
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let mut fixtures = vec![Fixture::start(&binaries[0], &[])];
    let daemon = Mapwatch::run_for(
        "mapgrow",
        &[
            "--series-expiry",
            "2s",
            // Exact counts: the budget must not duty-cycle the map probes during the
            // fixture's short burst, as 1% of its (mostly idle) CPU might.
            "--overhead-share",
            "100%",
        ],
    );
    daemon.scrape_until("the process started before the daemon", |s| {
        attached(s) == 1
    });
    fixtures.extend(binaries[1..].iter().map(|b| Fixture::start(b, &[])));
    // Attached before the workload starts: the test waits for the daemon, not a clock.
    daemon.scrape_until("processes started after the daemon", |s| attached(s) == 3);
    let before = daemon.scrape_drained();
    let reports: Vec<_> = fixtures
        .iter_mut()
        .map(|f| f.run_workload_fields())
        .collect();
    let after = daemon.scrape_drained();
    for (version, reported) in versions.iter().zip(&reports) {
        let (start, end) = (
            map_growth(&before, "mapgrow", version),
            map_growth(&after, "mapgrow", version),
        );
        for kind in MAP_GROWTH_KINDS {
            assert_eq!(
                end[kind] - start[kind],
                reported.get(kind).copied().unwrap_or(0),
                "{version}: map growth of kind {kind} (fixture reported {reported:?})"
            );
        }
    }

    // Processes that exit are detached; their probes leave the kernel.
    for f in fixtures {
        assert!(f.finish().success(), "a profiled fixture failed");
    }
    daemon.scrape_until("exited processes to be detached", |s| attached(s) == 0);
    assert_eq!(
        uprobe_links(),
        0,
        "uprobes of exited processes still attached"
    );
    // Their series expire (--series-expiry 2s) instead of piling up on the node.
    daemon.scrape_until("the series of exited workloads to expire", |s| {
        s.count_labelled("binary", "mapgrow") == 0
    });

    let status = daemon.stop();
    assert!(
        status.success(),
        "mapwatch run exit status after SIGTERM: {status}"
    );
    assert_eq!(mapwatch_links(), 0, "mapwatch run left BPF behind");
}

/// No root needed: the port is bound before anything is loaded into the kernel.
#[test]
fn run_reports_a_port_in_use_clearly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().unwrap().to_string();
    let out = mapwatch_command()
        .args(["run", "--kubernetes", "off", "--listen", &addr])
        .output()
        .expect("run mapwatch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")) && stderr.contains("--listen"),
        "stderr: {stderr}"
    );
}

/// A copy of `binary` in a fresh directory, with every `from` in it replaced by `to`
/// (same length): how a Go version mapwatch does not support is made from one it does.
fn patched_copy(binary: &std::path::Path, name: &str, from: &str, to: &str) -> std::path::PathBuf {
    assert_eq!(from.len(), to.len());
    let dir = std::env::temp_dir().join(format!("mapwatch-daemon-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = std::fs::read(binary).unwrap();
    let mut at = 0;
    while !from.is_empty()
        && let Some(i) = bytes[at..]
            .windows(from.len())
            .position(|w| w == from.as_bytes())
    {
        bytes[at + i..at + i + from.len()].copy_from_slice(to.as_bytes());
        at += i + from.len();
    }
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// Bad input on the node: a Go version mapwatch does not support is counted in
/// attach_errors_total{reason} and skipped; a process whose binary was deleted after
/// it started is still attached (through /proc/PID/exe) and named without
/// " (deleted)"; the daemon carries on through both.
#[test]
fn run_counts_unsupported_binaries_and_survives_deleted_ones() {
    let Some(_kernel) = privileged("run_counts_unsupported_binaries_and_survives_deleted_ones")
    else {
        return;
    };
    let Some(mapgrow) = fixture("go1.22.10", "mapgrow") else {
        return;
    };
    // Go 1.20 is between supported versions (docs/go-runtime.md): a clear refusal.
    let old_go = patched_copy(&mapgrow, "oldgo", "go1.22.10", "go1.20.10");
    let deleted = patched_copy(&mapgrow, "gone", "", "");
    let mut gone = Fixture::start(&deleted, &[]);
    std::fs::remove_file(&deleted).unwrap();
    let daemon = Mapwatch::run(&[
        "--kubernetes",
        "off",
        "--include-binary",
        "oldgo,gone",
        "--rescan-interval",
        "1h",
    ]);
    let mut old = Fixture::start(&old_go, &[]);
    let reason = [("reason", "unsupported_go_version")];
    daemon.scrape_until("the unsupported binary to be counted", |s| {
        s.sum("mapwatch_attach_errors_total", &reason) == 1
    });
    let before = daemon.scrape_until("the deleted binary's process", |s| attached(s) == 1);
    let before = map_growth(&before, "gone", "go1.22.10");
    let reported = gone.run_workload_fields();
    let after = map_growth(&daemon.scrape_drained(), "gone", "go1.22.10");
    assert!(reported["double"] > 0);
    assert_eq!(after["double"] - before["double"], reported["double"]);
    assert!(old.run_workload_fields().contains_key("double"));
    assert!(old.finish().success() && gone.finish().success());
    assert!(daemon.stop().success());
    assert_eq!(mapwatch_links(), 0, "mapwatch run left BPF behind");
}

/// No root needed: a broken config file is refused before anything is loaded, with
/// the file and line of the mistake.
#[test]
fn run_refuses_a_broken_config_file_with_its_line() {
    let dir = std::env::temp_dir().join(format!("mapwatch-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mapwatch.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:9433\"\nhot_probes = [\"mapasign\"]\n",
    )
    .unwrap();
    let out = mapwatch_command()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run mapwatch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("{}:2:", path.display())),
        "the error names file and line: {stderr}"
    );

    // --print-config shows the effective settings, flags over the file.
    std::fs::write(&path, "listen = \"127.0.0.1:9433\"\nmax_sites = 7\n").unwrap();
    let out = mapwatch_command()
        .args(["run", "--print-config", "--max-sites", "9", "--config"])
        .arg(&path)
        .output()
        .expect("run mapwatch");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("listen = \"127.0.0.1:9433\""), "{stdout}");
    assert!(stdout.contains("max_sites = 9"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}
