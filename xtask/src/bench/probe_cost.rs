//! Per-hit cost of a growslice probe: fixtures/budgetloop makes N growslice calls
//! and reports its own CPU time; each variant attaches a different probe, interleaved
//! round by round with a run without any.
use std::collections::BTreeMap;

use super::{
    Bench,
    procs::{Fixture, field, pinned},
    profilers::{ProbeSite, Profiler, TARGET_CPU},
    stats::{Summary, paired_ratios, round_order, show},
};

pub struct ProbeCost {
    pub markdown: String,
    /// Median extra CPU per hit of mapwatch's probe after the stack check, ns.
    pub probe_ns: Option<f64>,
    /// The same of a RET probe.
    pub ret_ns: Option<f64>,
    /// Rows of the targets table.
    pub targets: Vec<String>,
}

struct Variant {
    label: &'static str,
    profiler: Profiler,
    /// The variant an extra cost is compared with (the empty program at the same site).
    baseline: Option<&'static str>,
}

fn tool(variant: &str) -> Profiler {
    Profiler::Tool {
        args: vec!["cost".into(), "--variant".into(), variant.into()],
    }
}

pub fn section(bench: &Bench) -> anyhow::Result<ProbeCost> {
    let calls: i64 = if bench.quick { 100_000 } else { 300_000 };
    let rounds = bench.rounds;
    let entry_offset = bench.growslice_entry_offset(&bench.budgetloop)?;
    let variants = vec![
        Variant {
            label: "no probe",
            profiler: Profiler::None,
            baseline: None,
        },
        Variant {
            label: "no probe (A/A control)",
            profiler: Profiler::None,
            baseline: None,
        },
        Variant {
            label: "empty program after the stack check",
            profiler: tool("empty"),
            baseline: None,
        },
        Variant {
            label: "mapwatch probe after the stack check",
            profiler: tool("probe"),
            baseline: Some("empty program after the stack check"),
        },
        Variant {
            label: "mapwatch probe without its caller-PC read",
            profiler: tool("probe-no-caller-pc"),
            baseline: Some("empty program after the stack check"),
        },
        Variant {
            label: "`mapwatch attach` (all default probes)",
            profiler: Profiler::Attach { exact: false },
            baseline: Some("empty program after the stack check"),
        },
        Variant {
            label: "bpftrace count() after the stack check",
            profiler: Profiler::Bpftrace {
                sites: vec![ProbeSite {
                    file_offset: entry_offset,
                    ret: false,
                }],
            },
            baseline: Some("empty program after the stack check"),
        },
        Variant {
            label: "bpftrace count() at every `attach --exact` site",
            profiler: Profiler::Bpftrace {
                sites: bench.exact_sites(&bench.budgetloop)?,
            },
            baseline: None,
        },
        Variant {
            label: "`mapwatch attach --exact`",
            profiler: Profiler::Attach { exact: true },
            baseline: Some("bpftrace count() at every `attach --exact` site"),
        },
        Variant {
            label: "empty program at growslice+0",
            profiler: tool("empty-at0"),
            baseline: None,
        },
        Variant {
            label: "mapwatch probe at growslice+0",
            profiler: tool("probe-at0"),
            baseline: Some("empty program at growslice+0"),
        },
        Variant {
            label: "empty program on growslice's RETs",
            profiler: tool("empty-ret"),
            baseline: None,
        },
        Variant {
            label: "mapwatch probe on growslice's RETs",
            profiler: tool("probe-ret"),
            baseline: Some("empty program on growslice's RETs"),
        },
    ];
    // ns of CPU per call, per variant, one sample per round.
    let mut per_call: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut hits_per_call: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for index in round_order(variants.len(), round) {
            let variant = &variants[index];
            let (ns, hits) = run_once(bench, &variant.profiler, calls, &[])?;
            per_call.entry(variant.label).or_default().push(ns);
            if let Some(h) = hits {
                hits_per_call.entry(variant.label).or_default().push(h);
            }
        }
        println!("    probe cost: round {}/{rounds} done", round + 1);
    }
    let none = per_call["no probe"].clone();
    let extra = |label: &str| -> Vec<f64> {
        per_call[label]
            .iter()
            .zip(&none)
            .map(|(v, n)| v - n)
            .collect()
    };
    let mut rows = Vec::new();
    for variant in &variants {
        let extras = extra(variant.label);
        let ratio = variant
            .baseline
            .map(|b| paired_ratios(&extras, &extra(b)))
            .map(|r| show(Summary::of(&r), 2))
            .unwrap_or_default();
        let aa = if variant.label == "no probe (A/A control)" {
            show(
                Summary::of(&paired_ratios(&per_call[variant.label], &none)),
                2,
            )
        } else {
            String::new()
        };
        rows.push(format!(
            "| {} | {} | {} | {} | {} | {} |",
            variant.label,
            show(Summary::of(&per_call[variant.label]), 0),
            // A variant compared with another, or one that others are compared with.
            if variant.baseline.is_some()
                || variants.iter().any(|v| v.baseline == Some(variant.label))
            {
                show(Summary::of(&extras), 0)
            } else {
                String::new()
            },
            ratio,
            aa,
            hits_per_call
                .get(variant.label)
                .map(|h| show(Summary::of(h), 4))
                .unwrap_or_default(),
        ));
    }
    // The BPF program's own run time, measured by the kernel in separate runs (the
    // statistics add two clock reads per run, so never during the timed rounds).
    let mut program_rows = Vec::new();
    for variant in ["empty", "probe", "probe-no-caller-pc", "probe-ret"] {
        let (_, _, report) =
            run_with_report(bench, &tool(variant), &calls_args(calls), &["--bpf-stats"])?;
        let ns = report
            .as_ref()
            .and_then(|r| r["program_ns_per_run"].as_f64());
        program_rows.push(format!(
            "| {variant} | {} |",
            ns.map_or("—".into(), |ns| format!("{ns:.0}"))
        ));
    }
    let probe_vs_empty = Summary::of(&paired_ratios(
        &extra("mapwatch probe after the stack check"),
        &extra("empty program after the stack check"),
    ));
    let (budget_rows, loop_ratio) = budget_rows(bench)?;
    let targets = vec![
        format!(
            "| per-hit cost of mapwatch's probe ≤ 1.15× an empty program at the same offset | {}× | {} |",
            show(probe_vs_empty, 2),
            verdict(probe_vs_empty.map(|s| s.median <= 1.15))
        ),
        format!(
            "| growth-heavy loop under `mapwatch run` ≤ 1.05× CPU, start-up included (no all-on start) | {}× | {} |",
            show(loop_ratio, 3),
            verdict(loop_ratio.map(|s| s.median <= 1.05))
        ),
    ];
    let probe_ns = Summary::of(&extra("mapwatch probe after the stack check")).map(|s| s.median);
    let ret_ns = Summary::of(&extra("mapwatch probe on growslice's RETs")).map(|s| s.median);
    let markdown = format!(
        "## Per-hit cost of a probe (growth-heavy microbenchmark)\n\n\
         `fixtures/budgetloop -calls {calls}` (Go 1.24, GC off, pinned to CPU {TARGET_CPU}) \
         appends one 40-byte element to a nil slice in a loop: one `runtime.growslice` call \
         per iteration. CPU is the process's own (getrusage, user + system: a uprobe's trap \
         and BPF program run in the probed thread). {rounds} rounds, variants interleaved \
         (rotated each round); median (min–max). *Extra* is CPU per call minus the same \
         round's run without a probe; *× baseline* divides it, per round, by the extra of \
         the empty program at the same site (target ≤ 1.15) or, for `attach --exact`, of \
         bpftrace counting at the same sites (growslice's entry and its RETs: two hits \
         per call, one of them single-stepped).\n\n\
         | variant | CPU per call, ns | extra per call, ns | × baseline | A/A ratio | hits per call |\n\
         |---|---|---|---|---|---|\n{}\n\n\
         BPF program run time alone (kernel `BPF_ENABLE_STATS`, one run each, ns per run):\n\n\
         | program | ns per run |\n|---|---|\n{}\n\n{}",
        rows.join("\n"),
        program_rows.join("\n"),
        budget_rows
    );
    Ok(ProbeCost {
        markdown,
        probe_ns,
        ret_ns,
        targets,
    })
}

/// The overhead budget on the same loop: `mapwatch run` with its defaults against no
/// profiler, over whole runs of `budgetloop -seconds S` — start-up included (every
/// probe is on for the first second or two, until the budget has measured hit rates).
fn budget_rows(bench: &Bench) -> anyhow::Result<(String, Option<Summary>)> {
    let seconds = if bench.quick { 8 } else { 15 };
    let rounds = if bench.quick { 1 } else { 3 };
    let configs = [
        ("no probe", Profiler::None),
        ("`mapwatch run` (default)", Profiler::Run { flags: vec![] }),
    ];
    let workload = ["-seconds".to_string(), seconds.to_string()];
    let mut per_call: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut hits: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for round in 0..rounds {
        for index in round_order(configs.len(), round) {
            let (ns, h, _) = run_with_report(bench, &configs[index].1, &workload, &[])?;
            per_call[index].push(ns);
            hits[index].extend(h);
        }
    }
    let ratio = Summary::of(&paired_ratios(&per_call[1], &per_call[0]));
    let rows: Vec<String> = configs
        .iter()
        .enumerate()
        .map(|(i, (label, _))| {
            format!(
                "| {label} | {} | {} | {} |",
                show(Summary::of(&per_call[i]), 1),
                if i == 0 {
                    String::new()
                } else {
                    show(ratio, 3)
                },
                show(Summary::of(&hits[i]), 4),
            )
        })
        .collect();
    let text = format!(
        "The overhead budget on the same loop: `budgetloop -seconds {seconds}` (GC on), \
         {rounds} rounds interleaved, CPU per call over the whole run, the budget's start-up \
         included (a new process's hot probes start duty-cycled at a guessed fraction).\n\n\
         | configuration | CPU per call, ns | × CPU | probe hits per call |\n|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    Ok((text, ratio))
}

pub fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

/// One budgetloop run under `profiler`: (CPU ns per call, profiler hits per call).
fn run_once(
    bench: &Bench,
    profiler: &Profiler,
    calls: i64,
    extra_args: &[&str],
) -> anyhow::Result<(f64, Option<f64>)> {
    let (ns, hits, _) = run_with_report(bench, profiler, &calls_args(calls), extra_args)?;
    Ok((ns, hits))
}

fn calls_args(calls: i64) -> [String; 2] {
    ["-calls".into(), calls.to_string()]
}

/// One budgetloop run (`workload`: its arguments) under `profiler`.
fn run_with_report(
    bench: &Bench,
    profiler: &Profiler,
    workload: &[String],
    extra_args: &[&str],
) -> anyhow::Result<(f64, Option<f64>, Option<serde_json::Value>)> {
    let mut command = pinned(TARGET_CPU, &bench.budgetloop);
    command.args(workload);
    let mut fixture = Fixture::start(command)?;
    let profiler = match (profiler, extra_args.is_empty()) {
        (Profiler::Tool { args }, false) => Profiler::Tool {
            args: args
                .iter()
                .cloned()
                .chain(extra_args.iter().map(|s| s.to_string()))
                .collect(),
        },
        (other, _) => other.clone(),
    };
    let running = profiler.start(&bench.paths, fixture.pid, &bench.budgetloop)?;
    let fields = fixture.run();
    let counts = running.stop()?;
    fixture.finish();
    let fields = fields?;
    let grows = field(&fields, "grows")? as f64;
    let cpu_ns = field(&fields, "cpu_ns")? as f64;
    Ok((
        cpu_ns / grows,
        counts.hits.map(|h| h / grows),
        counts.report,
    ))
}
