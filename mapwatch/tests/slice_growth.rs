//! growslice probe: exact counts against what the Go fixtures report about themselves.
//! Root only (loads BPF); see support::privileged.
mod support;

use support::{EXACT_GO_VERSIONS, Measured, Reported, Scrape, fixture, privileged};

const GROW: &str = "mapwatch_slice_grow_total";
const GROW_BYTES: &str = "mapwatch_slice_grow_bytes_total";
const NEW_CAP_COUNT: &str = "mapwatch_slice_grow_new_cap_count";
const CHECKS: &str = "mapwatch_exact_checks_total";

struct Deltas {
    grows: u64,
    bytes: u64,
    new_cap_observations: u64,
    lost: u64,
    checks_match: u64,
    checks_other: u64,
}

/// Runs one fixture under `mapwatch attach`, returns what the fixture reported and what
/// /metrics says changed while the workload ran (the fixture is idle before and after).
fn measure(go: &str, name: &str, mapwatch_args: &[&str]) -> Option<(Reported, Deltas)> {
    let binary = fixture(go, name)?;
    let run = Measured::run(&binary, mapwatch_args);
    let deltas = deltas(&run);
    check_labels(&run.after, go, &binary);
    let reported = Reported {
        grows: run.reported["grows"],
        bytes: run.reported["bytes"],
    };
    run.finish(&format!("{go} {name}"));
    Some((reported, deltas))
}

/// What /metrics says changed while the workload ran.
fn deltas(run: &Measured) -> Deltas {
    Deltas {
        grows: run.delta(GROW, &[]),
        bytes: run.delta(GROW_BYTES, &[]),
        new_cap_observations: run.delta(NEW_CAP_COUNT, &[]),
        lost: run.delta("mapwatch_events_lost_total", &[]),
        checks_match: run.delta(CHECKS, &[("result", "match")]),
        checks_other: run.delta(CHECKS, &[("result", "mismatch")])
            + run.delta(CHECKS, &[("result", "unpaired")]),
    }
}

/// Workload labels, never a pid.
fn check_labels(scrape: &Scrape, go: &str, binary: &std::path::Path) {
    let series = scrape.series(GROW);
    assert!(!series.is_empty(), "no {GROW} series");
    for labels in series {
        check_workload_labels(labels, go, binary);
    }
}

fn check_workload_labels(
    labels: &std::collections::BTreeMap<String, String>,
    go: &str,
    binary: &std::path::Path,
) {
    // The directory is named after the toolchain (plus a GOEXPERIMENT suffix).
    let version = go.split('-').next().unwrap();
    assert_eq!(labels.get("go_version").map(String::as_str), Some(version));
    assert_eq!(
        labels.get("binary").map(String::as_str),
        binary.file_name().and_then(|n| n.to_str())
    );
    let keys: Vec<&str> = labels.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "binary",
            "container",
            "elem_type",
            "go_version",
            "namespace",
            "pod"
        ]
    );
}

fn assert_exact(go: &str, name: &str, reported: Reported, deltas: &Deltas) {
    assert!(reported.grows > 0, "{go} {name}: the fixture did no growth");
    assert_eq!(deltas.lost, 0, "{go} {name}: records lost");
    assert_eq!(deltas.grows, reported.grows, "{go} {name}: growslice calls");
    assert_eq!(
        deltas.new_cap_observations, reported.grows,
        "{go} {name}: new-cap observations"
    );
    assert_eq!(
        deltas.bytes, reported.bytes,
        "{go} {name}: bytes of new backing arrays"
    );
}

#[test]
fn growslice_counts_and_bytes_equal_the_fixtures_own() {
    let Some(_kernel) = privileged("growslice_counts_and_bytes_equal_the_fixtures_own") else {
        return;
    };
    for go in EXACT_GO_VERSIONS {
        let Some((reported, deltas)) = measure(go, "slicegrow", &[]) else {
            continue;
        };
        assert_exact(go, "slicegrow", reported, &deltas);
        assert_eq!(
            deltas.checks_match + deltas.checks_other,
            0,
            "no RET probes without --exact"
        );
    }
}

/// Goroutine stacks grow (and are copied) around growslice calls; a probe after the
/// stack-bound check must still fire exactly once per call.
#[test]
fn growslice_counts_stay_exact_when_stacks_grow() {
    let Some(_kernel) = privileged("growslice_counts_stay_exact_when_stacks_grow") else {
        return;
    };
    for go in EXACT_GO_VERSIONS {
        let Some((reported, deltas)) = measure(go, "deepstack", &[]) else {
            continue;
        };
        assert_exact(go, "deepstack", reported, &deltas);
    }
}

/// --exact adds RET probes: every capacity derived from entry arguments must equal the
/// capacity growslice actually returned.
#[test]
fn derived_capacities_equal_growslice_results() {
    let Some(_kernel) = privileged("derived_capacities_equal_growslice_results") else {
        return;
    };
    for go in EXACT_GO_VERSIONS {
        for name in ["slicegrow", "deepstack"] {
            let Some((reported, deltas)) = measure(go, name, &["--exact"]) else {
                continue;
            };
            assert_exact(go, name, reported, &deltas);
            assert_eq!(
                deltas.checks_other, 0,
                "{go} {name}: mismatched or unpaired RET checks"
            );
            assert_eq!(
                deltas.checks_match, reported.grows,
                "{go} {name}: RET checks"
            );
        }
    }
}

/// The same exact counts through the other ways a binary is built: stripped (pclntab +
/// offsets table instead of symbols + DWARF), PIE (random load address) and cgo
/// (external linking).
#[test]
fn growslice_counts_are_exact_in_stripped_pie_and_cgo_builds() {
    let Some(_kernel) = privileged("growslice_counts_are_exact_in_stripped_pie_and_cgo_builds")
    else {
        return;
    };
    for go in ["go1.19.8", "go1.22.10", "go1.24.11"] {
        for name in ["slicegrow-stripped", "slicegrow-pie", "slicegrow-cgo"] {
            let Some((reported, deltas)) = measure(go, name, &["--exact"]) else {
                continue;
            };
            assert_exact(go, name, reported, &deltas);
            assert_eq!(
                deltas.checks_other, 0,
                "{go} {name}: mismatched or unpaired RET checks"
            );
        }
    }
}

/// Lines of the fixture's source marked `// site: NAME`.
fn marked_lines(source: &str) -> Vec<String> {
    source
        .lines()
        .enumerate()
        .filter(|(_, line)| line.contains("// site: "))
        .map(|(i, _)| (i + 1).to_string())
        .collect()
}

/// Element type names and append call sites: for the types the fixture counts itself,
/// its counts; every growth at a line its source marks as an append site.
#[test]
fn growth_by_element_type_and_call_site_equals_the_fixtures_own() {
    let Some(_kernel) = privileged("growth_by_element_type_and_call_site_equals_the_fixtures_own")
    else {
        return;
    };
    let source_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/slicegrow/main.go");
    let lines = marked_lines(&std::fs::read_to_string(&source_path).unwrap());
    assert_eq!(lines.len(), 4, "four marked append sites");
    for go in EXACT_GO_VERSIONS {
        for name in ["slicegrow", "slicegrow-pie"] {
            let Some(binary) = fixture(go, name) else {
                continue;
            };
            let run = Measured::run(&binary, &[]);
            let reported = &run.reported;
            for (type_name, count) in reported
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "grows" | "bytes"))
            {
                assert_eq!(
                    run.delta(GROW, &[("elem_type", type_name)]),
                    *count,
                    "{go} {name}: elem_type {type_name}"
                );
            }
            let sites = "mapwatch_site_grow_total";
            for labels in run.after.series(sites) {
                assert!(
                    labels["file"].ends_with("fixtures/slicegrow/main.go")
                        && lines.contains(&labels["line"]),
                    "{go} {name}: unexpected call site {labels:?}"
                );
            }
            let at_marked: u64 = lines
                .iter()
                .map(|line| run.delta(sites, &[("line", line)]))
                .sum();
            assert_eq!(
                at_marked, reported["grows"],
                "{go} {name}: growths at the marked append sites"
            );
            run.finish(&format!("{go} {name}"));
        }
    }
}

/// Slices of elements larger than the compiler's 32-byte stack buffer call growslice
/// for every capacity change on every Go version, 1.25–1.27 included.
#[test]
fn growslice_counts_are_exact_on_every_go_version_for_big_elements() {
    let Some(_kernel) =
        privileged("growslice_counts_are_exact_on_every_go_version_for_big_elements")
    else {
        return;
    };
    for flavor in support::flavors_with("slicebig") {
        let Some((reported, deltas)) = measure(&flavor, "slicebig", &["--exact"]) else {
            continue;
        };
        assert_exact(&flavor, "slicebig", reported, &deltas);
        assert_eq!(
            deltas.checks_other, 0,
            "{flavor}: mismatched or unpaired RET checks"
        );
        assert_eq!(deltas.checks_match, reported.grows, "{flavor}: RET checks");
    }
}

/// Go 1.26+ appends through growsliceBuf: growslice's caller is then the runtime, but
/// every growth must still be attributed to the append line in the fixture.
#[test]
fn growslice_buf_growths_are_attributed_to_the_append_site() {
    let Some(_kernel) = privileged("growslice_buf_growths_are_attributed_to_the_append_site")
    else {
        return;
    };
    let source_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/slicebuf/main.go");
    let lines = marked_lines(&std::fs::read_to_string(&source_path).unwrap());
    for flavor in support::flavors_with("slicebuf") {
        let run = Measured::run(&fixture(&flavor, "slicebuf").unwrap(), &[]);
        let grows = run.delta(GROW, &[]);
        assert!(grows > 0, "{flavor}: no growth seen");
        let sites = "mapwatch_site_grow_total";
        for labels in run.after.series(sites) {
            assert!(
                labels["file"].ends_with("fixtures/slicebuf/main.go")
                    && lines.contains(&labels["line"]),
                "{flavor}: growth attributed to {labels:?}"
            );
        }
        assert_eq!(
            run.delta(sites, &[]),
            grows,
            "{flavor}: every growth has its site"
        );
        run.finish(&flavor);
    }
}

/// The Go minor version of a fixture flavor (`go1.25.5-noswissmap` → 25).
fn go_minor(flavor: &str) -> u32 {
    flavor
        .strip_prefix("go1.")
        .and_then(|rest| rest.split(['.', '-']).next())
        .and_then(|minor| minor.parse().ok())
        .unwrap_or_else(|| panic!("flavor {flavor:?} is not go1.N…"))
}

/// Slices of 1- to 24-byte elements: from Go 1.25 the compiler starts them in a 32-byte
/// stack buffer (growing there makes no growslice call), and from 1.26 it also does so
/// for slices that escape later, through growsliceBuf, and copies them to the heap with
/// moveSlice* at the escape (an allocation, not a growth). The fixture counts a growth
/// only when cap() changed and the heap allocated one object during that append
/// (ReadMemStats), so its count is the heap growths on every Go version; mapwatch's
/// growslice counts, bytes and RET checks must equal it, and every growth must be
/// attributed to one of the fixture's append lines, growsliceBuf's included.
#[test]
fn growslice_counts_are_exact_on_every_go_version_for_small_elements() {
    let Some(_kernel) =
        privileged("growslice_counts_are_exact_on_every_go_version_for_small_elements")
    else {
        return;
    };
    let source_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/slicesmall/main.go");
    let lines = marked_lines(&std::fs::read_to_string(&source_path).unwrap());
    for flavor in support::flavors_with("slicesmall") {
        let Some(binary) = fixture(&flavor, "slicesmall") else {
            continue;
        };
        let run = Measured::run(&binary, &["--exact"]);
        let deltas = deltas(&run);
        let fixture_said = |key: &str| -> u64 {
            *run.reported
                .get(key)
                .unwrap_or_else(|| panic!("{flavor}: no {key}= in {:?}", run.reported))
        };
        eprintln!("{flavor} slicesmall: fixture {:?}", run.reported);
        // An allocation the fixture could not attribute would make its count unsound.
        assert_eq!(fixture_said("stray"), 0, "{flavor}: stray allocations");
        // The fixture must exercise what it exists for, or this test proves nothing new.
        let minor = go_minor(&flavor);
        assert_eq!(
            fixture_said("stack_grows") > 0,
            minor >= 25,
            "{flavor}: cap changes without a heap allocation (stack buffers, Go 1.25+)"
        );
        assert_eq!(
            fixture_said("moves") > 0,
            minor >= 26,
            "{flavor}: slices moved from a stack buffer to the heap (moveSlice*, Go 1.26+)"
        );
        let reported = Reported {
            grows: fixture_said("grows"),
            bytes: fixture_said("bytes"),
        };
        assert_exact(&flavor, "slicesmall", reported, &deltas);
        assert_eq!(
            deltas.checks_other, 0,
            "{flavor}: mismatched or unpaired RET checks"
        );
        assert_eq!(deltas.checks_match, reported.grows, "{flavor}: RET checks");
        // The fixture has more (generic instantiation, line) sites than `attach` keeps
        // (50, sticky in order of appearance): the later ones are counted as `other`.
        // The growsliceBuf paths run first (byte slices), so they are among those kept.
        let sites = "mapwatch_site_grow_total";
        let mut kept = 0;
        for labels in run.after.series(sites) {
            if labels["function"] == "other" {
                continue;
            }
            kept += 1;
            assert!(
                labels["file"].ends_with("fixtures/slicesmall/main.go")
                    && lines.contains(&labels["line"]),
                "{flavor}: growth attributed to {labels:?}"
            );
        }
        assert!(kept > 0, "{flavor}: no call site kept");
        assert_eq!(
            run.delta(sites, &[]),
            reported.grows,
            "{flavor}: every growth has its site"
        );
        check_labels(&run.after, &flavor, &binary);
        run.finish(&format!("{flavor} slicesmall"));
    }
}
