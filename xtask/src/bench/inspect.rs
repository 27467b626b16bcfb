//! `cargo xtask bench`: measurements written to BENCHMARKS.md with the command that
//! reproduces them. Ratios and medians side by side in one run; never an assertion.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};

use crate::{
    fixtures, setup,
    util::{Cmd, cargo, step, workspace_root},
};

const ROUNDS: usize = 7;

pub fn run() -> anyhow::Result<()> {
    let env = setup::run()?;
    let fixtures_dir = fixtures::build_all(&env)?;
    step("build mapwatch (release)", || {
        cargo(&["build", "--release", "-p", "mapwatch"]).run()
    })?;
    let mapwatch = workspace_root().join("target/release/mapwatch");
    let big = step(
        "large Go binary with DWARF: cmd/go built by Go 1.24",
        || build_cmd_go(&env),
    )?;
    let mut subjects = vec![
        (
            "largest fixture (Go 1.26 demo, DWARF)".to_string(),
            fixtures_dir.join("go1.26.6/demo"),
        ),
        ("cmd/go (Go 1.24, DWARF)".to_string(), big),
    ];
    let prometheus = Path::new("/usr/bin/prometheus");
    if prometheus.is_file() {
        subjects.push((
            "Debian prometheus (Go 1.19, stripped)".to_string(),
            prometheus.to_path_buf(),
        ));
    }
    let mut rows = Vec::new();
    for (name, path) in &subjects {
        let size = std::fs::metadata(path)?.len();
        let mut times = Vec::new();
        let mut peak_kib = 0;
        for _ in 0..ROUNDS {
            let (elapsed, rss) = time_inspect(&mapwatch, path)?;
            times.push(elapsed);
            peak_kib = peak_kib.max(rss);
        }
        times.sort();
        rows.push(format!(
            "| {name} | {:.1} MB | {:.1} ms ({:.1}–{:.1}) | {:.1} MB |",
            size as f64 / 1e6,
            times[ROUNDS / 2].as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3,
            times[ROUNDS - 1].as_secs_f64() * 1e3,
            peak_kib as f64 / 1024.0
        ));
    }
    let machine = Cmd::new("uname")
        .args(["-srm"])
        .output()
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let report = format!(
        "# Benchmarks\n\n\
         Reproduce: `cargo xtask bench` (writes this file). Machine: {} , {cpus} CPUs.\n\n\
         ## `mapwatch inspect` (binary analysis, no root)\n\n\
         Wall time is the median of {ROUNDS} runs (min–max); memory is the peak RSS of the \
         process. The binary is memory-mapped: RSS counts only the pages read.\n\n\
         | binary | size | wall time | peak RSS |\n|---|---|---|---|\n{}\n",
        machine.trim(),
        rows.join("\n")
    );
    let path = workspace_root().join("BENCHMARKS.md");
    std::fs::write(&path, &report)?;
    println!("{report}");
    Ok(())
}

/// One `mapwatch inspect` under GNU time: (wall time, peak RSS in KiB).
fn time_inspect(mapwatch: &Path, binary: &Path) -> anyhow::Result<(Duration, u64)> {
    let started = std::time::Instant::now();
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(mapwatch)
        .arg("inspect")
        .arg(binary)
        .output()
        .context("running /usr/bin/time (Debian package `time`)")?;
    // Includes GNU time's own fork+exec (~1 ms): an upper bound for inspect.
    let elapsed = started.elapsed();
    if !out.status.success() {
        bail!(
            "inspect {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    let rss: u64 = last.trim().parse().context("GNU time output")?;
    Ok((elapsed, rss))
}

fn build_cmd_go(env: &setup::Env) -> anyhow::Result<std::path::PathBuf> {
    let go = env
        .go
        .iter()
        .find(|g| g.name.starts_with("go1.24."))
        .context("Go 1.24")?;
    let out = workspace_root().join("target/bench/cmd-go");
    if out.is_file() {
        return Ok(out);
    }
    let cache = setup::cache_dir();
    Cmd::new(go.root.join("bin/go"))
        .args(["build", "-o"])
        .args([out.as_os_str()])
        .args(["cmd/go"])
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", cache.join("gocache"))
        .env("GOPATH", cache.join("gopath"))
        .run()?;
    Ok(out)
}
