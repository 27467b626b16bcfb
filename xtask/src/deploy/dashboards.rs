//! The Grafana dashboards in deploy/grafana, checked without a Grafana server: their
//! structure (every panel has a datasource, a query and a unit; every template variable
//! a query uses is defined), the metrics their queries name, and the list of their
//! PromQL expressions with template variables substituted — which the end-to-end test
//! sends to a real Prometheus.
//!
//! Depends on std, serde_json and anyhow only, so a test crate can include this file
//! with `#[path = "../../xtask/src/deploy/dashboards.rs"] mod dashboards;`.
#![allow(dead_code)] // when included by a test crate, which uses part of it

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// Variables Grafana defines itself; queries may use them without a template variable.
pub const GRAFANA_BUILTIN_VARIABLES: &[&str] = &[
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
];

/// The name of the data source template variable every panel and query must use.
pub const DATASOURCE_VARIABLE: &str = "datasource";

/// One PromQL expression of one dashboard panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelQuery {
    /// The dashboard's file name, e.g. `mapwatch-workload.json`.
    pub dashboard: String,
    pub panel: String,
    pub ref_id: String,
    /// The expression as Grafana would send it (variables substituted).
    pub expr: String,
}

/// Values for the dashboards' template variables that make every query well-formed.
pub fn example_variable_values() -> BTreeMap<String, String> {
    [
        ("datasource", "prometheus"),
        ("namespace", ".*"),
        ("pod", ".*"),
        ("binary", ".*"),
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__interval_ms", "15000"),
        ("__range", "1h"),
        ("__range_s", "3600"),
        ("__range_ms", "3600000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The dashboards: every `*.json` in `dir`, sorted by name.
pub fn dashboard_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no dashboards (*.json) in {}", dir.display());
    }
    Ok(files)
}

pub fn read_dashboard(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Every PromQL expression of every panel of every dashboard in `dir`, with template
/// variables replaced by `values` (name without `$` → value; include Grafana's
/// built-ins such as `__rate_interval` and `__range`). Multi-value variables are
/// matched with `=~`, so a regex such as `.*` or `slicegrow|mapgrow` is a valid value.
/// Fails if a query uses a variable `values` lacks.
pub fn dashboard_queries(
    dir: &Path,
    values: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<PanelQuery>> {
    let mut queries = Vec::new();
    for path in dashboard_files(dir)? {
        let dashboard = read_dashboard(&path)?;
        let file = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (panel, ref_id, raw) in panel_expressions(&dashboard) {
            let expr = substitute_variables(&raw, values)
                .with_context(|| format!("{file}, panel {panel:?} query {ref_id}"))?;
            queries.push(PanelQuery {
                dashboard: file.clone(),
                panel,
                ref_id,
                expr,
            });
        }
    }
    Ok(queries)
}

/// Panels, including those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Some(list) = dashboard.get("panels") {
        walk(list, &mut out);
    }
    out
}

/// Rows and text panels only arrange or explain; they query nothing.
fn is_layout_panel(panel: &Value) -> bool {
    matches!(
        panel.get("type").and_then(Value::as_str),
        Some("row" | "text")
    )
}

fn panel_title(panel: &Value) -> String {
    panel
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or("(untitled)")
        .to_string()
}

/// (panel title, refId, raw expression) of every query target.
pub fn panel_expressions(dashboard: &Value) -> Vec<(String, String, String)> {
    panels(dashboard)
        .into_iter()
        .filter(|panel| !is_layout_panel(panel))
        .flat_map(|panel| {
            let title = panel_title(panel);
            panel
                .get("targets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(move |target| {
                    (
                        title.clone(),
                        target
                            .get("refId")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        target
                            .get("expr")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                    )
                })
        })
        .collect()
}

/// A template variable reference in a query: where it is and its name.
struct VariableRef {
    start: usize,
    end: usize,
    name: String,
}

/// Grafana's three spellings: `$name`, `${name}` / `${name:format}`, `[[name]]` /
/// `[[name:format]]`. `$1`-style regex back-references (label_replace) are not
/// variables.
fn variable_refs(text: &str) -> Vec<VariableRef> {
    let bytes = text.as_bytes();
    let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut refs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let (name_start, name_end, end) = if bytes[i] == b'$' && bytes.get(i + 1) == Some(&b'{') {
            let Some(close) = text[i..].find('}') else {
                break;
            };
            let inner = &text[i + 2..i + close];
            let name_len = inner.find(':').unwrap_or(inner.len());
            (i + 2, i + 2 + name_len, i + close + 1)
        } else if bytes[i] == b'$' {
            let len = bytes[i + 1..].iter().take_while(|&&b| is_name(b)).count();
            (i + 1, i + 1 + len, i + 1 + len)
        } else if text[i..].starts_with("[[") {
            let Some(close) = text[i..].find("]]") else {
                break;
            };
            let inner = &text[i + 2..i + close];
            let name_len = inner.find(':').unwrap_or(inner.len());
            (i + 2, i + 2 + name_len, i + close + 2)
        } else {
            i += 1;
            continue;
        };
        let name = &text[name_start..name_end];
        if !name.is_empty() && !name.bytes().all(|b| b.is_ascii_digit()) {
            refs.push(VariableRef {
                start: i,
                end,
                name: name.to_string(),
            });
        }
        i = end.max(i + 1);
    }
    refs
}

/// Names of the template variables `text` uses.
pub fn variables_used(text: &str) -> BTreeSet<String> {
    variable_refs(text).into_iter().map(|r| r.name).collect()
}

/// `text` with every variable reference replaced by its value.
pub fn substitute_variables(
    text: &str,
    values: &BTreeMap<String, String>,
) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut missing = BTreeSet::new();
    for var in variable_refs(text) {
        out.push_str(&text[copied..var.start]);
        match values.get(&var.name) {
            Some(value) => out.push_str(value),
            None => {
                missing.insert(var.name);
            }
        }
        copied = var.end;
    }
    out.push_str(&text[copied..]);
    if !missing.is_empty() {
        bail!("no value given for variable(s) {missing:?} in {text:?}");
    }
    Ok(out)
}

/// Identifiers starting with `mapwatch_` in a PromQL expression (series names, which
/// for histograms end in `_bucket`, `_sum` or `_count`).
pub fn mapwatch_identifiers(expr: &str) -> BTreeSet<String> {
    let bytes = expr.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(found) = expr[i..].find("mapwatch_") {
        let start = i + found;
        let end = start + bytes[start..].iter().take_while(|&&b| is_ident(b)).count();
        if start == 0 || !is_ident(bytes[start - 1]) {
            out.insert(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The metric (name without the `mapwatch_` prefix) a series identifier belongs to, if
/// it is one of `known`: `mapwatch_map_size_at_grow_bucket` → `map_size_at_grow`.
pub fn metric_of_series<'a>(series: &str, known: &'a BTreeSet<String>) -> Option<&'a String> {
    let name = series.strip_prefix("mapwatch_")?;
    if let Some(metric) = known.get(name) {
        return Some(metric);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix).and_then(|base| known.get(base)))
}

/// Structural problems of one dashboard; empty when it is fine. A panel is fine when
/// it uses the `${datasource}` variable (the panel and each query), has at least one
/// query with an expression, and sets a unit; a query is fine when every variable it
/// uses is defined and it does not hide emptiness (`or vector(...)`, `absent(...)`).
pub fn structure_problems(dashboard: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for key in ["uid", "title"] {
        if dashboard
            .get(key)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            problems.push(format!("dashboard has no {key}"));
        }
    }
    let variables: Vec<&Value> = dashboard
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .map(|list| list.iter().collect())
        .unwrap_or_default();
    let mut defined: BTreeSet<String> = GRAFANA_BUILTIN_VARIABLES
        .iter()
        .map(|s| s.to_string())
        .collect();
    for var in &variables {
        match var.get("name").and_then(Value::as_str) {
            Some(name) => {
                defined.insert(name.to_string());
            }
            None => problems.push("a template variable has no name".into()),
        }
    }
    match variables
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(DATASOURCE_VARIABLE))
    {
        Some(ds)
            if ds.get("type").and_then(Value::as_str) == Some("datasource")
                && ds.get("query").and_then(Value::as_str) == Some("prometheus") => {}
        _ => problems.push(format!(
            "no template variable `{DATASOURCE_VARIABLE}` of type datasource for prometheus"
        )),
    }
    for var in &variables {
        let name = var.get("name").and_then(Value::as_str).unwrap_or("?");
        let query = match var.get("query") {
            Some(Value::String(q)) => q.clone(),
            Some(Value::Object(q)) => q
                .get("query")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            _ => String::new(),
        };
        for used in variables_used(&query) {
            if !defined.contains(&used) {
                problems.push(format!(
                    "variable `{name}` uses undefined variable `${used}`"
                ));
            }
        }
    }
    let mut ids = BTreeSet::new();
    for panel in panels(dashboard) {
        let title = panel_title(panel);
        match panel.get("id").and_then(Value::as_u64) {
            Some(id) if !ids.insert(id) => problems.push(format!("panel {title:?}: id {id} twice")),
            None => problems.push(format!("panel {title:?}: no id")),
            _ => {}
        }
        if is_layout_panel(panel) {
            continue;
        }
        if !uses_datasource_variable(panel.get("datasource")) {
            problems.push(format!(
                "panel {title:?}: datasource is not ${{{DATASOURCE_VARIABLE}}}"
            ));
        }
        if panel
            .pointer("/fieldConfig/defaults/unit")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            problems.push(format!(
                "panel {title:?}: no unit (fieldConfig.defaults.unit)"
            ));
        }
        let targets = panel
            .get("targets")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?}: no query"));
        }
        for target in targets {
            let ref_id = target.get("refId").and_then(Value::as_str).unwrap_or("?");
            let expr = target.get("expr").and_then(Value::as_str).unwrap_or("");
            if expr.trim().is_empty() {
                problems.push(format!("panel {title:?} query {ref_id}: empty expr"));
            }
            if !uses_datasource_variable(target.get("datasource")) {
                problems.push(format!(
                    "panel {title:?} query {ref_id}: datasource is not ${{{DATASOURCE_VARIABLE}}}"
                ));
            }
            for used in variables_used(expr) {
                if !defined.contains(&used) {
                    problems.push(format!(
                        "panel {title:?} query {ref_id}: undefined variable `${used}`"
                    ));
                }
            }
            if let Some(hider) = hides_emptiness(expr) {
                problems.push(format!(
                    "panel {title:?} query {ref_id}: `{hider}` hides missing data"
                ));
            }
        }
    }
    problems
}

fn uses_datasource_variable(datasource: Option<&Value>) -> bool {
    let wanted = [
        format!("${{{DATASOURCE_VARIABLE}}}"),
        format!("${DATASOURCE_VARIABLE}"),
    ];
    match datasource {
        Some(Value::String(s)) => wanted.contains(s),
        Some(Value::Object(o)) => o
            .get("uid")
            .and_then(Value::as_str)
            .is_some_and(|uid| wanted.iter().any(|w| w == uid)),
        _ => false,
    }
}

/// `or vector(...)` and `absent(...)` turn "no data" into a number, which would let an
/// expression pass the end-to-end check without the daemon exporting anything.
fn hides_emptiness(expr: &str) -> Option<&'static str> {
    let compact: String = expr.split_whitespace().collect::<Vec<_>>().join(" ");
    let compact = compact.replace(" (", "(");
    if compact.contains("or vector(") {
        Some("or vector(...)")
    } else if compact.contains("absent(") || compact.contains("absent_over_time(") {
        Some("absent(...)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn substitutes_all_three_spellings_and_leaves_backreferences() {
        let got = substitute_variables(
            r#"rate(x{a=~"$pod", b=~"${binary:regex}", c="[[namespace]]"}[$__rate_interval]) + label_replace(y, "d", "$1", "e", "(.*)")"#,
            &values(&[
                ("pod", "p.*"),
                ("binary", "slicegrow"),
                ("namespace", ""),
                ("__rate_interval", "1m"),
            ]),
        )
        .unwrap();
        assert_eq!(
            got,
            r#"rate(x{a=~"p.*", b=~"slicegrow", c=""}[1m]) + label_replace(y, "d", "$1", "e", "(.*)")"#
        );
    }

    #[test]
    fn substitution_names_missing_variables() {
        let err = substitute_variables("up{a=\"$a\", b=\"$b\"}", &values(&[("a", "1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"b\""), "{err}");
        assert!(!err.contains("\"a\""), "{err}");
    }

    #[test]
    fn identifiers_map_histogram_series_to_their_metric() {
        let ids = mapwatch_identifiers(
            "sum(rate(mapwatch_map_size_at_grow_bucket[1m])) / x_mapwatch_no + mapwatch_gc_cycles_total",
        );
        assert_eq!(
            ids.into_iter().collect::<Vec<_>>(),
            [
                "mapwatch_gc_cycles_total",
                "mapwatch_map_size_at_grow_bucket"
            ]
        );
        let known: BTreeSet<String> = ["map_size_at_grow", "gc_cycles_total", "slice_grow_total"]
            .map(String::from)
            .into();
        assert_eq!(
            metric_of_series("mapwatch_map_size_at_grow_bucket", &known).map(String::as_str),
            Some("map_size_at_grow")
        );
        assert_eq!(
            metric_of_series("mapwatch_slice_grow_total", &known).map(String::as_str),
            Some("slice_grow_total")
        );
        assert_eq!(metric_of_series("mapwatch_slice_grow", &known), None);
    }

    fn good_dashboard() -> Value {
        json!({
            "uid": "u", "title": "t",
            "templating": {"list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"},
                {"name": "pod", "type": "query", "query": {"query": "label_values(mapwatch_gc_cycles_total, pod)"}}
            ]},
            "panels": [
                {"id": 1, "type": "row", "title": "row", "panels": [
                    {"id": 2, "type": "timeseries", "title": "nested",
                     "datasource": {"type": "prometheus", "uid": "${datasource}"},
                     "fieldConfig": {"defaults": {"unit": "ops"}},
                     "targets": [{"refId": "A", "datasource": {"uid": "${datasource}"},
                                  "expr": "rate(mapwatch_gc_cycles_total{pod=~\"$pod\"}[$__rate_interval])"}]}
                ]}
            ]
        })
    }

    #[test]
    fn a_good_dashboard_has_no_problems_and_lists_nested_queries() {
        let dashboard = good_dashboard();
        assert_eq!(structure_problems(&dashboard), Vec::<String>::new());
        assert_eq!(
            panel_expressions(&dashboard),
            vec![(
                "nested".to_string(),
                "A".to_string(),
                "rate(mapwatch_gc_cycles_total{pod=~\"$pod\"}[$__rate_interval])".to_string()
            )]
        );
    }

    #[test]
    fn each_structural_flaw_is_reported() {
        type Breakage = (&'static str, fn(&mut Value), &'static str);
        let cases: [Breakage; 6] = [
            (
                "unit",
                |d| d["panels"][0]["panels"][0]["fieldConfig"] = json!({}),
                "no unit",
            ),
            (
                "datasource",
                |d| d["panels"][0]["panels"][0]["datasource"] = json!("Prometheus"),
                "datasource is not",
            ),
            (
                "query",
                |d| d["panels"][0]["panels"][0]["targets"] = json!([]),
                "no query",
            ),
            (
                "variable",
                |d| {
                    d["panels"][0]["panels"][0]["targets"][0]["expr"] =
                        json!("up{binary=~\"${binary}\"}")
                },
                "undefined variable `$binary`",
            ),
            (
                "vector",
                |d| {
                    d["panels"][0]["panels"][0]["targets"][0]["expr"] =
                        json!("sum(up) or\n vector (0)")
                },
                "or vector",
            ),
            (
                "absent",
                |d| d["panels"][0]["panels"][0]["targets"][0]["expr"] = json!("absent(up)"),
                "absent",
            ),
        ];
        for (name, break_it, expected) in cases {
            let mut dashboard = good_dashboard();
            break_it(&mut dashboard);
            let problems = structure_problems(&dashboard);
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{name}: {problems:?}"
            );
        }
    }
}
