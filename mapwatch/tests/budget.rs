//! The overhead budget under real BPF (root), on fixtures/budgetloop (growslice as fast
//! as it can: far above any budget when probed):
//! - `run` duty-cycles it until its exported duty cycle and estimated overhead are
//!   within the budget;
//! - the cost estimate (kernel hits × calibrated per-hit cost) agrees with the extra
//!   CPU time the target really spent, read from /proc/PID/stat with and without
//!   mapwatch on the same work;
//! - the scaled count of a duty-cycled probe estimates the fixture's own count, within
//!   ±10%: on a request-driven load (open loop), with and without CPU work per growth,
//!   and on a saturated, CPU-bound one (closed loop), which the probe slows down.
//!
//! Outcomes only: nothing here asserts how long something took.
mod support;

use std::time::{Duration, Instant};

use support::{Fixture, Mapwatch, Scrape, fixture, mapwatch_links, privileged};

/// A Go version whose growslice entry is a PUSH after the stack check (the usual
/// case; Go 1.19's is a SUB, single-stepped).
const GO: &str = "go1.22.10";
const BINARY: &str = "budgetloop";

fn gauge(scrape: &Scrape, name: &str, extra: &[(&str, &str)]) -> Option<f64> {
    let mut selector = vec![("binary", BINARY)];
    selector.extend_from_slice(extra);
    let found = scrape.series(name).iter().any(|labels| {
        selector
            .iter()
            .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
    });
    found.then(|| scrape.sum_f64(name, &selector))
}

/// CPU time (user + system) the process has used, from /proc/PID/stat, ns.
fn cpu_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after "(comm)": state is field 3, utime 14, stime 15 (proc(5)).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat has (comm)")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    ticks * 1_000_000_000 / per_second
}

#[test]
fn a_workload_far_above_budget_is_held_to_it() {
    let Some(_kernel) = privileged("a_workload_far_above_budget_is_held_to_it") else {
        return;
    };
    let Some(binary) = fixture(GO, BINARY) else {
        return;
    };
    let mut target = Fixture::start(&binary, &["-seconds", "150"]);
    let daemon = Mapwatch::run(&[
        "--kubernetes",
        "off",
        "--include-binary",
        BINARY,
        "--slice-growth",
        "--rescan-interval",
        "1h",
    ]);
    let budget = 0.01; // the default
    daemon.scrape_until("the fixture to be attached", |s| {
        s.sum("mapwatch_attached_processes", &[]) == 1
    });
    target.start_workload();
    let duty = |s: &Scrape| {
        gauge(
            s,
            "mapwatch_probe_duty_cycle_ratio",
            &[("probe", "growslice")],
        )
    };
    let overhead = |s: &Scrape| gauge(s, "mapwatch_estimated_overhead_ratio", &[]);
    let cycling = daemon.scrape_until("growslice to be duty-cycled", |s| {
        duty(s).is_some_and(|d| d < 1.0)
    });
    // The rare groups start always on and are measured first: on this fixture, whose
    // GC runs all the time, the STW and GC probes cost more than the budget in the
    // first seconds. The overhead gauge averages ~60 s: wait until that start has left
    // it (a CI run sampled 1.78% 66 s after the first cycling scrape, 0.59% a second
    // later).
    std::thread::sleep(Duration::from_secs(90));
    let samples: Vec<(f64, f64)> = (0..10)
        .map(|_| {
            std::thread::sleep(Duration::from_secs(1));
            let s = daemon.scrape();
            (duty(&s).unwrap(), overhead(&s).unwrap())
        })
        .collect();
    // The sliding average holds a random number of windows: 30% over is noise, more
    // is a budget not kept.
    for &(duty, overhead) in &samples {
        assert!(
            overhead <= budget * 1.3,
            "estimated overhead {:.2}% of a core with a {:.0}% budget; samples (duty, \
             overhead): {samples:?}",
            overhead * 100.0,
            budget * 100.0
        );
        assert!(
            duty < 0.05,
            "growslice attached {:.1}% of the time: {samples:?}",
            duty * 100.0
        );
    }
    let mean = samples.iter().map(|s| s.1).sum::<f64>() / samples.len() as f64;
    assert!(
        mean >= budget * 0.3,
        "estimated overhead {:.3}% of a core: the budget is not used (first cycling scrape: \
         {cycling:?})",
        mean * 100.0
    );
    // Rare probes stay always on.
    let after = daemon.scrape();
    for probe in ["map_growth", "gc"] {
        if let Some(d) = gauge(
            &after,
            "mapwatch_probe_duty_cycle_ratio",
            &[("probe", probe)],
        ) {
            assert_eq!(d, 1.0, "{probe} duty-cycled");
        }
    }
    let status = daemon.stop();
    assert!(status.success(), "mapwatch run exit status: {status}");
    drop(target);
    assert_eq!(mapwatch_links(), 0, "mapwatch left BPF behind");
}

/// The last line of `attach`'s output that reports the probes' cost.
fn cost_line(lines: &[String]) -> Option<&String> {
    lines.iter().rev().find(|l| l.contains("an estimated"))
}

/// What [`cost_line`] reports: (ms of CPU, windows of growslice's duty cycle).
fn summary(lines: &[String]) -> (f64, u64) {
    let line = cost_line(lines).unwrap_or_else(|| {
        panic!(
            "no cost summary in mapwatch's output:\n{}",
            lines.join("\n")
        )
    });
    let ms: f64 = line
        .split("an estimated ")
        .nth(1)
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no estimate in {line:?}"));
    let windows = line
        .split("growslice: ")
        .nth(1)
        .and_then(|rest| rest.split(" windows").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (ms, windows)
}

#[test]
fn the_cost_estimate_matches_the_targets_cpu_time() {
    let Some(_kernel) = privileged("the_cost_estimate_matches_the_targets_cpu_time") else {
        return;
    };
    let Some(binary) = fixture(GO, BINARY) else {
        return;
    };
    let calls = "1000000";
    // Interleaved: without, with, without, with, … (this VM is shared and noisy).
    let mut without = Vec::new();
    let mut extra = Vec::new();
    let mut estimates = Vec::new();
    for _ in 0..3 {
        let mut plain = Fixture::start(&binary, &["-calls", calls]);
        let before = cpu_ns(plain.pid);
        plain.run_workload_fields();
        without.push(cpu_ns(plain.pid) - before);
        drop(plain);

        let mut probed = Fixture::start(&binary, &["-calls", calls]);
        let mapwatch = Mapwatch::attach(probed.pid, &[]);
        let before = cpu_ns(probed.pid);
        probed.run_workload_fields();
        let used = cpu_ns(probed.pid) - before;
        mapwatch.scrape_drained();
        let (status, output) = mapwatch.stop_with_output();
        assert!(status.success(), "mapwatch attach: {status}");
        let (estimate_ms, _) = summary(&output);
        let baseline = *without.last().unwrap();
        extra.push(used.saturating_sub(baseline) as f64 / 1e6);
        estimates.push(estimate_ms);
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (measured, estimated) = (median(&extra), median(&estimates));
    let ratio = estimated / measured;
    // Tolerance: the per-hit cost is calibrated on mapwatch's program in mapwatch's own
    // code and scaled by one fixed factor for what Go code pays after each trap
    // (budget::HitCost::INDIRECT_FACTOR), which differs between machines; CPU times
    // come in 10 ms ticks on a shared VM. Ratios seen: 0.62 (a CI machine), 0.84 and
    // 1.26 (another), 1.53 (a third, faster at traps). The band is asymmetric on
    // purpose: an overestimate only makes the budget sample less than it may (safe), an
    // underestimate lets probes cost more than the budget — below 0.5 that is over 2×.
    // Tightening it needs the factor measured per target (#7 notes: compare the
    // process's CPU with a group attached and detached).
    assert!(
        (0.5..=2.0).contains(&ratio),
        "estimated {estimated:.0} ms of probe CPU, measured {measured:.0} ms extra \
         (ratio {ratio:.2}); per round: estimated {estimates:?} ms, measured extra \
         {extra:?} ms, without mapwatch {without:?} ns"
    );
    eprintln!(
        "cost estimate {estimated:.0} ms vs measured {measured:.0} ms extra (ratio {ratio:.2})"
    );
}

/// What one run of [`scaled_count_run`] saw.
struct ScaledRun {
    /// mapwatch_slice_grow_total's increase over the run, once it stopped moving.
    scaled: u64,
    /// The fixture's own count of growths, and its CPU time over the loop.
    truth: u64,
    cpu_ns: u64,
    /// growslice's duty-cycle windows (attach's exit summary), the duty cycle sampled
    /// every second while the loop ran, and the mean of those below 1.
    windows: u64,
    duties: Vec<f64>,
    mean_duty: f64,
    /// (time since `start`, mapwatch_slice_grow_total) every second while the loop ran.
    counts: Vec<(Duration, f64)>,
    /// From the workload's end to growslice always on again; from then to the
    /// counter's last move; from `start` to the end of the run.
    back_on: Duration,
    settled: Duration,
    took: Duration,
    /// attach's exit summary of the probes' cost (with the per-hit cost it learned).
    cost_line: String,
}

impl ScaledRun {
    fn error(&self) -> f64 {
        (self.scaled as f64 - self.truth as f64) / self.truth as f64
    }

    /// The counter's increase over each minute that ends ≥ `from` into the run, per
    /// second, as a ratio to `truth` per second: what `rate(…[1m])` shows a dashboard.
    fn minute_rates(&self, from: Duration, truth: f64) -> Vec<f64> {
        let minute = Duration::from_secs(60);
        self.counts
            .iter()
            .filter(|(at, _)| *at >= from.max(minute))
            .filter_map(|&(at, count)| {
                let &(began, before) = self.counts.iter().find(|(t, _)| *t + minute >= at)?;
                let span = (at - began).as_secs_f64();
                (span >= 55.0).then(|| (count - before) / span / truth)
            })
            .collect()
    }

    /// ≥ 20 windows of a duty cycle, and the scaled count within ±10% of the truth.
    fn assert_within_ten_percent_over_twenty_windows(&self) {
        assert!(
            self.windows >= 20 && self.mean_duty < 0.5,
            "want ≥ 20 windows of a duty cycle: {} windows, duty cycles {:?}",
            self.windows,
            self.duties
        );
        assert!(self.error().abs() <= 0.10, "{}", self.describe());
    }

    fn describe(&self) -> String {
        format!(
            "scaled {} vs exact {} (ratio {:.3}, {:+.1}%), {} windows at a mean duty cycle \
             of {:.2}% ({} duty-cycle changes seen during the workload), {:.0} ns of the \
             target's CPU per growth; always on again {:.1} s \
             after the workload, counter still {:.1} s after that, {:.0} s in all; {}",
            self.scaled,
            self.truth,
            self.scaled as f64 / self.truth as f64,
            self.error() * 100.0,
            self.windows,
            self.mean_duty * 100.0,
            self.duties.windows(2).filter(|w| w[0] != w[1]).count(),
            self.cpu_ns as f64 / self.truth.max(1) as f64,
            self.back_on.as_secs_f64(),
            self.settled.as_secs_f64(),
            self.took.as_secs_f64(),
            self.cost_line
        )
    }
}

/// budgetloop `-seconds <seconds> <load...>` under `mapwatch attach <mapwatch_args>`:
/// the exported growslice count over the run against the fixture's own.
fn scaled_count_run(seconds: u64, load: &[&str], mapwatch_args: &[&str]) -> Option<ScaledRun> {
    scaled_count_run_with(seconds, load, mapwatch_args, &[])
}

/// [`scaled_count_run`] with `env` set for mapwatch.
fn scaled_count_run_with(
    seconds: u64,
    load: &[&str],
    mapwatch_args: &[&str],
    env: &[(&str, &str)],
) -> Option<ScaledRun> {
    let binary = fixture(GO, BINARY)?;
    let seconds_arg = seconds.to_string();
    let mut args = vec!["-seconds", seconds_arg.as_str()];
    args.extend_from_slice(load);
    let mut target = Fixture::start(&binary, &args);
    let mapwatch = Mapwatch::attach_with_env(target.pid, mapwatch_args, env);
    let before = mapwatch.scrape_drained();
    target.start_workload();
    let started = Instant::now();
    let duty = |s: &Scrape| {
        gauge(
            s,
            "mapwatch_probe_duty_cycle_ratio",
            &[("probe", "growslice")],
        )
    };
    let count = |s: &Scrape| s.sum("mapwatch_slice_grow_total", &[("binary", BINARY)]);
    let mut duties = Vec::new();
    let mut counts = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds - 5) {
        std::thread::sleep(Duration::from_secs(1));
        let scrape = mapwatch.scrape();
        duties.extend(duty(&scrape));
        counts.push((started.elapsed(), count(&scrape) as f64));
    }
    let reported = target.wait_done();
    // Idle now: the last cycles close and their records are weighed; the idle probe
    // then costs nothing and goes back to always on. That takes a cycle per ~30% drop
    // of its measured on-cost (budget/ state.rs DECAY): ~50 s from ~60% of a core at
    // a 1% budget. Weighed records may be released over the following cycle: read the
    // counter once it has stopped moving.
    let idle = Instant::now();
    loop {
        let scrape = mapwatch.scrape();
        if duty(&scrape) == Some(1.0) {
            break;
        }
        assert!(
            idle.elapsed() < Duration::from_secs(120),
            "growslice not always on again 120 s after the workload ended:\n{scrape:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let back_on = idle.elapsed();
    let settle = Instant::now();
    let mut last = count(&mapwatch.scrape_drained());
    let mut still_since = Instant::now();
    while still_since.elapsed() < Duration::from_secs(5) {
        assert!(
            settle.elapsed() < Duration::from_secs(60),
            "mapwatch_slice_grow_total still moving 60 s after growslice was always on again \
             (now {last})"
        );
        std::thread::sleep(Duration::from_millis(500));
        let now = count(&mapwatch.scrape_drained());
        if now != last {
            (last, still_since) = (now, Instant::now());
        }
    }
    let scaled = last - count(&before);
    let settled = still_since.duration_since(settle);
    let (status, output) = mapwatch.stop_with_output();
    assert!(status.success(), "mapwatch attach: {status}");
    let (_, windows) = summary(&output);
    let cost_line = cost_line(&output).cloned().unwrap_or_default();
    let cycled: Vec<f64> = duties.iter().copied().filter(|&d| d < 1.0).collect();
    let mean_duty = cycled.iter().sum::<f64>() / cycled.len().max(1) as f64;
    drop(target);
    Some(ScaledRun {
        scaled,
        truth: reported["grows"],
        cpu_ns: reported["cpu_ns"],
        windows,
        duties,
        mean_duty,
        counts,
        back_on,
        settled,
        took: started.elapsed(),
        cost_line,
    })
}

#[test]
fn scaled_counts_estimate_the_exact_count() {
    let Some(_kernel) = privileged("scaled_counts_estimate_the_exact_count") else {
        return;
    };
    // A request-driven load: 50k growths a second whether or not a probe slows each
    // one down (~2.3 µs per hit here: ~12% of a core while attached), so a 1.5% budget
    // gives a duty cycle of ~13%. Almost all of its CPU time is the probe's and the
    // pacing's, not the growths'.
    // Cycles of one cycling slot last ~4 s (2–6 s; budget/ PROCESS_DETACH_SPACING): 105 s
    // hold ≥ 20 of them with room to spare.
    let Some(run) = scaled_count_run(110, &["-rate", "50000"], &["--overhead-budget", "1.5%"])
    else {
        return;
    };
    // Counts that flow: records are held until their cycle closes, then paced out over
    // the next one, so the counter runs about a cycle (2–6 s) behind a steady rate —
    // every minute from 70 s on holds only steady load. Held and released in 40 s
    // lumps, rate(…[1m]) swung between 0 and several times the truth.
    let rates = run.minute_rates(Duration::from_secs(70), 50_000.0);
    assert!(
        rates.len() >= 20 && rates.iter().all(|r| (r - 1.0).abs() <= 0.25),
        "per-minute rates / truth: {rates:.2?}; {}",
        run.describe()
    );
    assert!(
        run.windows >= 20 && run.mean_duty >= 0.10,
        "want ≥ 20 windows at a duty cycle ≥ 10%: {} windows, duty cycles {:?}",
        run.windows,
        run.duties
    );
    assert!(run.error().abs() <= 0.10, "{}", run.describe());
    eprintln!("{}", run.describe());
}

/// Work per growth for the loops below, ns: about what a growslice hit costs the
/// target (measured here: ~1.6 µs of CPU per growth detached, ~2.8 µs attached), so a
/// growth takes roughly twice as long while attached.
const WORK_NS: &str = "1500";

/// How long the saturated loops run, s. Their count is weighed by work, which needs
/// what a hit costs the process, learned from its tick-sampled system time: at a 1%
/// budget ~250 ticks of the probes' kernel time per 100 s, and the learned cost came
/// out within ±6.5% (sd) of the one that makes the count exact over 17 runs of 100 s;
/// with the probes ~45% of the window's CPU, the count errs by ~0.8× that, so 100 s
/// put ~8% of runs outside ±10% (one at 1.134). Over 200 s, eleven runs: 0.952–1.035 but
/// one at 1.101 (a CI run; sd 0.039): the learned cost wanders with the tick noise for
/// the whole run (0.40–0.61 in one, whose last value alone would have given 1.034). 300 s
/// cuts the spread to ~3%, so ±10% is ~3 sd.
const SATURATED_SECONDS: u64 = 300;

// Was 0.88–1.21 over four runs while a closing link kept recording after its window's
// last reading; with slots paused in the kernel outside their windows, 1.045, 1.015 and
// 1.004 — and 0.881 once while other work shared the machine (BENCHMARKS.md, "Scaled
// counts"); 0.880 once in CI (see the test after this one). Over 100 s, 14 runs here:
// 1.005–1.064, and 1.134 once.
#[test]
fn scaled_counts_are_right_on_a_saturated_cpu_bound_loop() {
    let Some(_kernel) = privileged("scaled_counts_are_right_on_a_saturated_cpu_bound_loop") else {
        return;
    };
    // The loop closed: it grows and works as fast as it can, so each hit's cost comes
    // out of its work and it does about half as many growths per second while
    // attached. Weighed by wall time this came out at 0.51–0.56 of the truth; weighed
    // by work with the calibrated per-hit cost, at 1.48 (that cost was 1.47× the real
    // one here, 0.62× on another machine): the weight needs the cost each hit really
    // has in this process, learned from its system time (budget/cost_scale.rs).
    let Some(run) = scaled_count_run(
        SATURATED_SECONDS,
        &["-work", WORK_NS],
        &["--overhead-budget", "1%"],
    ) else {
        return;
    };
    run.assert_within_ten_percent_over_twenty_windows();
    // Its true rate is about steady: the probes are attached ~2% of the time.
    let rates = run.minute_rates(
        Duration::from_secs(70),
        run.truth as f64 / SATURATED_SECONDS as f64,
    );
    assert!(
        rates.len() >= 15 && rates.iter().all(|r| (r - 1.0).abs() <= 0.25),
        "per-minute rates / truth: {rates:.2?}; {}",
        run.describe()
    );
    eprintln!("{}", run.describe());
}

#[test]
fn scaled_counts_are_right_on_a_saturated_loop_whose_calibration_is_far_off() {
    let Some(_kernel) =
        privileged("scaled_counts_are_right_on_a_saturated_loop_whose_calibration_is_far_off")
    else {
        return;
    };
    // The test above came out at 0.88 on a CI machine: where the calibrated per-hit cost
    // is far below what a hit costs the process, the cost learned from its system time
    // started from that belief and left it slowly, and the first minute's cycles were
    // weighed with a cost too low (budget/cost_scale.rs, PRIOR_WEIGHT). Here the
    // calibration counts half what it measures, on top of whatever this machine's is off
    // by (not a quarter: where the machine's own calibration is already ~3× too low,
    // that would leave the range a fit may take). With it at a quarter here (the test
    // above with MAPWATCH_HIT_COST_FACTOR=0.25), the real cost was ~2.7× the belief and
    // the count came out at 0.934 before the fix (100 s), 1.007 and 0.987 after (200 s).
    let Some(run) = scaled_count_run_with(
        SATURATED_SECONDS,
        &["-work", WORK_NS],
        &["--overhead-budget", "1%"],
        &[("MAPWATCH_HIT_COST_FACTOR", "0.5")],
    ) else {
        return;
    };
    run.assert_within_ten_percent_over_twenty_windows();
    eprintln!("{}", run.describe());
}

#[test]
fn scaled_counts_are_right_on_a_cpu_bound_loop_below_saturation() {
    let Some(_kernel) = privileged("scaled_counts_are_right_on_a_cpu_bound_loop_below_saturation")
    else {
        return;
    };
    // The saturated test's work and budget, paced instead: 50k growths a second, each
    // with ~1.5 µs of work (~13% of a core with the pacing, ~20% while attached),
    // whatever the probe costs. Unlike scaled_counts_estimate_the_exact_count, most of
    // the target's CPU is its own work, not the probe's: an estimate from CPU time is
    // then not a small difference of two large numbers. Duty cycle ~10%.
    let Some(run) = scaled_count_run(
        100,
        &["-rate", "50000", "-work", WORK_NS],
        &["--overhead-budget", "1%"],
    ) else {
        return;
    };
    run.assert_within_ten_percent_over_twenty_windows();
    eprintln!("{}", run.describe());
}
