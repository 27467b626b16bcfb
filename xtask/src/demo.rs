//! `cargo xtask demo`: profile a bundled Go workload and show the metrics as they come.
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    fixtures, setup,
    util::{cargo, step, workspace_root},
};

const LISTEN: &str = "127.0.0.1:9433";

/// Metric families worth showing in the demo.
const SHOWN: &[&str] = &[
    "mapwatch_slice_grow_total",
    "mapwatch_slice_grow_bytes_total",
    "mapwatch_map_grow_total",
    "mapwatch_map_buckets_log2_bucket",
    "mapwatch_map_make_hint_count",
    "mapwatch_map_assign_bucket_position_bucket",
    "mapwatch_map_probe_length_count",
    "mapwatch_map_probe_length_sum",
    "mapwatch_gc_cycles_total",
    "mapwatch_stw_pause_seconds_count",
    "mapwatch_stw_pause_seconds_sum",
    "mapwatch_events_lost_total",
];

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(seconds: u64) -> anyhow::Result<()> {
    let env = setup::run()?;
    let workload = step("demo workload (Go 1.24)", || {
        fixtures::build_one_for(&env, "demo", "go1.24")
    })?;
    step("build mapwatch (release)", || {
        cargo(&["build", "--release", "-p", "mapwatch"]).run()
    })?;
    let setup_done = Instant::now();

    let mut demo = KillOnDrop(
        Command::new(&workload)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", workload.display()))?,
    );
    let mut ready = String::new();
    BufReader::new(demo.0.stdout.take().context("demo stdout")?).read_line(&mut ready)?;
    let pid = ready
        .strip_prefix("ready ")
        .and_then(|p| p.trim().parse::<u32>().ok())
        .with_context(|| format!("demo workload said {ready:?}, expected `ready <pid>`"))?;
    println!("==> demo workload running as pid {pid}");

    let mapwatch = workspace_root().join("target/release/mapwatch");
    let mut profiler = KillOnDrop(
        Command::new(&mapwatch)
            .args([
                "attach",
                "--pid",
                &pid.to_string(),
                "--listen",
                LISTEN,
                // The bucket heatmap of int64-keyed maps (opt-in: hot code pays per assign).
                "--hot-probes",
                "mapassign_fast64",
                "--duration",
            ])
            .arg(format!("{seconds}s"))
            .spawn()
            .with_context(|| format!("starting {}", mapwatch.display()))?,
    );
    println!(
        "==> mapwatch attach --pid {pid} --listen {LISTEN} --hot-probes mapassign_fast64 --duration {seconds}s"
    );
    let mut shown_growth = false;
    let status = loop {
        std::thread::sleep(Duration::from_secs(3));
        if let Some(status) = profiler.0.try_wait()? {
            break status;
        }
        let Ok(body) = ureq::get(&format!("http://{LISTEN}/metrics"))
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
        else {
            continue;
        };
        println!(
            "--- http://{LISTEN}/metrics, {:.0?} after setup ---",
            setup_done.elapsed()
        );
        // Heatmap buckets are cumulative: print only those that add something.
        let mut previous_bucket = None;
        for line in body
            .lines()
            .filter(|l| SHOWN.iter().any(|m| l.starts_with(m)))
        {
            shown_growth |= line.starts_with("mapwatch_slice_grow_total") && !line.ends_with(" 0");
            if line.contains("_bucket{") {
                let family = line.split('{').next().unwrap_or_default();
                let value = line.rsplit(' ').next().unwrap_or_default();
                let this = Some((family.to_string(), value.to_string()));
                if this == previous_bucket {
                    continue;
                }
                previous_bucket = this;
            }
            println!("{}", shorten(line));
        }
    };
    if !status.success() {
        bail!("mapwatch exited with {status}");
    }
    if !shown_growth {
        bail!("no slice growth was seen: the demo did not work");
    }
    println!(
        "demo: done. Try it on your own program: sudo target/release/mapwatch attach --pid PID"
    );
    Ok(())
}

/// Drops empty labels and the repeated workload labels from a sample line.
fn shorten(line: &str) -> String {
    let Some((name, rest)) = line.split_once('{') else {
        return line.to_string();
    };
    let Some((labels, value)) = rest.rsplit_once('}') else {
        return line.to_string();
    };
    let kept: Vec<String> = labels
        .split("\",")
        .filter_map(|pair| {
            let (key, value) = pair.split_once("=\"")?;
            let value = value.strip_suffix('"').unwrap_or(value);
            let noise = value.is_empty() || key == "binary" || key == "go_version";
            (!noise).then(|| format!("{key}=\"{value}\""))
        })
        .collect();
    if kept.is_empty() {
        format!("{name}{value}")
    } else {
        format!("{name}{{{}}}{value}", kept.join(","))
    }
}
