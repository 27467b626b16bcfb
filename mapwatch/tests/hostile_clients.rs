//! The daemon's port is reachable from any pod on the node. Thousands of idle clients
//! must not starve /metrics, exhaust the daemon's file descriptors, or keep it from
//! attaching to a process that starts meanwhile (before the limits in
//! metrics/http.rs, ~20,000 idle connections did all three).
mod support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use mapwatch::metrics::http;
use support::{Fixture, MAP_GROWTH_KINDS, Mapwatch, fixture, mapwatch_links, privileged};

/// More than the common default soft limit of 1024 open files.
const IDLE_CLIENTS: usize = 3000;

/// A plain HTTP GET with timeouts: the harness's client would wait for ever.
fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, std::io::Error> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

fn raise_own_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

#[test]
fn idle_clients_do_not_starve_metrics_or_attaching() {
    let Some(_kernel) = privileged("idle_clients_do_not_starve_metrics_or_attaching") else {
        return;
    };
    let Some(binary) = fixture("go1.24.11", "mapgrow") else {
        return;
    };
    raise_own_open_files_limit();
    let daemon = Mapwatch::run_for(
        "mapgrow",
        &[
            // Exact counts (see tests/daemon.rs).
            "--overhead-share",
            "100%",
        ],
    );
    let addr: SocketAddr = daemon.addr.parse().expect("daemon address");
    let fds_before = open_files(daemon.pid());

    let idle: Vec<TcpStream> = (0..IDLE_CLIENTS)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok())
        .collect();
    assert!(
        idle.len() > 1024,
        "only {} idle connections could be opened",
        idle.len()
    );

    // Liveness, not speed: the bound only tells "answers" from "starved".
    for path in ["/metrics", "/healthz"] {
        let response = get(addr, path, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("GET {path} with {} idle clients: {e}", idle.len()));
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "GET {path}: {response}"
        );
    }
    // An evicted connection's task is aborted at once but its socket is closed when a
    // runtime worker next drops the task, a moment later under a flood of accepts: the
    // bound must hold once that happened, not at the instant the last accept returned.
    let bound = fds_before + http::MAX_CONNECTIONS + 16;
    let settle_by = Instant::now() + Duration::from_secs(5);
    let mut fds = open_files(daemon.pid());
    while fds > bound && Instant::now() < settle_by {
        std::thread::sleep(Duration::from_millis(50));
        fds = open_files(daemon.pid());
    }
    assert!(
        fds <= bound,
        "the daemon holds {fds} files with idle clients (was {fds_before})"
    );

    // A process started now is attached and counted exactly.
    let mut target = Fixture::start(&binary, &[]);
    daemon.scrape_until("the new process to be attached", |s| {
        s.sum("mapwatch_attached_processes", &[]) == 1
    });
    let before = daemon.scrape_drained();
    let reported = target.run_workload_fields();
    let after = daemon.scrape_drained();
    for kind in MAP_GROWTH_KINDS {
        let selector = [("kind", kind)];
        assert_eq!(
            after.sum("mapwatch_map_grow_total", &selector)
                - before.sum("mapwatch_map_grow_total", &selector),
            reported.get(kind).copied().unwrap_or(0),
            "map growth of kind {kind} while idle clients held connections"
        );
    }
    assert_eq!(after.sum("mapwatch_attach_errors_total", &[]), 0);
    assert!(
        after.sum("mapwatch_http_connections_evicted_total", &[]) as usize
            >= idle.len() - http::MAX_CONNECTIONS,
        "evicted connections are counted"
    );

    // A client that sends nothing is disconnected after the header timeout.
    let mut silent = TcpStream::connect(addr).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let read = silent.read(&mut byte);
    let closed = match &read {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    };
    assert!(
        closed,
        "a silent client was not disconnected: {read:?} after {:?}",
        started.elapsed()
    );

    drop(idle);
    assert!(target.finish().success(), "the fixture failed");
    let status = daemon.stop();
    assert!(status.success(), "mapwatch run after SIGTERM: {status}");
    assert_eq!(mapwatch_links(), 0, "mapwatch run left BPF behind");
}
