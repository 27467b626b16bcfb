//! Bounded fuzzing of every parser of untrusted input (fuzz/fuzz_targets/), seeded with
//! the checked-in malformed corpus and the first pages of real fixtures.
use anyhow::Context as _;

use crate::util::{Cmd, path_with_cargo_bin, step, workspace_root};

pub const DEFAULT_SECONDS: u64 = 15;
const TARGETS: &[&str] = &["go_binary", "buildinfo", "pclntab", "decode", "procmaps"];

pub fn run(seconds: u64) -> anyhow::Result<()> {
    let fuzz_dir = workspace_root().join("fuzz");
    let fuzz = |args: &[&str]| {
        Cmd::new("cargo")
            .args(["+nightly", "fuzz"])
            .args(args)
            .current_dir(&fuzz_dir)
            .env("PATH", path_with_cargo_bin())
    };
    step("fuzz: build targets", || fuzz(&["build", "-O"]).run())?;
    let seeds = workspace_root().join("mapwatch/tests/corpus");
    for target in TARGETS {
        step(&format!("fuzz: {target} for {seconds}s"), || {
            let corpus = fuzz_dir.join("corpus").join(target);
            std::fs::create_dir_all(&corpus)
                .with_context(|| format!("creating {}", corpus.display()))?;
            let max_time = format!("-max_total_time={seconds}");
            let corpus = corpus.to_string_lossy().into_owned();
            let seeds = seeds.to_string_lossy().into_owned();
            // A crash fails the step; libFuzzer leaves the input in fuzz/artifacts/.
            fuzz(&[
                "run",
                "-O",
                target,
                &corpus,
                &seeds,
                "--",
                &max_time,
                "-print_final_stats=0",
            ])
            .run()
        })?;
    }
    Ok(())
}
