//! Bounded fuzzing of every parser of untrusted input (fuzz/fuzz_targets/), each target
//! seeded with its part of the checked-in corpus (mapwatch/tests/corpus/).
use anyhow::Context as _;

use crate::util::{Cmd, path_with_cargo_bin, step, workspace_root};

/// CI's fuzzing budget is ~3 minutes: 13 targets × (8 s + ~2 s of start-up) ≈ 2 min,
/// plus rebuilding mapwatch and the targets (~50 s of CPU) when fuzz/target is cached.
pub const DEFAULT_SECONDS: u64 = 8;

/// Each target and its seeds: a directory under mapwatch/tests/corpus, "" for all of it
/// (the binary parsers take bytes of any kind, and ELF files sit in several places).
const TARGETS: &[(&str, &str)] = &[
    ("go_binary", ""),
    ("buildinfo", ""),
    ("pclntab", ""),
    ("decode", ""),
    ("procmaps", "proc"),
    ("proc_stat", "proc"),
    ("proc_status", "proc"),
    ("cgroup", "cgroup"),
    ("dwarf", "dwarf"),
    ("types", "types"),
    ("kubernetes", "kubernetes"),
    ("config", "config"),
    ("record_file", "record"),
];

/// Debug assertions (overflow checks included) on: an overflow wraps silently in a
/// release build, and a wrapped address or length is how a parser goes wrong quietly.
const BUILD_FLAGS: [&str; 2] = ["-O", "--debug-assertions"];

pub fn run(seconds: u64) -> anyhow::Result<()> {
    let fuzz_dir = workspace_root().join("fuzz");
    let fuzz = |args: &[&str]| {
        Cmd::new("cargo")
            .args(["+nightly", "fuzz"])
            .args(args)
            .current_dir(&fuzz_dir)
            .env("PATH", path_with_cargo_bin())
    };
    step("fuzz: build targets", || {
        fuzz(&[&["build"][..], &BUILD_FLAGS].concat()).run()
    })?;
    let corpus_root = workspace_root().join("mapwatch/tests/corpus");
    for &(target, seeds) in TARGETS {
        step(&format!("fuzz: {target} for {seconds}s"), || {
            let corpus = fuzz_dir.join("corpus").join(target);
            std::fs::create_dir_all(&corpus)
                .with_context(|| format!("creating {}", corpus.display()))?;
            let max_time = format!("-max_total_time={seconds}");
            let corpus = corpus.to_string_lossy().into_owned();
            let seeds = corpus_root.join(seeds).to_string_lossy().into_owned();
            // A crash fails the step; libFuzzer leaves the input in fuzz/artifacts/.
            let run = [
                &["run"][..],
                &BUILD_FLAGS,
                &[
                    target,
                    &corpus,
                    &seeds,
                    "--",
                    &max_time,
                    // An input that hangs fails in seconds instead of holding CI for
                    // libFuzzer's default 20 minutes.
                    "-timeout=10",
                    "-print_final_stats=0",
                ],
            ]
            .concat();
            fuzz(&run).run()
        })?;
    }
    Ok(())
}
