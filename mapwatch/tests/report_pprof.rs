//! `--format pprof` read by the real `go tool pprof`: the profile it prints must be the
//! report's (top function and its count, stacks in order). Needs a Go toolchain from
//! `cargo xtask setup`; no root.
mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use mapwatch::report::{model::*, pprof};
use support::cache_dir;

/// The toolchain whose pprof reads the profile: the newest the project sets up.
const GO: &str = "go1.27.3";

fn go_tool() -> Option<PathBuf> {
    support::go_toolchain(GO)
}

fn loc(function: &str, file: &str, line: u32) -> Location {
    Location {
        function: function.into(),
        file: file.into(),
        line,
    }
}

fn report() -> Report {
    let load = loc(
        "example.com/app/store.(*Loader[go.shape.int64]).Load",
        "/src/store/load.go",
        42,
    );
    let slice = SliceSite {
        location: Some(load.clone()),
        elem_types: vec!["store.Row".into()],
        elem_size: Some(48),
        growths: 1234,
        bytes_allocated: 900_000,
        bytes_copied: 450_000,
        bytes_copied_per_s: 45_000.0,
        instances: 100,
        growths_per_instance: Distribution::default(),
        final_cap: Distribution::default(),
        started_non_empty: 0,
        stacks: vec![
            Stack {
                frames: vec![
                    load.clone(),
                    loc("example.com/app/store.Import", "/src/store/import.go", 17),
                    loc("main.main", "/src/main.go", 9),
                ],
                // The generic Load inlined into Import: one location, two lines.
                inlined: vec![true, false, false],
                growths: 1000,
                bytes: 400_000,
            },
            Stack {
                frames: vec![load, loc("main.refresh", "/src/main.go", 30)],
                inlined: vec![],
                growths: 234,
                bytes: 50_000,
            },
        ],
        advice: Advice::None { why: "test".into() },
    };
    let map = MapSite {
        location: Some(loc("main.index", "/src/main.go", 55)),
        map_types: Vec::new(),
        kinds: BTreeMap::from([("table_split".into(), 77)]),
        growths: 77,
        maps: 3,
        growths_per_map: Distribution::default(),
        size_at_last_growth: Distribution::default(),
        capacity_reached: Distribution::default(),
        hint: None,
        made_at: None,
        mean_load_factor_at_growth: None,
        mean_overflow_buckets_at_growth: None,
        stacks: Vec::new(),
        advice: Advice::None { why: "test".into() },
    };
    Report {
        schema_version: SCHEMA_VERSION,
        capture: CaptureInfo {
            binary: "/srv/app".into(),
            build_id: "0123abcd".into(),
            go_version: "go1.27.3".into(),
            map_implementation: "swiss".into(),
            pid: 4242,
            command: Some(vec!["/srv/app".into(), "-serve".into()]),
            start_unix_s: 1_800_000_000.0,
            duration_s: 10.0,
            stopped_because: Some("duration".into()),
            complete: true,
            damage: None,
            events_lost: 0,
            observations_dropped: 0,
        },
        summary: Summary {
            slice_growths: 1234,
            slice_bytes_copied: 450_000,
            map_growths: 77,
            ..Summary::default()
        },
        slice_sites: vec![slice],
        map_sites: vec![map],
        timeline: Timeline::default(),
        stw_pauses: Vec::new(),
    }
}

fn pprof_output(go: &Path, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(go)
        .args(["tool", "pprof"])
        .args(args)
        // Go 1.24+ builds pprof on first use: the project's build cache keeps it.
        .env("GOCACHE", cache_dir().join("gocache"))
        .env("PPROF_TMPDIR", dir)
        // No binary to look for: the profile carries its function names.
        .env("PPROF_BINARY_PATH", dir)
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("run go tool pprof");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "go tool pprof {args:?}: {}\n{stdout}\n{stderr}",
        out.status
    );
    println!("$ go tool pprof {}\n{stdout}{stderr}", args.join(" "));
    stdout
}

#[test]
fn go_tool_pprof_reads_the_profile() {
    let Some(go) = go_tool() else { return };
    let dir = std::env::temp_dir().join(format!("mapwatch-report-pprof-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("growth.pb.gz");
    std::fs::write(&file, pprof::render(&report())).unwrap();
    let file = file.to_str().unwrap();

    let top = pprof_output(&go, &dir, &["-top", file]);
    let row = top
        .lines()
        // "(partial-inline)": inlined into Import in one stack, not in the other.
        .find(|l| {
            l.ends_with("example.com/app/store.(*Loader[go.shape.int64]).Load (partial-inline)")
        })
        .unwrap_or_else(|| panic!("no row for the top site in:\n{top}"));
    // flat  flat%  sum%  cum  cum%  name: every growth of the site is flat in Load.
    let flat = row.split_whitespace().next().unwrap();
    assert_eq!(flat, "1234", "{row}");
    assert!(top.contains("Type: growths"), "{top}");
    assert!(top.contains("main.index"), "{top}");
    assert!(top.contains("of 1311 total"), "{top}");

    // pprof prints bytes in units of 1024: 450000 B is 439.45kB.
    let bytes = pprof_output(&go, &dir, &["-top", "-lines", "-sample_index=bytes", file]);
    assert!(bytes.contains("of 439.45kB total"), "{bytes}");
    assert!(
        bytes.contains("store.(*Loader[go.shape.int64]).Load /src/store/load.go:42"),
        "{bytes}"
    );

    let traces = pprof_output(&go, &dir, &["-traces", file]);
    let frames: Vec<&str> = traces
        .split("-----------+-------------------------------------------------------")
        .find(|t| t.contains("store.Import"))
        .unwrap_or_else(|| panic!("no trace through store.Import in:\n{traces}"))
        .lines()
        // Label lines are "key:  value"; frame lines the count, then the function.
        .filter(|l| !l.contains(':'))
        .map(|l| {
            l.trim()
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim()
        })
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        frames,
        [
            // One location with two lines: the inlined frame is marked so.
            "example.com/app/store.(*Loader[go.shape.int64]).Load (inline)",
            "example.com/app/store.Import",
            "main.main",
        ],
        "{traces}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
