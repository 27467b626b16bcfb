//! The node-wide series budget under `mapwatch run`, as root: many workloads (copies of
//! one fixture under different names, so each is its own workload), a budget small
//! enough that most must give up detail. The answer stays within the budget, the
//! busiest workload keeps its element types and call sites, and the sum of the growth
//! counter over every exported series moves by exactly what the fixtures counted.
mod support;

use std::path::PathBuf;

use support::{Fixture, Mapwatch, Scrape, fixture, privileged};

const WORKLOADS: usize = 8;
const BUDGET: usize = 200;
/// Exact counts: Go 1.22 has no stack-buffered appends (fixtures/README.md).
const GO: &str = "go1.22.10";

fn exported_series(daemon: &Mapwatch) -> usize {
    let (status, body) = daemon.get_text("/metrics");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count()
}

fn growths(scrape: &Scrape) -> u64 {
    scrape.sum("mapwatch_slice_grow_total", &[])
}

#[test]
fn many_workloads_stay_within_the_series_budget_and_lose_no_count() {
    let Some(_kernel) = privileged("many_workloads_stay_within_the_series_budget") else {
        return;
    };
    let Some(slicegrow) = fixture(GO, "slicegrow") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("mapwatch-series-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copies: Vec<PathBuf> = (0..WORKLOADS)
        .map(|i| {
            let copy = dir.join(format!("sbudget{i}"));
            std::fs::copy(&slicegrow, &copy).unwrap();
            copy
        })
        .collect();
    let budget = BUDGET.to_string();
    let daemon = Mapwatch::run_for(
        "sbudget*",
        &[
            "--series-budget",
            &budget,
            // Exact counts: nothing duty-cycled during the fixtures' short bursts.
            "--overhead-budget",
            "100%",
            "--overhead-share",
            "100%",
        ],
    );
    // sbudget0 grows 20 times as much as each of the others.
    let mut fixtures: Vec<Fixture> = copies
        .iter()
        .enumerate()
        .map(|(i, c)| Fixture::start(c, if i == 0 { &["-scale", "20"] } else { &[] }))
        .collect();
    daemon.scrape_until("every fixture attached", |s| {
        s.sum("mapwatch_attached_processes", &[]) == WORKLOADS as u64
    });
    let before = daemon.scrape_drained();
    let mut reported = 0;
    for f in fixtures.iter_mut() {
        reported += f.run_workload().grows;
    }
    let after = daemon.scrape_drained();
    let series = exported_series(&daemon);
    eprintln!(
        "{series} series exported (budget {BUDGET}); workloads by tier: {:?}",
        ["detail", "folded", "aggregated"]
            .map(|t| after.sum("mapwatch_series_budget_workloads", &[("tier", t)]))
    );
    assert!(
        series <= BUDGET,
        "{series} series exported, budget {BUDGET}"
    );
    assert!(after.sum("mapwatch_series_exported", &[]) <= BUDGET as u64);
    assert_eq!(after.sum("mapwatch_series_budget", &[]), BUDGET as u64);
    assert!(
        after.count_labelled("binary", "other") > 0,
        "the budget never had to act: raise WORKLOADS or lower BUDGET\n{after:?}"
    );
    // The busiest keeps its detail: its element types and call sites by name.
    let busy = [("binary", "sbudget0")];
    let elem_types = after.label_values("mapwatch_slice_grow_total", "elem_type");
    assert!(
        after.sum(
            "mapwatch_slice_grow_total",
            &[busy[0], ("elem_type", "main.point")]
        ) > 0,
        "sbudget0 lost its element types: {elem_types:?}"
    );
    let busy_sites = after
        .series("mapwatch_site_grow_total")
        .into_iter()
        .filter(|l| l.get("binary").map(String::as_str) == Some("sbudget0"))
        .filter(|l| l.get("function").map(String::as_str) != Some("other"))
        .count();
    assert!(busy_sites > 0, "sbudget0 lost its call sites");
    // No count lost: the total over every series moved by what the fixtures counted.
    assert_eq!(
        growths(&after) - growths(&before),
        reported,
        "sum of mapwatch_slice_grow_total over all series"
    );

    for f in fixtures {
        assert!(f.finish().success());
    }
    assert!(daemon.stop().success());
    std::fs::remove_dir_all(&dir).unwrap();
}
