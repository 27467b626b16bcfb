//! What duty cycles do to the probed program's tail latency. Detaching a uprobe that
//! the program keeps hitting slows the program down for as long as the kernel takes to
//! close the link (~100 ms), CPU to spare or not; the overhead budget spaces a
//! process's detaches by this measurement (budget/ `PROCESS_DETACH_SPACING`).
//!
//! probe_bench `churn` attaches an empty program after growslice's stack check for
//! 50 ms and detaches it, at a fixed interval, while wrk drives the JSON service: p99
//! by interval, beside runs with no probe at all.
use std::time::Duration;

use super::{
    Bench,
    profilers::Profiler,
    service::{Service, drive_for},
    stats::{Summary, round_order, show},
};

/// Attached per cycle.
const ON_MS: u64 = 50;
/// A detach takes about this long here (BENCHMARKS.md, attach and detach).
const DETACH_MS: u64 = 110;

pub fn section(bench: &Bench) -> anyhow::Result<String> {
    let run_length = Duration::from_secs(if bench.quick { 6 } else { 12 });
    let rounds = if bench.quick { 1 } else { 3 };
    let intervals_ms: [u64; 4] = [500, 1000, 2000, 4000];
    let service = Service::start(&bench.jsonservice)?;
    drive_for(bench, &service.addr, Duration::from_secs(5))?;
    // (label, detach interval) — None: no probe.
    let configs: Vec<Option<u64>> = std::iter::once(None)
        .chain(intervals_ms.iter().map(|&i| Some(i)))
        .collect();
    let mut p99: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut per_second: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut detaches: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for round in 0..rounds {
        for index in round_order(configs.len(), round) {
            let running = match configs[index] {
                None => None,
                Some(interval) => {
                    let profiler = Profiler::Tool {
                        args: vec![
                            "churn".into(),
                            "--on-ms".into(),
                            ON_MS.to_string(),
                            "--off-ms".into(),
                            interval.saturating_sub(ON_MS + DETACH_MS).to_string(),
                        ],
                    };
                    Some(profiler.start(&bench.paths, service.pid, &bench.jsonservice)?)
                }
            };
            let load = drive_for(bench, &service.addr, run_length)?;
            if let Some(running) = running {
                let counts = running.stop()?;
                let cycles = counts
                    .report
                    .as_ref()
                    .and_then(|r| r["cycles"].as_f64())
                    .unwrap_or(0.0);
                detaches[index].push(cycles / run_length.as_secs_f64());
            }
            p99[index].push(load.p99_ms);
            per_second[index].push(load.per_second);
        }
    }
    let rows: Vec<String> = configs
        .iter()
        .enumerate()
        .map(|(i, config)| {
            let name = match config {
                None => "no probe".to_string(),
                Some(interval) => format!("a detach every {:.1} s", *interval as f64 / 1e3),
            };
            format!(
                "| {name} | {} | {} | {} |",
                if config.is_some() {
                    show(Summary::of(&detaches[i]), 2)
                } else {
                    String::new()
                },
                show(Summary::of(&p99[i]), 2),
                show(Summary::of(&per_second[i]), 0),
            )
        })
        .collect();
    Ok(format!(
        "## What duty cycles do to tail latency\n\n\
         While the kernel closes the link of a uprobe the program keeps hitting (~100 ms), \
         the program runs slowed down — with CPU to spare, and not at all when the probe \
         is not being hit. `probe_bench churn` attaches an empty program after growslice's \
         stack check for {ON_MS} ms, then detaches it, at a fixed interval, while `wrk` \
         drives `fixtures/bench/jsonservice` as above ({} s per run, {rounds} rounds, \
         interleaved). The overhead budget spaces each process's duty-cycled probes so that \
         it sees at most one detach per ~4 s (`PROCESS_DETACH_SPACING` in \
         mapwatch/src/budget/): a cycle lasts 4 s × the process's cycling probes.\n\n\
         | probe | detaches per second | p99, ms | requests/s |\n|---|---|---|---|\n{}\n",
        run_length.as_secs(),
        rows.join("\n")
    ))
}
