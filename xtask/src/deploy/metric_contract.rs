//! The metric contract between the registry and what reads it: every `mapwatch_` name in
//! the dashboards (deploy/grafana) and the alert rules is a registered metric, together
//! the dashboards show every registered metric (but [`NOT_ON_DASHBOARDS`]), and every
//! panel query is valid PromQL (promtool).
use std::{collections::BTreeSet, path::Path};

use anyhow::{Context as _, bail};

use super::dashboards;
use crate::util::{Cmd, workspace_root};

/// The registry's metrics the dashboards need not show: `exact_checks_total` exists only
/// under `mapwatch attach --exact`; `events_incomplete_total` has series only after a
/// failed kernel read, `events_orphaned_total` only after a record outlived its
/// process's probes — a panel over any of them would stay empty in normal operation
/// (and the end-to-end test requires every panel query to return data).
const NOT_ON_DASHBOARDS: &[&str] = &[
    "exact_checks_total",
    "events_incomplete_total",
    "events_orphaned_total",
];

/// Contract metrics (../shared/DESIGN.md, "Metrics") that mapwatch/src/metrics does not
/// register yet. Dashboards already show them; remove an entry when the registry gains
/// it (the check fails while an entry is both here and registered).
const PLANNED_METRICS: &[&str] = &[];

/// Metric names (without the `mapwatch_` prefix) registered in the metrics module's
/// source: the string literal that opens each registration call. Read from the source,
/// not the running daemon, so the check needs neither root nor a build.
pub fn registry_metric_names(source: &str) -> BTreeSet<String> {
    const CALLS: &[&str] = &[
        "counter(",
        "histogram(",
        "HistogramOpts::new(",
        "Opts::new(",
        "IntGauge::new(",
        "Gauge::new(",
        "IntCounter::new(",
        "Counter::new(",
    ];
    let mut names = BTreeSet::new();
    for call in CALLS {
        for (at, _) in source.match_indices(call) {
            let preceded_by_ident = source[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            if preceded_by_ident {
                continue;
            }
            let rest = source[at + call.len()..].trim_start();
            let Some(literal) = rest.strip_prefix('"') else {
                continue;
            };
            let Some(end) = literal.find('"') else {
                continue;
            };
            let name = &literal[..end];
            let is_metric_name = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if is_metric_name {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// (every known metric, the metrics the dashboards must show together).
fn contract_metrics() -> anyhow::Result<(BTreeSet<String>, BTreeSet<String>)> {
    let metrics_dir = workspace_root().join("mapwatch/src/metrics");
    let mut registered = BTreeSet::new();
    for entry in std::fs::read_dir(&metrics_dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            registered.extend(registry_metric_names(&std::fs::read_to_string(&path)?));
        }
    }
    // Far fewer than the contract's ~25 means the registration code changed shape and
    // registry_metric_names needs to follow.
    if registered.len() < 15 {
        bail!(
            "found only {} metric registrations in {} ({registered:?}): update registry_metric_names in xtask/src/deploy/metric_contract.rs",
            registered.len(),
            metrics_dir.display()
        );
    }
    let stale: Vec<&&str> = PLANNED_METRICS
        .iter()
        .filter(|m| registered.contains(**m))
        .collect();
    if !stale.is_empty() {
        bail!("{stale:?} are registered now: remove them from PLANNED_METRICS in xtask/src/deploy/metric_contract.rs");
    }
    let mut known = registered.clone();
    known.extend(PLANNED_METRICS.iter().map(|m| m.to_string()));
    let required = known
        .iter()
        .filter(|m| !NOT_ON_DASHBOARDS.contains(&m.as_str()))
        .cloned()
        .collect();
    Ok((known, required))
}

/// Problems of the dashboards and the alert rules against the metrics contract: panel
/// structure, names that are no mapwatch metric (typos), metrics no panel shows.
fn dashboard_and_rule_problems(
    deploy: &Path,
    known: &BTreeSet<String>,
    required: &BTreeSet<String>,
) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut shown = BTreeSet::new();
    for path in dashboards::dashboard_files(&deploy.join("grafana"))? {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let dashboard = dashboards::read_dashboard(&path)?;
        problems.extend(
            dashboards::structure_problems(&dashboard)
                .into_iter()
                .map(|p| format!("{name}: {p}")),
        );
        for (panel, ref_id, expr) in dashboards::panel_expressions(&dashboard) {
            for series in dashboards::mapwatch_identifiers(&expr) {
                match dashboards::metric_of_series(&series, known) {
                    Some(metric) => {
                        shown.insert(metric.clone());
                    }
                    None => problems.push(format!(
                        "{name}, panel {panel:?} query {ref_id}: {series} is no mapwatch metric"
                    )),
                }
            }
        }
    }
    for missing in required.difference(&shown) {
        problems.push(format!("no dashboard panel shows mapwatch_{missing}"));
    }
    let rules = std::fs::read_to_string(deploy.join("prometheus/rules.yml"))?;
    for series in dashboards::mapwatch_identifiers(&rules) {
        if dashboards::metric_of_series(&series, known).is_none() {
            problems.push(format!("rules.yml: {series} is no mapwatch metric"));
        }
    }
    Ok(problems)
}

pub fn check_dashboards_and_rules(deploy: &Path, scratch: &Path) -> anyhow::Result<()> {
    let (known, required) = contract_metrics()?;
    let problems = dashboard_and_rule_problems(deploy, &known, &required)?;
    if !problems.is_empty() {
        bail!("dashboard problems:\n  {}", problems.join("\n  "));
    }
    // promtool parses PromQL only inside rule files: each panel query, with example
    // variable values, becomes a recording rule.
    let queries = dashboards::dashboard_queries(
        &deploy.join("grafana"),
        &dashboards::example_variable_values(),
    )?;
    let mut rules = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    for (i, query) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&query.expr)?
        ));
    }
    let file = scratch.join("dashboard-queries.rules.yml");
    std::fs::write(&file, rules)?;
    Cmd::new("promtool")
        .args(["check", "rules"])
        .args([&file])
        .run()
        .context("a dashboard query is not valid PromQL (see promtool's message above)")?;
    println!(
        "    {} queries valid; panels show all {} required metrics",
        queries.len(),
        required.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::deploy_dir;

    #[test]
    fn registry_names_are_the_literals_opening_registration_calls() {
        let source = r#"
            let a = counter(
                "slice_grow_total",
                "help",
            )?;
            let b = histogram("map_size_at_grow", "Entries (help with \"quotes\")", buckets)?;
            let c = HistogramOpts::new("stw_pause_seconds", "h");
            let d = IntGauge::new("attached_processes", "h")?;
            let e = Opts::new("build_info", "h");
            let f = my_counter("not_this", "h");
            let g = counter(name, "computed");
        "#;
        assert_eq!(
            registry_metric_names(source)
                .into_iter()
                .collect::<Vec<_>>(),
            [
                "attached_processes",
                "build_info",
                "map_size_at_grow",
                "slice_grow_total",
                "stw_pause_seconds"
            ]
        );
    }

    #[test]
    fn the_dashboards_and_rules_satisfy_the_metric_contract() {
        let (known, required) = contract_metrics().unwrap();
        assert!(known.contains("map_buckets_log2") && required.contains("stw_growth_correlation"));
        let problems = dashboard_and_rule_problems(&deploy_dir(), &known, &required).unwrap();
        assert_eq!(problems, Vec::<String>::new());
        // The check sees a metric no panel shows.
        let mut more = required.clone();
        more.insert("made_up_total".into());
        let mut known_more = known.clone();
        known_more.insert("made_up_total".into());
        let problems = dashboard_and_rule_problems(&deploy_dir(), &known_more, &more).unwrap();
        assert_eq!(
            problems,
            ["no dashboard panel shows mapwatch_made_up_total"]
        );
    }

    #[test]
    fn every_dashboard_query_substitutes_with_the_example_values() {
        let queries = dashboards::dashboard_queries(
            &deploy_dir().join("grafana"),
            &dashboards::example_variable_values(),
        )
        .unwrap();
        assert!(queries.len() > 20, "{}", queries.len());
        assert!(queries.iter().all(|q| !q.expr.contains('$')));
    }
}
