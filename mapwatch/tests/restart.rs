//! A daemon killed with SIGKILL (an OOM kill, a node drain gone wrong) and restarted at
//! once, as a crash-looping pod is: the new one gets the port the old one held while
//! the kernel tore its uprobes down, attaches to the running process exactly once, and
//! the kernel keeps no probe of the killed one (nothing is pinned).
mod support;

use std::{
    net::TcpListener,
    time::{Duration, Instant},
};

use support::{
    Fixture, Mapwatch, fixture, mapwatch_command, mapwatch_links, privileged, uprobe_links,
};

fn daemon_on(port: u16) -> Mapwatch {
    let mut command = mapwatch_command();
    command.args([
        "run",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--kubernetes",
        "off",
        "--include-binary",
        "mapgrow",
        "--rescan-interval",
        "1h",
        "--overhead-share",
        "100%",
    ]);
    Mapwatch::start(command)
}

#[test]
fn a_daemon_restarted_right_after_sigkill_attaches_once() {
    let Some(_kernel) = privileged("a_daemon_restarted_right_after_sigkill_attaches_once") else {
        return;
    };
    let Some(binary) = fixture("go1.24.11", "mapgrow") else {
        return;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut target = Fixture::start(&binary, &[]);
    let first = daemon_on(port);
    first.scrape_until("the process to be attached", |s| {
        s.sum("mapwatch_attached_processes", &[]) == 1
    });
    let links = uprobe_links_now();
    assert!(links > 0, "no uprobe links while attached");

    // SAFETY: kill(2) on mapwatch's pid, our child.
    assert_eq!(unsafe { libc::kill(first.pid() as i32, libc::SIGKILL) }, 0);
    let second = daemon_on(port);
    second.scrape_until("the restarted daemon to attach", |s| {
        s.sum("mapwatch_attached_processes", &[]) == 1
    });
    drop(first);
    // The killed daemon's links go with its file descriptors; the new one's stay.
    let deadline = Instant::now() + Duration::from_secs(10);
    while uprobe_links_now() != links && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        uprobe_links_now(),
        links,
        "after the restart the process has its probes once"
    );
    let before = second.scrape_drained();
    let reported = target.run_workload_fields();
    let after = second.scrape_drained();
    let grown =
        after.sum("mapwatch_map_grow_total", &[]) - before.sum("mapwatch_map_grow_total", &[]);
    let expected: u64 = support::MAP_GROWTH_KINDS
        .iter()
        .map(|kind| reported.get(*kind).copied().unwrap_or(0))
        .sum();
    assert_eq!(grown, expected, "map growths counted once each");

    assert!(target.finish().success(), "the fixture failed");
    let status = second.stop();
    assert!(status.success(), "mapwatch run after SIGTERM: {status}");
    assert_eq!(uprobe_links(), 0, "uprobes left in the kernel");
    assert_eq!(mapwatch_links(), 0, "BPF programs or links left behind");
}

/// Links of mapwatch's uprobe program at this moment (no waiting for zero).
fn uprobe_links_now() -> usize {
    support::bpf_link_count(&["go_probe"])
}
