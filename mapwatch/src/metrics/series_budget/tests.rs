//! The budget on a real registry: what a scrape shows, scrape after scrape.
use std::collections::BTreeMap;

use crate::metrics::{Metrics, WorkloadLabels};

fn labels(binary: &str) -> WorkloadLabels {
    WorkloadLabels {
        binary: binary.into(),
        go_version: "go1.24.11".into(),
        ..WorkloadLabels::default()
    }
}

/// `sites` call sites and two element types, `n` growths each, and one histogram.
fn grow(metrics: &Metrics, binary: &str, sites: u32, n: u64) {
    let [ns, pod, container, binary, go] = labels(binary).values().map(str::to_string);
    let w = [&*ns, &*pod, &*container, &*binary, &*go];
    for line in 0..sites {
        let line = line.to_string();
        let site = [w[0], w[1], w[2], w[3], w[4], "main.f", "main.go", &line];
        metrics.site_grow_total.with_label_values(&site).inc_by(n);
    }
    for elem in ["int", "main.point"] {
        let elem_labels = [w[0], w[1], w[2], w[3], w[4], elem];
        metrics
            .slice_grow_total
            .with_label_values(&elem_labels)
            .inc_by(n * u64::from(sites) / 2);
    }
    metrics
        .slice_grow_new_cap
        .with_label_values(&w)
        .observe(n as f64);
    metrics
        .stw_growth_correlation
        .with_label_values(&w)
        .set(0.5);
}

/// Series → value of a scrape (comments left out).
fn scrape(metrics: &Metrics) -> BTreeMap<String, f64> {
    metrics
        .render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn sum(scrape: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    scrape
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

fn has(scrape: &BTreeMap<String, f64>, fragment: &str) -> bool {
    scrape.keys().any(|k| k.contains(fragment))
}

#[test]
fn within_the_budget_every_series_is_exported_as_it_is() {
    let metrics = Metrics::new().unwrap();
    grow(&metrics, "api", 10, 3);
    let plain = {
        let families = metrics.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap()
    };
    metrics.set_series_budget(10_000);
    let budgeted = scrape(&metrics);
    assert_eq!(budgeted.len(), metrics.series_exported.get() as usize);
    for line in plain.lines().filter(|l| !l.starts_with('#')) {
        let (series, _) = line.rsplit_once(' ').unwrap();
        assert!(budgeted.contains_key(series), "{series} missing");
    }
}

#[test]
fn the_busiest_keep_their_detail_and_no_count_is_lost() {
    let metrics = Metrics::new().unwrap();
    metrics.set_series_budget(160);
    for i in 0..12 {
        grow(&metrics, &format!("quiet{i:02}"), 8, 1);
    }
    grow(&metrics, "busy", 8, 1000);
    let s = scrape(&metrics);
    assert!(s.len() <= 160, "{} series: {s:#?}", s.len());
    assert_eq!(s.len(), metrics.series_exported.get() as usize);
    assert!(
        has(&s, r#"binary="busy",container="",elem_type="main.point""#),
        "{s:#?}"
    );
    assert!(has(&s, r#"binary="busy",container="",file="main.go""#));
    assert!(has(&s, r#"binary="other",container="other""#), "{s:#?}");
    let sites = 12.0 * 8.0 + 8.0 * 1000.0;
    assert_eq!(sum(&s, "mapwatch_site_grow_total{"), sites);
    assert_eq!(sum(&s, "mapwatch_slice_grow_total{"), sites);
    assert_eq!(sum(&s, "mapwatch_slice_grow_new_cap_count{"), 13.0);
    assert_eq!(sum(&s, "mapwatch_slice_grow_new_cap_sum{"), 12.0 + 1000.0);
    // Gauges of aggregated workloads cannot be added up: left out.
    assert!(!has(
        &s,
        r#"mapwatch_stw_growth_correlation{binary="other""#
    ));
    let tiers = |tier: &str| s[&format!("mapwatch_series_budget_workloads{{tier=\"{tier}\"}}")];
    assert_eq!(
        tiers("detail") + tiers("folded") + tiers("aggregated"),
        13.0
    );
    assert!(tiers("aggregated") > 0.0);
}

#[test]
fn counters_never_go_down_when_workloads_change_places() {
    let metrics = Metrics::new().unwrap();
    metrics.set_series_budget(140);
    for i in 0..6 {
        grow(&metrics, &format!("w{i}"), 10, 1);
    }
    let mut previous = scrape(&metrics);
    let mut total = 6.0 * 10.0;
    // Each round another workload becomes the busiest, 5 times as busy as the last
    // (more than the hysteresis asks for).
    for round in 0..12 {
        let n = 100 * 5u64.pow(round);
        grow(&metrics, &format!("w{}", round % 6), 10, n);
        total += 10.0 * n as f64;
        let now = scrape(&metrics);
        assert!(now.len() <= 140, "round {round}: {} series", now.len());
        assert_eq!(
            sum(&now, "mapwatch_site_grow_total{"),
            total,
            "round {round}"
        );
        for (series, value) in &now {
            if series.contains("_total{")
                && let Some(before) = previous.get(series)
            {
                assert!(
                    value >= before,
                    "round {round}: {series} went from {before} to {value}"
                );
            }
        }
        let busiest = format!(r#"binary="w{}",container="",file="main.go""#, round % 6);
        assert!(
            has(&now, &busiest),
            "round {round}: the busiest lost its detail"
        );
        previous = now;
    }
}

#[test]
fn an_aggregated_workload_that_expires_leaves_its_counts_in_the_aggregate() {
    let metrics = Metrics::new().unwrap();
    metrics.set_series_budget(110);
    for i in 0..8 {
        grow(&metrics, &format!("w{i}"), 10, 1);
    }
    grow(&metrics, "busy", 10, 50);
    let before = scrape(&metrics);
    let total = sum(&before, "mapwatch_site_grow_total{");
    let aggregated = before.keys().any(|k| k.contains(r#"binary="other""#));
    assert!(aggregated, "{before:#?}");
    let gone = (0..8)
        .map(|i| format!("w{i}"))
        .find(|w| {
            !before
                .keys()
                .any(|k| k.contains(&format!("binary=\"{w}\"")))
        })
        .expect("an aggregated workload");
    metrics.forget_workload(&labels(&gone));
    let after = scrape(&metrics);
    assert_eq!(sum(&after, "mapwatch_site_grow_total{"), total);
}
