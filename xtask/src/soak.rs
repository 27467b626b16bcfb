//! `cargo xtask soak --minutes N`: `mapwatch run` under steady load with process churn
//! for N minutes, printing the daemon's RSS, open files, lost records and attach errors
//! as it goes, and failing when something grows beyond the bounds below or is left in
//! the kernel. Not part of CI (it is long by design); BENCHMARKS.md has a 30-minute run ("Soak").
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    bench::procs::{self, Fixture},
    fixtures, setup,
    util::{cargo, step, workspace_root},
};

/// How often a line is printed.
const SAMPLE_EVERY: Duration = Duration::from_secs(30);
/// How often a short-lived Go process is started (and a fixture runs a workload and
/// exits): ~2,000 processes an hour.
const CHURN_EVERY: Duration = Duration::from_secs(2);
/// Growth allowed after the first two minutes (caches fill, the allocator settles).
const RSS_GROWTH_LIMIT_MIB: f64 = 16.0;
const FD_GROWTH_LIMIT: i64 = 16;
const PORT: u16 = 19_433;

pub fn run(minutes: u64) -> anyhow::Result<()> {
    if !crate::util::is_root() {
        bail!("cargo xtask soak attaches uprobes: run it as root");
    }
    let env = setup::run()?;
    let fixtures_dir = fixtures::build_all(&env)?;
    step("build mapwatch (release)", || {
        cargo(&["build", "--release", "-p", "mapwatch"]).run()
    })?;
    let mapwatch = workspace_root().join("target/release/mapwatch");
    let _lock = crate::util::privileged_lock()?;
    let go = "go1.24.11";
    let budgetloop = fixtures_dir.join(go).join("budgetloop");
    let mapgrow = fixtures_dir.join(go).join("mapgrow");
    let gofmt = fixtures::go_clis_dir().join(go).join("gofmt");
    for path in [&budgetloop, &mapgrow, &gofmt] {
        anyhow::ensure!(path.is_file(), "{} missing", path.display());
    }
    step(&format!("soak for {minutes} min"), || {
        soak(&mapwatch, &budgetloop, &mapgrow, &gofmt, minutes)
    })
}

struct Sample {
    minute: f64,
    rss_mib: f64,
    fds: i64,
    lost: f64,
    errors: f64,
    attached: f64,
    started: u64,
}

fn soak(
    mapwatch: &Path,
    budgetloop: &Path,
    mapgrow: &Path,
    gofmt: &Path,
    minutes: u64,
) -> anyhow::Result<()> {
    let addr = format!("127.0.0.1:{PORT}");
    let mut daemon = Command::new(mapwatch)
        .args(["run", "--listen", &addr, "--kubernetes", "off"])
        .args(["--include-binary", "budgetloop,mapgrow,gofmt"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting mapwatch run")?;
    procs::wait_for_metric(
        &addr,
        "mapwatch_attached_processes",
        Duration::from_secs(30),
        |_| true,
    )
    .context("mapwatch run did not serve /metrics")?;
    let result = drive(&addr, daemon.id(), budgetloop, mapgrow, gofmt, minutes);
    procs::signal(daemon.id(), "TERM");
    let exited = procs::wait_or_kill(&mut daemon, Duration::from_secs(60));
    let samples = result?;
    anyhow::ensure!(
        exited.is_some(),
        "mapwatch run did not exit within 60 s of SIGTERM"
    );
    report(&samples)
}

/// Steady load (two paced growth loops) plus churn, sampled every SAMPLE_EVERY.
fn drive(
    addr: &str,
    daemon: u32,
    budgetloop: &Path,
    mapgrow: &Path,
    gofmt: &Path,
    minutes: u64,
) -> anyhow::Result<Vec<Sample>> {
    let source = std::env::temp_dir().join("mapwatch-soak.go");
    std::fs::write(
        &source,
        "package main\n\nfunc main() { m := map[int]int{1: 2}; _ = m }\n",
    )?;
    let seconds = (minutes * 60 + 60).to_string();
    let mut steady: Vec<Fixture> = Vec::new();
    for _ in 0..2 {
        let mut command = Command::new(budgetloop);
        command.args(["-seconds", &seconds, "-rate", "20000"]);
        let mut fixture = Fixture::start(command)?;
        // Started, not awaited: the loop runs for the whole soak.
        fixture.start_workload()?;
        steady.push(fixture);
    }
    let started_at = Instant::now();
    let end = started_at + Duration::from_secs(minutes * 60);
    let mut next_sample = started_at;
    let mut samples = Vec::new();
    let mut started: u64 = 0;
    let mut running: Vec<Child> = Vec::new();
    println!(
        "    minute  RSS MiB  open files  lost records  attach errors  attached  processes started"
    );
    while Instant::now() < end {
        running.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        let child = Command::new(gofmt)
            .arg("-l")
            .arg(&source)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        running.push(child);
        let mut fixture = Fixture::start(Command::new(mapgrow))?;
        fixture.run()?;
        fixture.finish();
        started += 2;
        if Instant::now() >= next_sample {
            let sample = sample(addr, daemon, started_at, started)?;
            println!(
                "    {:6.1}  {:7.1}  {:10}  {:12.0}  {:13.0}  {:8.0}  {:17}",
                sample.minute,
                sample.rss_mib,
                sample.fds,
                sample.lost,
                sample.errors,
                sample.attached,
                sample.started
            );
            samples.push(sample);
            next_sample += SAMPLE_EVERY;
        }
        std::thread::sleep(CHURN_EVERY);
    }
    for mut child in running {
        let _ = child.wait();
    }
    for fixture in steady {
        fixture.finish();
    }
    samples.push(sample(addr, daemon, started_at, started)?);
    Ok(samples)
}

fn sample(addr: &str, daemon: u32, started_at: Instant, started: u64) -> anyhow::Result<Sample> {
    let (_, body) = procs::http_get(addr, "/metrics").context("GET /metrics")?;
    let (rss_mib, _) = procs::memory_mib(daemon)?;
    let fds = std::fs::read_dir(format!("/proc/{daemon}/fd"))?.count() as i64;
    let errors = procs::metric_by_label(&body, "mapwatch_attach_errors_total", "reason")
        .into_iter()
        .filter(|(reason, _)| reason != "process_gone")
        .map(|(_, count)| count)
        .sum();
    Ok(Sample {
        minute: started_at.elapsed().as_secs_f64() / 60.0,
        rss_mib,
        fds,
        lost: procs::metric_sum(&body, "mapwatch_events_lost_total", ""),
        errors,
        attached: procs::metric_sum(&body, "mapwatch_attached_processes", ""),
        started,
    })
}

/// Compares the end with the state after two minutes; prints a table for BENCHMARKS.md.
fn report(samples: &[Sample]) -> anyhow::Result<()> {
    let baseline = samples
        .iter()
        .find(|s| s.minute >= 2.0)
        .or(samples.first())
        .context("no samples")?;
    let last = samples.last().context("no samples")?;
    println!(
        "\n| minute | RSS, MiB | open files | lost records | attach errors | processes started |"
    );
    println!("|---|---|---|---|---|---|");
    // Every five minutes (samples come every 30 s), and the end.
    let shown = samples
        .iter()
        .enumerate()
        .filter(|(i, _)| i.is_multiple_of(10) || *i + 1 == samples.len());
    for (_, s) in shown {
        println!(
            "| {:.0} | {:.1} | {} | {:.0} | {:.0} | {} |",
            s.minute, s.rss_mib, s.fds, s.lost, s.errors, s.started
        );
    }
    // The program is freed with its last link: none listed means no probe is left. The
    // kernel frees closed links and programs asynchronously (RCU, workqueues), so give it
    // up to 5 s, as the tests do (a check right after the exit once saw it still listed).
    let programs = || {
        crate::util::Cmd::new("bpftool")
            .args(["prog", "list"])
            .output()
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut programs_now = programs();
    while programs_now.contains("name go_probe ") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        programs_now = programs();
    }
    let programs = programs_now;
    let mut problems = Vec::new();
    if last.rss_mib > baseline.rss_mib + RSS_GROWTH_LIMIT_MIB {
        problems.push(format!(
            "RSS grew from {:.1} to {:.1} MiB (limit +{RSS_GROWTH_LIMIT_MIB})",
            baseline.rss_mib, last.rss_mib
        ));
    }
    if last.fds > baseline.fds + FD_GROWTH_LIMIT {
        problems.push(format!(
            "open files grew from {} to {}",
            baseline.fds, last.fds
        ));
    }
    if last.errors > 0.0 {
        problems.push(format!("{} attach errors", last.errors));
    }
    if programs.contains("name go_probe ") {
        problems.push("uprobe links left in the kernel after SIGTERM".to_string());
    }
    // Lost records are reported, not failed on: a saturated ring is counted by design;
    // the soak's loads stay far below what the ring drains.
    if problems.is_empty() {
        println!("\nsoak: passed");
        Ok(())
    } else {
        bail!("soak failed: {}", problems.join("; "))
    }
}
