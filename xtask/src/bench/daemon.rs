//! The daemon itself: its CPU, memory and losses at fixed event rates, and how fast it
//! attaches to a new process, detaches from an exited one and exits on SIGTERM.
use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    Bench,
    procs::{self, Fixture, cpu_seconds, field, http_get, memory_mib, metric_sum, pinned},
    profilers::{PROFILER_CPU, Profiler, TARGET_CPU},
    stats::{Summary, show},
};

/// Events per second the fixture is asked for.
const RATES: [u64; 3] = [10_000, 100_000, 1_000_000];

pub fn rates_section(bench: &Bench) -> anyhow::Result<(String, Vec<String>)> {
    let seconds: u64 = if bench.quick { 3 } else { 10 };
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for rate in RATES {
        let mut command = pinned(TARGET_CPU, &bench.budgetloop);
        command.args(["-rate", &rate.to_string(), "-seconds", &seconds.to_string()]);
        let mut fixture = Fixture::start(command)?;
        let running = Profiler::Attach { exact: false }.start(
            &bench.paths,
            fixture.pid,
            &bench.budgetloop,
        )?;
        let pid = running.pid().context("mapwatch pid")?;
        let addr = running.addr.clone().context("mapwatch address")?;
        let cpu_before = cpu_seconds(pid)?;
        let started = Instant::now();
        let fields = fixture.run()?;
        let wall = started.elapsed().as_secs_f64();
        // Let the reader drain what is in flight before counting.
        std::thread::sleep(Duration::from_millis(300));
        let cpu_after = cpu_seconds(pid)?;
        let (rss, peak) = memory_mib(pid)?;
        let body = http_get(&addr, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let hits = metric_sum(&body, "mapwatch_probe_hits_total", "probe=\"growslice\"");
        let lost = metric_sum(&body, "mapwatch_events_lost_total", "");
        let counts = running.stop()?;
        fixture.finish();
        let grows = field(&fields, "grows")? as f64;
        let target_cpu = field(&fields, "cpu_ns")? as f64 / 1e9;
        let share = (cpu_after - cpu_before) / wall * 100.0;
        let lost = counts.lost.unwrap_or(lost);
        if rate == 100_000 {
            targets.push(format!(
                "| daemon at 100k events/s: ≤ 2% of a core, ≤ 64 MiB, 0 lost | {share:.1}%, {peak:.1} MiB peak, {lost:.0} lost | {} |",
                super::probe_cost::verdict(Some(share <= 2.0 && peak <= 64.0 && lost == 0.0))
            ));
        }
        rows.push(format!(
            "| {} | {:.0} | {:.0} | {:.1} | {:.1} / {:.1} | {:.0} | {:.0} |",
            rate,
            grows / wall,
            hits / wall,
            share,
            rss,
            peak,
            lost,
            target_cpu / wall * 100.0,
        ));
    }
    let text = format!(
        "## The daemon at fixed event rates\n\n\
         `fixtures/budgetloop -rate R -seconds {seconds}` (pinned to CPU {TARGET_CPU}) \
         paces growslice calls in 1 ms steps; `mapwatch attach --pid` (default probes, pinned \
         to CPU {PROFILER_CPU}) reads every record. One run per rate. The fixture cannot \
         reach a rate its probed calls do not leave time for: *achieved* is what it did.\n\n\
         | asked events/s | achieved calls/s | growslice hits/s | mapwatch CPU, % of a core | mapwatch RSS / peak, MiB | events lost | target CPU, % of a core |\n\
         |---|---|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    Ok((text, targets))
}

/// The section, and rows of the targets table.
pub fn latency_section(bench: &Bench) -> anyhow::Result<(String, Vec<String>)> {
    let rounds = bench.rounds.max(3);
    let mut attach_ms = Vec::new();
    let mut detach_ms = Vec::new();
    let mut sigterm_ms = Vec::new();
    for _ in 0..rounds {
        // A daemon that profiles only budgetloop, started before the process exists.
        let addr = format!("127.0.0.1:{}", 19900 + attach_ms.len());
        let mut command = pinned(PROFILER_CPU, &bench.paths.mapwatch);
        command
            .args(["run", "--listen", &addr, "--kubernetes", "off"])
            .args(["--include-binary", "budgetloop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut daemon = command.spawn().context("starting mapwatch run")?;
        let ready = procs::wait_for_metric(
            &addr,
            "mapwatch_attached_processes",
            Duration::from_secs(30),
            |v| v == 0.0,
        );
        if ready.is_none() {
            let _ = daemon.kill();
            let _ = daemon.wait();
            anyhow::bail!("mapwatch run did not serve /metrics");
        }
        let mut fixture_command = pinned(TARGET_CPU, &bench.budgetloop);
        fixture_command.args(["-calls", "1000"]);
        let exec_at = Instant::now();
        let mut fixture = Fixture::start(fixture_command)?;
        let attached = procs::wait_for_metric(
            &addr,
            "mapwatch_attached_processes",
            Duration::from_secs(60),
            |v| v >= 1.0,
        );
        if let Some(at) = attached {
            attach_ms.push((at - exec_at).as_secs_f64() * 1e3);
        }
        fixture.run()?;
        let exit_at = Instant::now();
        fixture.finish();
        if let Some(at) = procs::wait_for_metric(
            &addr,
            "mapwatch_attached_processes",
            Duration::from_secs(60),
            |v| v == 0.0,
        ) {
            detach_ms.push((at - exit_at).as_secs_f64() * 1e3);
        }
        // SIGTERM with one process attached: detach everything, then exit.
        let mut fixture_command = pinned(TARGET_CPU, &bench.budgetloop);
        fixture_command.args(["-calls", "1000"]);
        let fixture = Fixture::start(fixture_command)?;
        procs::wait_for_metric(
            &addr,
            "mapwatch_attached_processes",
            Duration::from_secs(60),
            |v| v >= 1.0,
        );
        let term_at = Instant::now();
        procs::signal(daemon.id(), "TERM");
        if procs::wait_or_kill(&mut daemon, Duration::from_secs(60)).is_some() {
            sigterm_ms.push(term_at.elapsed().as_secs_f64() * 1e3);
        }
        fixture.finish();
    }
    let (detach, sigterm) = (Summary::of(&detach_ms), Summary::of(&sigterm_ms));
    let targets = vec![
        format!(
            "| an exited process detached ≤ 200 ms | {} ms | {} |",
            show(detach, 0),
            super::probe_cost::verdict(detach.map(|s| s.max <= 200.0))
        ),
        format!(
            "| SIGTERM to exit ≤ 200 ms | {} ms | {} |",
            show(sigterm, 0),
            super::probe_cost::verdict(sigterm.map(|s| s.max <= 200.0))
        ),
    ];
    let text = format!(
        "## Attach, detach and shutdown\n\n\
         `mapwatch run --include-binary budgetloop --kubernetes off`, then a new budgetloop \
         process; {rounds} rounds, median (min–max). *Attach*: from spawning the process to \
         `mapwatch_attached_processes` = 1 on /metrics (polled every ~2 ms; includes the \
         exec notice, binary analysis of a new binary the first time only — the cache is \
         per daemon, which restarts each round — and attaching every default probe). \
         *Detach*: from the process's exit (stdin closed, reaped) to the gauge = 0. \
         *SIGTERM*: with one process attached, from the signal to the daemon's exit.\n\n\
         | attach a new process, ms | detach an exited one, ms | SIGTERM to exit, ms |\n\
         |---|---|---|\n| {} | {} | {} |\n",
        show(Summary::of(&attach_ms), 0),
        show(detach, 0),
        show(sigterm, 0),
    );
    Ok((text, targets))
}
