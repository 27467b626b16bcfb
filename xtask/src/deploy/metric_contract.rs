//! The metric contract between the registry and what reads it: every `mapwatch_` name in
//! the dashboards (deploy/grafana) and the alert rules is a registered metric, together
//! the dashboards show every registered metric (but [`NOT_ON_DASHBOARDS`]), and every
//! panel query is valid PromQL (promtool).
use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::dashboards;
use crate::util::{Cmd, path_with_cargo_bin, workspace_root};

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

/// Metrics the dashboards already show that the registry does not register yet: remove
/// an entry when the registry gains it (the check fails while an entry is both here and
/// registered).
const PLANNED_METRICS: &[&str] = &[];

/// Names (without `mapwatch_`) of the metric families the registry registers:
/// `mapwatch::metrics::families()` as the mapwatch crate's `metric_families` example
/// prints it. Not a dependency of xtask: building the mapwatch library builds the BPF
/// object, which needs the bpf-linker that `cargo xtask setup` installs.
fn registered_metrics() -> anyhow::Result<BTreeSet<String>> {
    let args = [
        "run",
        "--quiet",
        "--package",
        "mapwatch",
        "--example",
        "metric_families",
    ];
    let output = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(args)
        .current_dir(workspace_root())
        .env("PATH", path_with_cargo_bin())
        // Compiler errors stay on the terminal; stdout is the JSON.
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !output.status.success() {
        bail!("`cargo {}` failed: {}", args.join(" "), output.status);
    }
    parse_families(&String::from_utf8(output.stdout)?)
}

/// The metric names in `metric_families`'s JSON (an array of `{"name": …}` objects).
fn parse_families(json: &str) -> anyhow::Result<BTreeSet<String>> {
    let families: Vec<Value> =
        serde_json::from_str(json).context("metric_families did not print a JSON array")?;
    let mut names = BTreeSet::new();
    for family in &families {
        let name = family
            .get("name")
            .and_then(Value::as_str)
            .with_context(|| format!("a metric family without a name: {family}"))?;
        let name = name
            .strip_prefix("mapwatch_")
            .with_context(|| format!("{name} does not start with mapwatch_"))?;
        names.insert(name.to_string());
    }
    if names.is_empty() {
        bail!("metric_families listed no metric");
    }
    Ok(names)
}

/// (every known metric, the metrics the dashboards must show together).
fn contract_metrics(
    registered: BTreeSet<String>,
) -> anyhow::Result<(BTreeSet<String>, BTreeSet<String>)> {
    let stale: Vec<&&str> = PLANNED_METRICS
        .iter()
        .filter(|m| registered.contains(**m))
        .collect();
    if !stale.is_empty() {
        bail!(
            "{stale:?} are registered now: remove them from PLANNED_METRICS in xtask/src/deploy/metric_contract.rs"
        );
    }
    let mut known = registered;
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
    let (known, required) = contract_metrics(registered_metrics()?)?;
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

    /// The registry's names as `registered_metrics` gets them, without running cargo
    /// inside a test: the same serialisation the example prints.
    fn registry() -> BTreeSet<String> {
        let families = mapwatch::metrics::families().unwrap();
        parse_families(&serde_json::to_string_pretty(&families).unwrap()).unwrap()
    }

    #[test]
    fn registered_names_come_without_the_prefix() {
        let names = registry();
        assert!(names.contains("slice_grow_total") && names.contains("stw_pause_seconds"));
        assert!(names.iter().all(|n| !n.starts_with("mapwatch_")));
        let json = r#"[{"name": "mapwatch_a_total", "type": "counter"}, {"name": "mapwatch_b"}]"#;
        assert_eq!(
            parse_families(json)
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            ["a_total", "b"]
        );
        assert!(parse_families("[]").is_err());
        assert!(parse_families(r#"[{"name": "other_total"}]"#).is_err());
        assert!(parse_families(r#"[{"type": "gauge"}]"#).is_err());
        assert!(parse_families("cargo says hello").is_err());
    }

    #[test]
    fn the_dashboards_and_rules_satisfy_the_metric_contract() {
        let (known, required) = contract_metrics(registry()).unwrap();
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
