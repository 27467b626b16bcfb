//! Map growth and map creation: mapwatch's counts per kind must equal what the mapgrow
//! fixture measured from its maps' own headers, on every Go version and map
//! implementation (classic and Swiss). Root only (loads BPF).
mod support;

use support::{MAP_GROWTH_KINDS, Measured, fixture, flavors_with, privileged};

#[test]
fn map_growth_by_kind_and_make_hints_equal_the_fixtures_own_counts() {
    let Some(_kernel) =
        privileged("map_growth_by_kind_and_make_hints_equal_the_fixtures_own_counts")
    else {
        return;
    };
    for flavor in flavors_with("mapgrow") {
        let run = Measured::run(&fixture(&flavor, "mapgrow").unwrap(), &[]);
        let reported = &run.reported;
        assert_eq!(
            run.delta("mapwatch_events_lost_total", &[]),
            0,
            "{flavor}: records lost"
        );
        let total: u64 = MAP_GROWTH_KINDS.iter().map(|k| reported[*k]).sum();
        assert!(total > 0, "{flavor}: the fixture saw no growth");
        for kind in MAP_GROWTH_KINDS {
            assert_eq!(
                run.delta("mapwatch_map_grow_total", &[("kind", kind)]),
                reported[kind],
                "{flavor}: map growth of kind {kind}"
            );
        }
        // Every growth is observed in the size histogram too.
        assert_eq!(
            run.delta("mapwatch_map_size_at_grow_count", &[]),
            total,
            "{flavor}: sizes"
        );
        // The bucket heatmap: the map's size after each growth (classic B; Swiss log2 of
        // its 8-slot groups over all tables), as the fixture measured it from memory.
        for k in 0..25 {
            let le = k.to_string();
            assert_eq!(
                run.delta("mapwatch_map_buckets_log2_bucket", &[("le", &le)]),
                reported[&format!("buckets_log2_le_{k}")],
                "{flavor}: growths that left the map at most 2^{k} buckets/groups"
            );
        }
        let makes = reported["hinted"] + reported["unhinted"];
        assert_eq!(
            run.delta("mapwatch_map_make_hint_count", &[]),
            makes,
            "{flavor}: make(map) calls"
        );
        assert_eq!(
            run.delta("mapwatch_map_make_hint_sum", &[]),
            reported["hint_sum"],
            "{flavor}: hints"
        );
        eprintln!("{flavor}: {total} growths by kind and {makes} make(map) calls match");
        run.finish(&flavor);
    }
}
