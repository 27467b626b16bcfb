//! The opt-in hot probes (`--hot-probes`): on every Go version and map implementation,
//! mapwatch's mapassign_fast64 histograms must equal what the mapassign fixture found
//! in its maps' own memory after each assignment, and its mallocgc count must equal
//! the fixture's MemStats.Mallocs delta. Root only (loads BPF).
mod support;

use support::{Measured, Scrape, fixture, flavors_with, privileged};

/// The fixture's `len_le_L` fields: the metric's probe-length buckets.
const LENGTH_BOUNDS: [u64; 11] = [1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128];

/// The `le` label of `name`'s bucket whose bound is `bound` (as the exporter wrote it).
fn le_label(scrape: &Scrape, name: &str, bound: f64) -> String {
    scrape
        .series(name)
        .iter()
        .filter_map(|labels| labels.get("le"))
        .find(|le| le.parse::<f64>().ok() == Some(bound))
        .unwrap_or_else(|| panic!("{name} has no bucket le={bound}"))
        .clone()
}

#[test]
fn mapassign_slots_equal_what_the_fixture_found_in_its_maps() {
    let Some(_kernel) = privileged("mapassign_slots_equal_what_the_fixture_found_in_its_maps")
    else {
        return;
    };
    for flavor in flavors_with("mapassign") {
        let binary = fixture(&flavor, "mapassign").unwrap();
        let run = Measured::run(&binary, &["--exact", "--hot-probes", "mapassign_fast64"]);
        let reported = &run.reported;
        let assigns = reported["assigns"];
        assert!(assigns > 0, "{flavor}: the fixture made no assignment");
        assert_eq!(
            run.delta("mapwatch_events_lost_total", &[]),
            0,
            "{flavor}: records lost"
        );
        assert_eq!(
            run.delta(
                "mapwatch_events_incomplete_total",
                &[("probe", "mapassign_fast64_ret")]
            ),
            0,
            "{flavor}: assignments whose slot mapwatch could not locate"
        );
        let position = "mapwatch_map_assign_bucket_position";
        assert_eq!(
            run.delta(&format!("{position}_count"), &[]),
            assigns,
            "{flavor}: assignments seen"
        );
        let buckets = format!("{position}_bucket");
        for k in 1..=16u32 {
            let le = le_label(&run.after, &buckets, f64::from(k) / 16.0);
            assert_eq!(
                run.delta(&buckets, &[("le", &le)]),
                reported[&format!("pos_le_{k}")],
                "{flavor}: assignments with bucket position <= {k}/16"
            );
        }
        let length = "mapwatch_map_probe_length";
        let buckets = format!("{length}_bucket");
        for bound in LENGTH_BOUNDS {
            let le = le_label(&run.after, &buckets, bound as f64);
            assert_eq!(
                run.delta(&buckets, &[("le", &le)]),
                reported[&format!("len_le_{bound}")],
                "{flavor}: assignments with probe length <= {bound}"
            );
        }
        assert_eq!(
            run.delta(&format!("{length}_sum"), &[]),
            reported["len_sum"],
            "{flavor}: sum of probe lengths"
        );
        eprintln!(
            "{flavor}: {assigns} assignments: positions and probe lengths match (sum {})",
            reported["len_sum"]
        );
        run.finish(&flavor);
    }
}

#[test]
fn mallocgc_counts_equal_the_fixtures_memstats_mallocs() {
    let Some(_kernel) = privileged("mallocgc_counts_equal_the_fixtures_memstats_mallocs") else {
        return;
    };
    for flavor in flavors_with("mapassign") {
        let binary = fixture(&flavor, "mapassign").unwrap();
        let run = Measured::run(&binary, &["--exact", "--hot-probes", "mallocgc"]);
        let mallocs = run.reported["mallocs"];
        assert!(mallocs > 0, "{flavor}: the fixture allocated nothing");
        assert_eq!(
            run.delta("mapwatch_events_lost_total", &[]),
            0,
            "{flavor}: records lost"
        );
        assert_eq!(
            run.delta("mapwatch_malloc_total", &[]),
            mallocs,
            "{flavor}: heap allocations (MemStats.Mallocs delta)"
        );
        // Go 1.27: compiled code calls mallocgc*SC* directly for small new(T) (the
        // fixture does); calls mallocgc makes to them must not count twice.
        let direct = mallocs - run.delta("mapwatch_probe_hits_total", &[("probe", "mallocgc")]);
        if run
            .after
            .label_values("mapwatch_probe_hits_total", "probe")
            .iter()
            .any(|p| p == "mallocgc_specialized")
        {
            assert!(
                direct >= 2000,
                "{flavor}: {direct} allocations bypassed mallocgc, expected the fixture's 2000 new(T)"
            );
        }
        eprintln!("{flavor}: {mallocs} allocations match ({direct} bypassing mallocgc)");
        run.finish(&flavor);
    }
}
