//! What duty cycles do to the probed program's tail latency. Detaching a uprobe that
//! the program keeps hitting slows the program down for as long as the kernel takes to
//! close the link (~100 ms), CPU to spare or not; the overhead budget spaces a
//! process's detaches by this measurement (budget/cycles.rs `PERF_EVENT_SPACING`,
//! `MULTI_LINK_SPACING`).
//!
//! probe_bench `churn` attaches an empty program after growslice's stack check for
//! 50 ms and detaches it, at a fixed interval, while wrk drives the JSON service: p99
//! by interval and link kind (perf-event uprobe, uprobe_multi), beside runs with no
//! probe at all.
use std::time::Duration;

use super::{
    Bench,
    profilers::Profiler,
    service::{Service, drive_for},
    stats::{Summary, round_order, show},
};

/// Attached per cycle.
const ON_MS: u64 = 50;
/// A detach takes about this long here: a perf-event uprobe, a uprobe_multi link.
const DETACH_MS: u64 = 110;
const DETACH_MS_MULTI: u64 = 40;

/// One churn set-up: a detach every `interval_ms`, of a uprobe_multi link or not.
#[derive(Clone, Copy)]
struct Churn {
    interval_ms: u64,
    multi: bool,
}

pub fn section(bench: &Bench) -> anyhow::Result<String> {
    let run_length = Duration::from_secs(if bench.quick { 6 } else { 12 });
    let rounds = if bench.quick { 1 } else { 3 };
    let perf_event = [500, 1000, 2000, 4000].map(|interval_ms| Churn {
        interval_ms,
        multi: false,
    });
    let multi = [250, 500, 1000, 2000].map(|interval_ms| Churn {
        interval_ms,
        multi: true,
    });
    let service = Service::start(&bench.jsonservice)?;
    drive_for(bench, &service.addr, Duration::from_secs(5))?;
    // None: no probe.
    let configs: Vec<Option<Churn>> = std::iter::once(None)
        .chain(perf_event.into_iter().chain(multi).map(Some))
        .collect();
    let mut p99: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut per_second: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut detaches: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut detach_ms: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for round in 0..rounds {
        for index in round_order(configs.len(), round) {
            let running = match configs[index] {
                None => None,
                Some(churn) => {
                    let detach = if churn.multi {
                        DETACH_MS_MULTI
                    } else {
                        DETACH_MS
                    };
                    let mut args = vec![
                        "churn".to_string(),
                        "--on-ms".into(),
                        ON_MS.to_string(),
                        "--off-ms".into(),
                        churn.interval_ms.saturating_sub(ON_MS + detach).to_string(),
                    ];
                    if churn.multi {
                        args.push("--multi".into());
                    }
                    let profiler = Profiler::Tool { args };
                    Some(profiler.start(&bench.paths, service.pid, &bench.jsonservice)?)
                }
            };
            let load = drive_for(bench, &service.addr, run_length)?;
            if let Some(running) = running {
                let counts = running.stop()?;
                let report = |key: &str| {
                    counts
                        .report
                        .as_ref()
                        .and_then(|r| r[key].as_f64())
                        .unwrap_or(0.0)
                };
                detaches[index].push(report("cycles") / run_length.as_secs_f64());
                detach_ms[index].push(report("detach_ms_mean"));
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
                Some(churn) => format!(
                    "{}, a detach every {:.2} s",
                    if churn.multi {
                        "uprobe_multi link"
                    } else {
                        "perf-event uprobe"
                    },
                    churn.interval_ms as f64 / 1e3
                ),
            };
            let churned = |values: &[f64], digits| {
                if config.is_some() {
                    show(Summary::of(values), digits)
                } else {
                    String::new()
                }
            };
            format!(
                "| {name} | {} | {} | {} | {} |",
                churned(&detaches[i], 2),
                churned(&detach_ms[i], 0),
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
         interleaved). A uprobe_multi link (Linux 6.6+) closes in less than half the time \
         and showed no p99 cost here: the overhead budget spaces a process's detaches 4 s \
         apart with perf-event uprobes and 1 s apart with uprobe_multi links \
         (`PERF_EVENT_SPACING`, `MULTI_LINK_SPACING` in mapwatch/src/budget/cycles.rs).\n\n\
         | probe | detaches per second | one detach, ms | p99, ms | requests/s |\n\
         |---|---|---|---|---|\n{}\n",
        run_length.as_secs(),
        rows.join("\n")
    ))
}
