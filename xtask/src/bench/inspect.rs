//! `mapwatch inspect` on large binaries: wall time and peak memory.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};

use crate::{
    setup,
    util::{Cmd, workspace_root},
};

/// The section of BENCHMARKS.md, and the large binaries it used (the call-site
/// analysis reuses them).
pub fn section(
    env: &setup::Env,
    mapwatch: &Path,
    rounds: usize,
) -> anyhow::Result<(String, Vec<(String, std::path::PathBuf)>)> {
    let big = build_cmd_go(env)?;
    let mut subjects = vec![
        (
            "largest fixture (Go 1.26 demo, DWARF)".to_string(),
            crate::fixtures::fixtures_dir().join("go1.26.6/demo"),
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
        if !path.is_file() {
            continue;
        }
        let size = std::fs::metadata(path)?.len();
        let mut times = Vec::new();
        let mut peak_kib = 0;
        for _ in 0..rounds {
            let (elapsed, rss) = time_inspect(mapwatch, path)?;
            times.push(elapsed.as_secs_f64() * 1e3);
            peak_kib = peak_kib.max(rss);
        }
        rows.push(format!(
            "| {name} | {:.1} MB | {} ms | {:.1} MB |",
            size as f64 / 1e6,
            super::stats::show(super::stats::Summary::of(&times), 1),
            peak_kib as f64 / 1024.0
        ));
    }
    let text = format!(
        "## `mapwatch inspect` (binary analysis, no root)\n\n\
         Wall time is the median of {rounds} runs (min–max); memory is the peak RSS of the \
         process. The binary is memory-mapped: RSS counts only the pages read.\n\n\
         | binary | size | wall time | peak RSS |\n|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    Ok((text, subjects))
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
