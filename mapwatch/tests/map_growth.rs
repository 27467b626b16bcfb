//! Map growth and map creation: mapwatch's counts per kind must equal what the mapgrow
//! fixture measured from its maps' own headers, on every Go version and map
//! implementation (classic and Swiss). Root only (loads BPF).
mod support;

use support::{Fixture, Mapwatch, fixture, flavors_with, mapwatch_links, privileged};

const KINDS: [&str; 6] = [
    "double",
    "same_size",
    "to_small",
    "to_table",
    "table_grow",
    "table_split",
];

#[test]
fn map_growth_by_kind_and_make_hints_equal_the_fixtures_own_counts() {
    let Some(_kernel) =
        privileged("map_growth_by_kind_and_make_hints_equal_the_fixtures_own_counts")
    else {
        return;
    };
    for flavor in flavors_with("mapgrow") {
        let binary = fixture(&flavor, "mapgrow").unwrap();
        let mut fixture = Fixture::start(&binary, &[]);
        let mapwatch = Mapwatch::attach(fixture.pid, &[]);
        let before = mapwatch.scrape_drained();
        let reported = fixture.run_workload_fields();
        let after = mapwatch.scrape_drained();
        let delta = |name: &str, sel: &[(&str, &str)]| after.sum(name, sel) - before.sum(name, sel);
        assert_eq!(
            delta("mapwatch_events_lost_total", &[]),
            0,
            "{flavor}: records lost"
        );
        let total: u64 = KINDS.iter().map(|k| reported[*k]).sum();
        assert!(total > 0, "{flavor}: the fixture saw no growth");
        for kind in KINDS {
            assert_eq!(
                delta("mapwatch_map_grow_total", &[("kind", kind)]),
                reported[kind],
                "{flavor}: map growth of kind {kind}"
            );
        }
        // Every growth is observed in the size histogram too.
        assert_eq!(
            delta("mapwatch_map_size_at_grow_count", &[]),
            total,
            "{flavor}: sizes"
        );
        assert_eq!(
            delta("mapwatch_map_make_hint_count", &[]),
            reported["hinted"] + reported["unhinted"],
            "{flavor}: make(map) calls"
        );
        assert_eq!(
            delta("mapwatch_map_make_hint_sum", &[]),
            reported["hint_sum"],
            "{flavor}: hints"
        );
        eprintln!(
            "{flavor}: {total} growths by kind and {} make(map) calls match",
            reported["hinted"] + reported["unhinted"]
        );
        let status = mapwatch.stop();
        assert!(status.success(), "{flavor}: mapwatch exit status {status}");
        assert!(
            fixture.finish().success(),
            "{flavor}: the profiled fixture failed"
        );
        assert_eq!(mapwatch_links(), 0, "{flavor}: BPF links left behind");
    }
}
