//! One diagnostic per advised site, for tools: SARIF 2.1.0 (GitHub code scanning) and
//! `file:line:col: message` lines (editors' problem matchers, `go vet` style).
use serde_json::json;

use super::model::{Advice, Location, Report};

/// Rule ids: stable, so that code scanning can track an alert across runs.
const SLICE_RULE: &str = "mapwatch/presize-slice";
const MAP_RULE: &str = "mapwatch/presize-map";

struct Diagnostic<'a> {
    rule: &'static str,
    location: &'a Location,
    message: &'a str,
}

fn diagnostics(report: &Report) -> Vec<Diagnostic<'_>> {
    let slices = report
        .slice_sites
        .iter()
        .map(|s| (SLICE_RULE, &s.location, &s.advice));
    // A map's change goes where it is made, when the capture saw that.
    let maps = report.map_sites.iter().map(|s| {
        let at = if s.made_at.is_some() {
            &s.made_at
        } else {
            &s.location
        };
        (MAP_RULE, at, &s.advice)
    });
    slices
        .chain(maps)
        .filter_map(|(rule, location, advice)| match (location, advice) {
            (Some(location), Advice::PreSize { message, .. }) => Some(Diagnostic {
                rule,
                location,
                message,
            }),
            _ => None,
        })
        .collect()
}

/// `file:line:col: message`, one per line. The column is 1: the capture knows lines,
/// not columns.
pub fn vet(report: &Report, file_for: &dyn Fn(&Location) -> String) -> String {
    diagnostics(report)
        .iter()
        .map(|d| {
            format!(
                "{}:{}:1: {}\n",
                file_for(d.location),
                d.location.line,
                d.message
            )
        })
        .collect()
}

/// A SARIF 2.1.0 log with one run. `file_for` gives each file's URI (relative to the
/// checkout when known, as code scanning expects).
pub fn sarif(report: &Report, file_for: &dyn Fn(&Location) -> String) -> String {
    let results: Vec<serde_json::Value> = diagnostics(report)
        .iter()
        .map(|d| {
            json!({
                "ruleId": d.rule,
                "level": "warning",
                "message": { "text": d.message },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": file_for(d.location) },
                        "region": { "startLine": d.location.line }
                    },
                    "logicalLocations": [{
                        "fullyQualifiedName": d.location.function,
                        "kind": "function"
                    }]
                }]
            })
        })
        .collect();
    let rule = |id: &str, name: &str, text: &str| {
        json!({
            "id": id,
            "name": name,
            "shortDescription": { "text": text },
            "fullDescription": { "text": format!("{text} mapwatch saw it grow repeatedly while recording; the message gives the size to pre-allocate and what it saves.") },
            "help": { "text": "See docs/report.md in the mapwatch repository: how the size is chosen and when no advice is given." }
        })
    };
    let log = json!({
        "version": "2.1.0",
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "runs": [{
            "tool": { "driver": {
                "name": "mapwatch",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": [
                    rule(SLICE_RULE, "PresizeSlice", "A slice grows step by step where one make with a capacity would do."),
                    rule(MAP_RULE, "PresizeMap", "A map grows step by step where one make with a size hint would do."),
                ]
            }},
            "results": results
        }]
    });
    serde_json::to_string_pretty(&log).unwrap_or_default()
}
