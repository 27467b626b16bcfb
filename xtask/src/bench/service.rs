//! A JSON HTTP service under load: fixtures/bench/jsonservice pinned to one core,
//! `wrk` (and the profiler) on the other, a fixed time per run, every
//! configuration interleaved with runs without a profiler.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    Bench,
    procs::{cpu_seconds, pinned},
    profilers::{PROFILER_CPU, Profiler, TARGET_CPU},
    stats::{Summary, paired_ratios, round_order, show},
};

/// What every request carries: ~60 words of text (about 45 distinct) and five tags.
const LUA_SCRIPT: &str = r#"-- written by `cargo xtask bench`
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"id":7,"text":"the quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs far away from the dog and the farmer. A farmer has a dog, a cat, two horses and many chickens that run around the farm all day long while the sun shines over the green fields of the quiet valley, and the fox waits.","tags":["farm","animals","","story","fox"]}'
"#;

pub struct Service {
    child: Child,
    pub pid: u32,
    pub addr: String,
}

impl Service {
    pub fn start(binary: &Path) -> anyhow::Result<Service> {
        let mut command = pinned(TARGET_CPU, binary);
        // One P on its one core: "a busy core" of the issue's numbers.
        command.env("GOMAXPROCS", "1");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        // "listening ADDR pid PID"
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(pid)) = (words.get(1), words.get(3).and_then(|p| p.parse().ok()))
        else {
            bail!("jsonservice said {line:?}");
        };
        Ok(Service {
            addr: addr.to_string(),
            pid,
            child,
        })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub requests: f64,
    pub per_second: f64,
    pub p99_ms: f64,
}

/// `wrk` for `duration`.
pub fn drive_for(bench: &Bench, addr: &str, duration: Duration) -> anyhow::Result<Load> {
    let script = bench.work_dir.join("post.lua");
    std::fs::write(&script, LUA_SCRIPT)?;
    let output = pinned(PROFILER_CPU, Path::new("wrk"))
        .args(["-t1", "-c8", "--latency", "-s"])
        .arg(&script)
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg(format!("http://{addr}/count"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running wrk (Debian package wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_wrk(&text).with_context(|| format!("parsing wrk's output:\n{text}"))
}

fn parse_wrk(text: &str) -> Option<Load> {
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let per_second = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))?
        .trim();
    Some(Load {
        requests,
        per_second,
        p99_ms: parse_duration_ms(p99)?,
    })
}

/// wrk's "812.00us", "5.26ms", "1.02s".
fn parse_duration_ms(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    Some(number.parse::<f64>().ok()? * scale)
}

#[derive(Default)]
struct Samples {
    cpu_us_per_request: Vec<f64>,
    per_second: Vec<f64>,
    p99_ms: Vec<f64>,
    hits_per_request: Vec<f64>,
    ret_hits_per_request: Vec<f64>,
    profiler_cpu_share: Vec<f64>,
    profiler_us_per_request: Vec<f64>,
    lost: Vec<f64>,
    reports: Vec<serde_json::Value>,
    /// Per probe: hits per request, one sample per run.
    by_probe: BTreeMap<String, Vec<f64>>,
    /// The budget's own estimate at the end of each run, as a share of one core.
    estimated_overhead: Vec<f64>,
    duty_cycle: BTreeMap<String, Vec<f64>>,
    /// Measured: the service's extra CPU over the run as a share of one core, from
    /// (CPU per request − the same round's run without profiler) × requests / wall.
    wall_seconds: Vec<f64>,
    requests: Vec<f64>,
}

pub struct ServiceResult {
    pub markdown: String,
    pub targets: Vec<String>,
    pub callsite_summary: String,
}

pub fn section(
    bench: &Bench,
    probe_ns: Option<f64>,
    ret_ns: Option<f64>,
) -> anyhow::Result<ServiceResult> {
    // Several duty cycles of the overhead budget only for few cycling probes; with
    // several cycling probes in the service a cycle is longer than a run.
    let run_length = Duration::from_secs(if bench.quick { 4 } else { 10 });
    let warm_up = Duration::from_secs(if bench.quick { 3 } else { 5 });
    // Fewer rounds than elsewhere: each run is long (see run_length).
    let rounds = if bench.quick { 2 } else { 5 };
    let service = Service::start(&bench.jsonservice)?;
    let exact_sites = bench.exact_sites(&bench.jsonservice)?;
    let configs: Vec<(&str, Profiler)> = vec![
        ("none", Profiler::None),
        ("none (A/A)", Profiler::None),
        ("run", Profiler::Run { flags: vec![] }),
        (
            "run --slice-growth=false",
            Profiler::Run {
                flags: vec!["--slice-growth=false".into()],
            },
        ),
        ("attach --exact", Profiler::Attach { exact: true }),
        // A capture: asked for, short, so it may cost more than the daemon's budget.
        ("record", Profiler::Record { stack_depth: 0 }),
        (
            "record --stack-depth 16",
            Profiler::Record { stack_depth: 16 },
        ),
        (
            "bpftrace",
            Profiler::Bpftrace {
                sites: exact_sites.clone(),
            },
        ),
        (
            "callsites",
            Profiler::Tool {
                args: vec!["callsites".into()],
            },
        ),
    ];
    // Warm the service up (first connections, heap growth) before anything is timed.
    drive_for(bench, &service.addr, warm_up)?;
    let mut samples: BTreeMap<&str, Samples> = BTreeMap::new();
    for round in 0..rounds {
        for index in round_order(configs.len(), round) {
            let (label, profiler) = &configs[index];
            let mut running = profiler.start(&bench.paths, service.pid, &bench.jsonservice)?;
            if profiler.is_mapwatch() {
                // Steady state, not start-up: the overhead budget measures hit rates
                // for a second or two before it duty-cycles a probe, and a continuous
                // profiler is judged by the hours after that. (The other profilers
                // have no start-up phase; the service itself is warm.)
                drive_for(bench, &service.addr, warm_up)?;
                running.start_counting();
            }
            let profiler_pid = running.pid();
            let cpu_before = cpu_seconds(service.pid)?;
            let profiler_before = profiler_pid.map(cpu_seconds).transpose()?;
            let started = Instant::now();
            let load = drive_for(bench, &service.addr, run_length);
            let wall = started.elapsed().as_secs_f64();
            let cpu_after = cpu_seconds(service.pid)?;
            let profiler_after = profiler_pid.map(cpu_seconds).transpose()?;
            let counts = running.stop()?;
            let load = load?;
            let s = samples.entry(label).or_default();
            s.cpu_us_per_request
                .push((cpu_after - cpu_before) * 1e6 / load.requests);
            s.per_second.push(load.per_second);
            s.p99_ms.push(load.p99_ms);
            if let Some(h) = counts.hits {
                s.hits_per_request.push(h / load.requests);
            }
            if let Some(h) = counts.ret_hits {
                s.ret_hits_per_request.push(h / load.requests);
            }
            if let Some(l) = counts.lost {
                s.lost.push(l);
            }
            if let (Some(b), Some(a)) = (profiler_before, profiler_after) {
                s.profiler_cpu_share.push((a - b) / wall);
                s.profiler_us_per_request
                    .push((a - b) * 1e6 / load.requests);
            }
            if let Some(r) = counts.report {
                s.reports.push(r);
            }
            for (probe, hits) in &counts.hits_by_probe {
                s.by_probe
                    .entry(probe.clone())
                    .or_default()
                    .push(hits / load.requests);
            }
            for (probe, ratio) in &counts.duty_cycle {
                s.duty_cycle.entry(probe.clone()).or_default().push(*ratio);
            }
            if let Some(e) = counts.estimated_overhead {
                s.estimated_overhead.push(e);
            }
            s.wall_seconds.push(wall);
            s.requests.push(load.requests);
        }
        println!("    service: round {}/{rounds} done", round + 1);
    }
    // One more run of call-site probing with the runtime probe beside it: the same
    // growths seen from both ends, per site.
    let accuracy = {
        let profiler = Profiler::Tool {
            args: vec!["callsites".into(), "--runtime".into()],
        };
        let running = profiler.start(&bench.paths, service.pid, &bench.jsonservice)?;
        let load = drive_for(bench, &service.addr, run_length);
        let counts = running.stop()?;
        load?;
        counts.report.unwrap_or_default()
    };
    drop(service);

    let none = &samples["none"];
    let mut rows = Vec::new();
    let mut model_rows = Vec::new();
    for (label, profiler) in &configs {
        let s = &samples[label];
        let name = match *label {
            "none (A/A)" => "no profiler (A/A control)".to_string(),
            "callsites" => "uprobes on the service's own CALL growslice sites".to_string(),
            _ => profiler.name(),
        };
        let cpu_ratio = paired_ratios(&s.cpu_us_per_request, &none.cpu_us_per_request);
        let rps_ratio = paired_ratios(&s.per_second, &none.per_second);
        rows.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            name,
            show(Summary::of(&s.cpu_us_per_request), 1),
            if *label == "none" {
                String::new()
            } else {
                show(Summary::of(&cpu_ratio), 3)
            },
            show(Summary::of(&s.per_second), 0),
            if *label == "none" {
                String::new()
            } else {
                show(Summary::of(&rps_ratio), 3)
            },
            show(Summary::of(&s.p99_ms), 2),
            show(Summary::of(&s.hits_per_request), 1),
            show(
                Summary::of(&s.profiler_cpu_share).map(|x| Summary {
                    median: x.median * 100.0,
                    min: x.min * 100.0,
                    max: x.max * 100.0,
                    count: x.count
                }),
                1
            ),
            show(Summary::of(&s.lost), 0),
        ));
        // Budget model: hits × per-hit cost (from the microbenchmark) against the
        // measured extra CPU per request.
        if let (Some(hits), Some(probe_ns)) = (Summary::of(&s.hits_per_request), probe_ns) {
            let rets = Summary::of(&s.ret_hits_per_request).map_or(0.0, |r| r.median);
            let predicted_us =
                ((hits.median - rets) * probe_ns + rets * ret_ns.unwrap_or(probe_ns)) / 1e3;
            let extra: Vec<f64> = s
                .cpu_us_per_request
                .iter()
                .zip(&none.cpu_us_per_request)
                .map(|(a, b)| a - b)
                .collect();
            model_rows.push(format!(
                "| {} | {:.1} | {:.1} | {} |",
                name,
                hits.median,
                predicted_us,
                show(Summary::of(&extra), 1)
            ));
        }
    }
    let mut probe_rows = Vec::new();
    for (label, profiler) in &configs {
        let s = &samples[label];
        if s.by_probe.is_empty() {
            continue;
        }
        let probes: Vec<String> = s
            .by_probe
            .iter()
            .filter(|(_, v)| Summary::of(v).is_some_and(|x| x.max > 0.0))
            .map(|(probe, v)| {
                let duty = s
                    .duty_cycle
                    .get(probe)
                    .and_then(|d| Summary::of(d))
                    .map(|d| format!(", duty cycle {:.2}", d.median))
                    .unwrap_or_default();
                format!("{probe} {}{duty}", show(Summary::of(v), 2))
            })
            .collect();
        // The daemon's estimate against the measured extra CPU, both as a share of one
        // core over the run.
        let measured: Vec<f64> = s
            .cpu_us_per_request
            .iter()
            .zip(&none.cpu_us_per_request)
            .zip(s.requests.iter().zip(&s.wall_seconds))
            .map(|((a, b), (n, w))| (a - b) * 1e-6 * n / w * 100.0)
            .collect();
        let estimate = Summary::of(&s.estimated_overhead)
            .map(|e| format!("{:.2}%", e.median * 100.0))
            .unwrap_or_else(|| "not exported".into());
        probe_rows.push(format!(
            "| {} | {} | {estimate} | {}% |",
            profiler.name(),
            probes.join("; "),
            show(Summary::of(&measured), 1)
        ));
    }
    let verdict = super::probe_cost::verdict;
    let default_ratio = Summary::of(&paired_ratios(
        &samples["run"].cpu_us_per_request,
        &none.cpu_us_per_request,
    ));
    let aa = Summary::of(&paired_ratios(
        &samples["none (A/A)"].cpu_us_per_request,
        &none.cpu_us_per_request,
    ));
    let per_hit = |label: &str| -> Option<Summary> {
        let s = &samples[label];
        let values: Vec<f64> = s
            .cpu_us_per_request
            .iter()
            .zip(&none.cpu_us_per_request)
            .zip(&s.hits_per_request)
            .filter(|(_, h)| **h > 0.0)
            .map(|((a, b), h)| (a - b) / h * 1e3)
            .collect();
        Summary::of(&values)
    };
    let (exact, bpftrace) = (per_hit("attach --exact"), per_hit("bpftrace"));
    let targets = vec![
        format!(
            "| `mapwatch run` default ≤ 1.01× CPU per request (service) | {}× (A/A control: {}×) | {} |",
            show(default_ratio, 3),
            show(aa, 3),
            verdict(default_ratio.map(|r| r.median <= 1.01))
        ),
        format!(
            "| `attach --exact` no worse per hit than bpftrace (service; ns of service CPU per hit) | {} vs {} | {} |",
            show(exact, 0),
            show(bpftrace, 0),
            verdict(exact.zip(bpftrace).map(|(e, b)| e.median <= b.median))
        ),
    ];
    let callsite_summary = callsite_text(
        &samples["callsites"].reports,
        &accuracy,
        &samples["callsites"],
    );
    let markdown = format!(
        "## A JSON HTTP service under load\n\n\
         `fixtures/bench/jsonservice` (Go 1.24, stripped, GOMAXPROCS=1, pinned to CPU \
         {TARGET_CPU}): per request it decodes a JSON body (~60 words, 5 tags), counts the \
         words in a map, builds and sorts a slice of (word, count) and the tags, encodes \
         the top ten — nothing pre-sized. `wrk -t1 -c8` (pinned to CPU {PROFILER_CPU}, with \
         the profiler) sends requests for {} s per run; {rounds} rounds, configurations \
         interleaved (rotated each round). mapwatch is measured in its steady state: \
         after it attached, {} s of load warm it up (its overhead budget duty-cycles \
         probes only once it has measured their hit rates), and its counts are taken \
         over the measured requests only. *CPU per request* is the service's own \
         (/proc/PID/stat utime+stime over the run); *×* columns are per-round ratios to \
         the same round's run without a profiler; the profiler's own CPU is shown apart \
         (share of one core during the run). `mapwatch run` is limited to the service with \
         `--include-binary jsonservice --kubernetes off`; bpftrace counts hits at the same \
         {} file offsets `attach --exact` probes (growslice entry and RETs, map growth, \
         makemap, STW, GC; not the opt-in hot probes), through tracefs.\n\n\
         | configuration | CPU per request, µs | × CPU | requests/s | × throughput | p99, ms | probe hits per request | profiler CPU, % of a core | events lost |\n\
         |---|---|---|---|---|---|---|---|---|\n{}\n\n\
         The first two rows are the same service without any profiler: their ratio is the \
         noise floor of this machine at the moment of the run.\n\n{}\n\n\
         ### Budget model check\n\n\
         Predicted extra CPU per request = hits per request × the per-hit cost measured in \
         the microbenchmark above (entry probes {}, RET probes {}); measured = CPU per \
         request minus the same round's run without a profiler.\n\n\
         | configuration | hits per request | predicted extra, µs | measured extra, µs |\n\
         |---|---|---|---|\n{}\n\n\
         ### Hits per request by probe, and the overhead budget's own estimate\n\n\
         Hits per request per probe (median, min–max over the rounds; duty cycle as \
         exported at the end of the run). *Estimated* is `mapwatch_estimated_overhead_ratio` \
         at the end of each run (the daemon's own figure, share of one core, averaged over its \
         last ~60 s, which include the warm-up and the first second or two with every probe \
         on); *measured* is \
         the service's extra CPU against the same round's run without a profiler, as a share \
         of one core over the run (the A/A row above bounds its noise).\n\n\
         | configuration | hits per request by probe | estimated overhead | measured overhead |\n\
         |---|---|---|---|\n{}\n",
        run_length.as_secs(),
        warm_up.as_secs(),
        exact_sites.len(),
        rows.join("\n"),
        record_text(&samples),
        probe_ns.map_or("—".into(), |n| format!("{n:.0} ns")),
        ret_ns.map_or("—".into(), |n| format!("{n:.0} ns")),
        model_rows.join("\n"),
        probe_rows.join("\n"),
    );
    Ok(ServiceResult {
        markdown,
        targets,
        callsite_summary,
    })
}

/// What a capture costs beside the daemon: `record` keeps every probe on (RETs, stacks)
/// and writes every event, so it is set against `run`'s budget.
fn record_text(samples: &BTreeMap<&str, Samples>) -> String {
    let none = &samples["none"];
    let ratio = |label: &str| {
        Summary::of(&paired_ratios(
            &samples[label].cpu_us_per_request,
            &none.cpu_us_per_request,
        ))
        .map_or(f64::NAN, |s| s.median)
    };
    let extra_us = |label: &str| {
        let extra: Vec<f64> = samples[label]
            .cpu_us_per_request
            .iter()
            .zip(&none.cpu_us_per_request)
            .map(|(a, b)| a - b)
            .collect();
        Summary::of(&extra).map_or(f64::NAN, |s| s.median)
    };
    let share = |label: &str| {
        Summary::of(&samples[label].profiler_cpu_share).map_or(f64::NAN, |s| s.median * 100.0)
    };
    let rps = |label: &str| Summary::of(&samples[label].per_second).map_or(f64::NAN, |s| s.median);
    // Extra CPU per request × requests per second: the share of a core it takes.
    let core_share = |label: &str| extra_us(label) * rps(label) / 1e4;
    let (record, stacked, run) = (
        ratio("record"),
        ratio("record --stack-depth 16"),
        ratio("run"),
    );
    format!(
        "`mapwatch record` (the rows so named) keeps every probe attached for the whole \
         capture — growslice's and makemap's RETs included (each single-stepped), 8 \
         frame-pointer reads at each map growth, 16 at each slice growth with \
         `--stack-depth 16` — and writes every event to a file: the service's CPU per \
         request is {record:.1}× (stack depth 16: {stacked:.1}×) the unprofiled run's, \
         near `attach --exact` ({:.1}×: the same probes but makemap's RETs) and bpftrace \
         at attach's sites ({:.1}×); the recorder \
         itself takes {:.0}–{:.0}% of a core. Where the daemon costs {run:.3}× (its default \
         budget is 1% of a core), a capture costs {:.0} µs of CPU per request more: {:.0}% \
         of a core at the {:.0} requests/s the service still serves, {:.0}× the daemon's \
         budget. A capture is short and asked for; its cost is per event, so a service that \
         grows less per request pays less.",
        ratio("attach --exact"),
        ratio("bpftrace"),
        share("record"),
        share("record --stack-depth 16"),
        extra_us("record"),
        core_share("record"),
        rps("record"),
        core_share("record"),
    )
}

fn callsite_text(
    reports: &[serde_json::Value],
    accuracy: &serde_json::Value,
    samples: &Samples,
) -> String {
    let field = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let attached: Vec<f64> = reports.iter().map(|r| field(r, "attached")).collect();
    let active: Vec<f64> = reports.iter().map(|r| field(r, "active_sites")).collect();
    let attach_ms: Vec<f64> = reports.iter().map(|r| field(r, "attach_ms")).collect();
    format!(
        "On jsonservice: {} user call sites attached in {} ms (of {} CALL growslice sites \
         in the binary), {} of them hit; {} call-site hits per request (runtime probe: see the \
         table above). Accuracy run with both probes at once: call-site hits {}, runtime-probe \
         records whose caller is one of those sites {}, sites where the two differ {}; the \
         runtime probe saw {} growslice calls in all, so {:.1}% of this service's slice growth \
         happens at its own call sites.",
        show(Summary::of(&attached), 0),
        show(Summary::of(&attach_ms), 1),
        field(accuracy, "sites_total"),
        show(Summary::of(&active), 0),
        show(Summary::of(&samples.hits_per_request), 2),
        field(accuracy, "site_hits"),
        field(accuracy, "runtime_at_user_sites"),
        field(accuracy, "mismatched_sites"),
        field(accuracy, "runtime_hits"),
        100.0 * field(accuracy, "site_hits") / field(accuracy, "runtime_hits"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_parses() {
        let text = "Running 5m test @ http://127.0.0.1:1/count\n  1 threads and 8 connections\n\
            \x20 Latency Distribution\n     50%  445.00us\n     99%    4.67ms\n\
            \x20 20000 requests in 1.52s, 8.54MB read\nRequests/sec:  13157.89\n";
        let load = parse_wrk(text).unwrap();
        assert_eq!(load.requests, 20000.0);
        assert_eq!(load.per_second, 13157.89);
        assert!((load.p99_ms - 4.67).abs() < 1e-9);
    }

    #[test]
    fn wrk_durations_in_ms() {
        assert_eq!(parse_duration_ms("812.00us"), Some(0.812));
        assert_eq!(parse_duration_ms("1.50s"), Some(1500.0));
        assert_eq!(parse_duration_ms("5ms"), Some(5.0));
        assert_eq!(parse_duration_ms("5m"), None);
    }
}
