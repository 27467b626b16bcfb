//! docs/metrics.md against the registry (`mapwatch::metrics::families()`): each
//! registered family has one row in the page's table, with its type and labels, and one
//! section with a PromQL example that queries it; the page names no `mapwatch_` metric
//! the registry lacks; the table calls estimated exactly the families whose HELP says
//! so; and the files the page points to are in this repository. Pure: no root.
use std::{
    collections::BTreeSet,
    path::{Component, Path, PathBuf},
};

use mapwatch::metrics::{ESTIMATED_HELP, Family, MetricKind, WORKLOAD_LABELS, families};

const DOC: &str = "docs/metrics.md";

/// Where the table's labels cell names [`WORKLOAD_LABELS`] at once.
const WORKLOAD: &str = "*workload*";

/// The series of a histogram besides its base name, which PromQL examples query.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn doc() -> String {
    std::fs::read_to_string(repo().join(DOC)).expect("docs/metrics.md")
}

/// One row of the table: `| `name` | type | labels | unit | estimated |`.
struct Row {
    name: String,
    kind: String,
    labels: Result<BTreeSet<String>, String>,
    estimated: String,
}

fn table_rows(doc: &str) -> Vec<Row> {
    doc.lines()
        .filter(|line| line.starts_with("| `mapwatch_"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let cell = |i: usize| cells.get(i).copied().unwrap_or_default();
            Row {
                name: cell(0).trim_matches('`').to_string(),
                kind: cell(1).to_string(),
                labels: parse_labels(cell(2)),
                estimated: cell(4).to_string(),
            }
        })
        .collect()
}

/// `*workload*, `elem_type``, `` `probe` ``, or `—` for none.
fn parse_labels(cell: &str) -> Result<BTreeSet<String>, String> {
    if cell == "—" {
        return Ok(BTreeSet::new());
    }
    let mut labels = BTreeSet::new();
    for part in cell.split(',').map(str::trim) {
        if part == WORKLOAD {
            labels.extend(WORKLOAD_LABELS.iter().map(|l| l.to_string()));
        } else if let Some(label) = part.strip_prefix('`').and_then(|p| p.strip_suffix('`')) {
            labels.insert(label.to_string());
        } else {
            return Err(format!(
                "cannot read label {part:?} in {cell:?} (write {WORKLOAD}, `label` or —)"
            ));
        }
    }
    Ok(labels)
}

/// Each `### `name`` section: its metric name and the text of its ```promql blocks.
fn sections(doc: &str) -> Vec<(String, String)> {
    let mut sections: Vec<(String, String)> = Vec::new();
    let (mut in_code, mut in_promql, mut in_section) = (false, false, false);
    for line in doc.lines() {
        if line.starts_with("```") {
            in_promql = !in_code && line.trim() == "```promql";
            in_code = !in_code;
            continue;
        }
        if in_code {
            if in_section && in_promql {
                let (_, promql) = sections.last_mut().expect("in a section");
                promql.push_str(line);
                promql.push('\n');
            }
        } else if let Some(heading) = line.strip_prefix("### ") {
            in_section = true;
            sections.push((heading.trim().trim_matches('`').to_string(), String::new()));
        } else if line.starts_with('#') {
            in_section = false;
        }
    }
    sections
}

/// Every `mapwatch_…` identifier in `text` (as PromQL would read it).
fn metric_identifiers(text: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("mapwatch_") {
        if text[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let len = text[at..].find(|c| !is_ident(c)).unwrap_or(text.len() - at);
        found.insert(text[at..at + len].to_string());
    }
    found
}

/// The family a series name belongs to: its own, or a histogram's with a suffix.
fn family_of<'a>(series: &str, families: &'a [Family]) -> Option<&'a Family> {
    families.iter().find(|f| {
        f.name == series
            || (f.kind == MetricKind::Histogram
                && HISTOGRAM_SUFFIXES
                    .iter()
                    .any(|suffix| series.strip_suffix(suffix) == Some(f.name.as_str())))
    })
}

/// Every way `doc` disagrees with `families`; empty when it agrees.
fn problems(doc: &str, families: &[Family]) -> Vec<String> {
    let mut problems = Vec::new();
    let rows = table_rows(doc);
    let sections = sections(doc);
    for family in families {
        let name = &family.name;
        let documented: Vec<&Row> = rows.iter().filter(|r| &r.name == name).collect();
        let [row] = documented.as_slice() else {
            problems.push(format!(
                "{name}: {} rows in the table, want 1",
                documented.len()
            ));
            continue;
        };
        if row.kind != family.kind.as_str() {
            problems.push(format!(
                "{name}: documented as {:?}, registered as {}",
                row.kind,
                family.kind.as_str()
            ));
        }
        let registered: BTreeSet<String> = family.labels.iter().cloned().collect();
        match &row.labels {
            Ok(labels) if *labels != registered => problems.push(format!(
                "{name}: documented labels {labels:?}, registered {registered:?}"
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("{name}: {e}")),
        }
        let marked = family.help.contains(ESTIMATED_HELP);
        if marked != row.estimated.starts_with("yes") {
            problems.push(format!(
                "{name}: estimated column {:?}, but its HELP {} the estimate mark",
                row.estimated,
                if marked { "has" } else { "lacks" }
            ));
        }
        let own: Vec<&(String, String)> = sections.iter().filter(|(s, _)| s == name).collect();
        match own.as_slice() {
            [(_, promql)] => {
                let queried = metric_identifiers(promql)
                    .iter()
                    .any(|series| family_of(series, families).is_some_and(|f| &f.name == name));
                if !queried {
                    problems.push(format!(
                        "{name}: no PromQL example in its section queries it"
                    ));
                }
            }
            _ => problems.push(format!("{name}: {} `### ` sections, want 1", own.len())),
        }
    }
    for row in &rows {
        if !families.iter().any(|f| f.name == row.name) {
            problems.push(format!(
                "the table documents {}, which is not registered",
                row.name
            ));
        }
    }
    for (name, _) in &sections {
        if name.starts_with("mapwatch_") && !families.iter().any(|f| &f.name == name) {
            problems.push(format!(
                "a section documents {name}, which is not registered"
            ));
        }
    }
    for series in metric_identifiers(doc) {
        if family_of(&series, families).is_none() {
            problems.push(format!(
                "the page names {series}, which is no registered metric"
            ));
        }
    }
    problems
}

#[test]
fn the_page_matches_the_registry() {
    let families = families().unwrap();
    let problems = problems(&doc(), &families);
    assert!(
        problems.is_empty(),
        "{DOC} disagrees with mapwatch::metrics::families():\n  {}",
        problems.join("\n  ")
    );
}

/// The checks above fail on each kind of drift: the page edited against the registry,
/// and the registry against the page.
#[test]
fn each_kind_of_drift_is_caught() {
    let families = families().unwrap();
    let doc = doc();
    let edit = |from: &str, to: &str| {
        assert!(doc.contains(from), "{DOC} no longer contains {from:?}");
        doc.replacen(from, to, 1)
    };
    let row = |name: &str| {
        doc.lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("no row for {name}"))
            .to_string()
    };
    let cases = [
        (
            edit(&(row("mapwatch_map_make_hint") + "\n"), ""),
            "mapwatch_map_make_hint: 0 rows",
        ),
        (
            edit(
                "| `mapwatch_attached_processes` | gauge |",
                "| `mapwatch_attached_processes` | counter |",
            ),
            "mapwatch_attached_processes: documented as \"counter\"",
        ),
        (
            edit("| *workload*, `elem_type` |", "| *workload* |"),
            "mapwatch_slice_grow_total: documented labels",
        ),
        (
            edit("| `check`, `result` |", "| `check`, `outcome` |"),
            "mapwatch_exact_checks_total: documented labels",
        ),
        (
            edit("| seconds | yes: `stw` |", "| seconds | no |"),
            "mapwatch_stw_pause_seconds: estimated column",
        ),
        (
            edit("### `mapwatch_build_info`", "### build info"),
            "mapwatch_build_info: 0 `### ` sections",
        ),
        (
            edit(
                "count by (version, commit) (mapwatch_build_info)",
                "count by (version, commit) (up)",
            ),
            "mapwatch_build_info: no PromQL example",
        ),
        (
            doc.clone() + "\n`mapwatch_made_up_total` counts nothing.\n",
            "the page names mapwatch_made_up_total",
        ),
        (
            edit(
                "rate(mapwatch_gc_cycles_total[5m])",
                "rate(mapwatch_gc_cycles_total_count[5m])",
            ),
            "the page names mapwatch_gc_cycles_total_count",
        ),
    ];
    for (edited, expected) in &cases {
        let found = problems(edited, &families);
        assert!(
            found.iter().any(|p| p.starts_with(expected)),
            "after an edit, expected a problem starting with {expected:?}, got {found:?}"
        );
    }
    let mut more = families.clone();
    more.push(Family {
        name: "mapwatch_new_total".into(),
        kind: MetricKind::Counter,
        help: "New.".into(),
        labels: vec!["probe".into()],
    });
    assert!(
        problems(&doc, &more)
            .iter()
            .any(|p| p.starts_with("mapwatch_new_total: 0 rows")),
        "a registered family missing from the page is not reported"
    );
}

/// The page is for someone who has this repository only: every file it links to or
/// names in backticks (a path with a `/`) exists here.
#[test]
fn the_files_the_page_names_are_in_this_repository() {
    let mut in_fence = false;
    let prose: String = doc()
        .lines()
        .filter(|line| {
            in_fence ^= line.starts_with("```");
            !in_fence && !line.starts_with("```")
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let links = prose
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next());
    let code = prose.split('`').skip(1).step_by(2);
    let mut missing = Vec::new();
    for target in links.chain(code) {
        let is_path = target.contains('/')
            && !target.contains(char::is_whitespace)
            && !target.starts_with('/')
            && !target.contains("://");
        if !is_path {
            continue;
        }
        // Links are relative to docs/, paths in backticks to the repository's root.
        let from_docs = Path::new("docs").join(target);
        let inside = |path: &Path| {
            path.components()
                .try_fold(0i32, |depth, c| {
                    let depth = match c {
                        Component::ParentDir => depth - 1,
                        Component::Normal(_) => depth + 1,
                        _ => depth,
                    };
                    (depth >= 0).then_some(depth)
                })
                .is_some()
        };
        let found = [Path::new(target).to_path_buf(), from_docs]
            .iter()
            .any(|p| inside(p) && repo().join(p).exists());
        if !found {
            missing.push(target);
        }
    }
    assert!(
        missing.is_empty(),
        "{DOC} names paths that are not in this repository: {missing:?}"
    );
}
