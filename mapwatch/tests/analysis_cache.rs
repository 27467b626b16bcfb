//! `mapwatch run` keeps the analysis of a binary (memory-mapped) while a process runs
//! it, and lets it go once unused: a node that builds and runs new Go binaries (CI,
//! `go test`) must not keep every one of them mapped — nor the disk space of the
//! deleted ones.
mod support;

use std::time::{Duration, Instant};

use support::{Fixture, Mapwatch, fixture, mapwatch_links, privileged};

fn maps_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default()
}

#[test]
fn a_deleted_binary_is_let_go_once_its_processes_are_gone() {
    let Some(_kernel) = privileged("a_deleted_binary_is_let_go_once_its_processes_are_gone") else {
        return;
    };
    let Some(original) = fixture("go1.24.11", "mapgrow") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("mapwatch-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("mapgrow-cached");
    std::fs::copy(&original, &copy).unwrap();

    let daemon = Mapwatch::run(&[
        "--kubernetes",
        "off",
        "--include-binary",
        "mapgrow-cached",
        "--rescan-interval",
        "1s",
    ]);
    let mut target = Fixture::start(&copy, &[]);
    daemon.scrape_until("the copy to be attached", |s| {
        s.sum("mapwatch_attached_processes", &[]) == 1
    });
    target.run_workload_fields();
    let path = copy.to_str().unwrap().to_string();
    assert!(
        maps_of(daemon.pid()).contains(&path),
        "the analysis of a running binary is mapped"
    );
    assert!(target.finish().success());
    std::fs::remove_file(&copy).unwrap();
    daemon.scrape_until("the exited process to be detached", |s| {
        s.sum("mapwatch_attached_processes", &[]) == 0
    });
    // Two rescan intervals unused, then dropped at a rescan.
    let deadline = Instant::now() + Duration::from_secs(15);
    while maps_of(daemon.pid()).contains(&path) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !maps_of(daemon.pid()).contains(&path),
        "the deleted binary is still mapped by the daemon"
    );
    let status = daemon.stop();
    assert!(status.success(), "mapwatch run after SIGTERM: {status}");
    assert_eq!(mapwatch_links(), 0, "mapwatch run left BPF behind");
    let _ = std::fs::remove_dir_all(&dir);
}
