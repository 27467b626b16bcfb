//! `--fail-on 'EXPR'`: a CI gate over a report. EXPR is a comma-separated list of
//! conditions `NAME OP VALUE`, any of which failing fails the gate:
//!
//! - NAME: one of [`QUANTITIES`] (e.g. `slice_grow_bytes_rate`, `map_grow`).
//! - OP: `>`, `>=`, `<`, `<=`.
//! - VALUE: a number with an optional unit: bytes `B kB MB GB` (×1000) or `KiB MiB GiB`
//!   (×1024), `/s` after a rate's unit (required: a rate compared with a plain count
//!   is a mistake), `ms`/`s` for pause times, `k`/`M` multipliers for counts.
//!
//! Example: `slice_grow_bytes_rate>50MB/s,map_grow>1000,stw_p99>5ms`.
use super::model::Report;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("--fail-on: {0}")]
pub struct GateError(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Count,
    Bytes,
    Seconds,
}

/// The quantities a gate can test, and what each measures.
pub const QUANTITIES: &[(&str, &str)] = &[
    ("slice_grow", "slice growths in the capture"),
    ("slice_grow_rate", "slice growths per second (/s)"),
    ("slice_grow_bytes", "bytes copied by slice growth"),
    (
        "slice_grow_bytes_rate",
        "bytes copied by slice growth per second (B/s)",
    ),
    ("map_grow", "map growths in the capture"),
    ("map_grow_rate", "map growths per second (/s)"),
    ("gc_cycles", "GC cycles in the capture"),
    ("stw_p99", "99th percentile stop-the-world pause (ms or s)"),
    ("stw_max", "longest stop-the-world pause (ms or s)"),
    ("advised_sites", "sites with pre-size advice"),
];

fn quantity(name: &str) -> Option<(Unit, bool)> {
    Some(match name {
        "slice_grow" | "map_grow" | "gc_cycles" | "advised_sites" => (Unit::Count, false),
        "slice_grow_rate" | "map_grow_rate" => (Unit::Count, true),
        "slice_grow_bytes" => (Unit::Bytes, false),
        "slice_grow_bytes_rate" => (Unit::Bytes, true),
        "stw_p99" | "stw_max" => (Unit::Seconds, false),
        _ => return None,
    })
}

fn measure(name: &str, report: &Report) -> f64 {
    let s = &report.summary;
    match name {
        "slice_grow" => s.slice_growths as f64,
        "slice_grow_rate" => s.slice_growths_per_s,
        "slice_grow_bytes" => s.slice_bytes_copied as f64,
        "slice_grow_bytes_rate" => s.slice_bytes_copied_per_s,
        "map_grow" => s.map_growths as f64,
        "map_grow_rate" => s.map_growths_per_s,
        "gc_cycles" => s.gc_cycles as f64,
        "stw_p99" => s.stw_p99_ms / 1e3,
        "stw_max" => s.stw_max_ms / 1e3,
        "advised_sites" => {
            let slices = report.slice_sites.iter().map(|s| &s.advice);
            let maps = report.map_sites.iter().map(|s| &s.advice);
            slices.chain(maps).filter(|a| a.is_advised()).count() as f64
        }
        _ => f64::NAN,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Greater,
    GreaterEqual,
    Less,
    LessEqual,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub text: String,
    name: String,
    op: Op,
    /// In the quantity's base unit (count, bytes, seconds; per second for rates).
    value: f64,
}

/// What a condition found in a report.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub condition: String,
    pub measured: String,
    pub failed: bool,
}

pub fn parse(expr: &str) -> Result<Vec<Condition>, GateError> {
    let conditions: Vec<Condition> = expr
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(parse_condition)
        .collect::<Result<_, _>>()?;
    if conditions.is_empty() {
        return Err(GateError(
            "no condition given; e.g. --fail-on 'slice_grow_bytes_rate>50MB/s,map_grow>1000'"
                .into(),
        ));
    }
    Ok(conditions)
}

fn parse_condition(text: &str) -> Result<Condition, GateError> {
    let at = text.find(['>', '<']).ok_or_else(|| {
        GateError(format!(
            "`{text}` has no comparison (>, >=, <, <=); e.g. map_grow>1000"
        ))
    })?;
    let name = text[..at].trim();
    let rest = &text[at..];
    let (op, value) = if let Some(v) = rest.strip_prefix(">=") {
        (Op::GreaterEqual, v)
    } else if let Some(v) = rest.strip_prefix("<=") {
        (Op::LessEqual, v)
    } else if let Some(v) = rest.strip_prefix('>') {
        (Op::Greater, v)
    } else {
        (Op::Less, &rest[1..])
    };
    let (unit, rate) = quantity(name).ok_or_else(|| {
        let known: Vec<&str> = QUANTITIES.iter().map(|(n, _)| *n).collect();
        GateError(format!(
            "unknown quantity `{name}` in `{text}`; known: {}",
            known.join(", ")
        ))
    })?;
    let value = parse_value(value.trim(), unit, rate)
        .map_err(|why| GateError(format!("`{text}`: {why}")))?;
    Ok(Condition {
        text: text.to_string(),
        name: name.to_string(),
        op,
        value,
    })
}

fn parse_value(text: &str, unit: Unit, rate: bool) -> Result<f64, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let number: f64 = text[..split]
        .parse()
        .map_err(|_| format!("`{text}` does not start with a number"))?;
    let mut suffix = text[split..].trim();
    if rate {
        suffix = suffix
            .strip_suffix("/s")
            .ok_or_else(|| format!("a rate needs `/s` after its value (e.g. {number}/s)"))?;
    } else if suffix.ends_with("/s") {
        return Err("this quantity is not a rate: drop the `/s`".to_string());
    }
    let scale = match (unit, suffix) {
        (Unit::Count, "") | (Unit::Bytes, "" | "B") | (Unit::Seconds, "s") => 1.0,
        (Unit::Count, "k") => 1e3,
        (Unit::Count, "M") => 1e6,
        (Unit::Bytes, "kB" | "KB") => 1e3,
        (Unit::Bytes, "MB") => 1e6,
        (Unit::Bytes, "GB") => 1e9,
        (Unit::Bytes, "KiB") => 1024.0,
        (Unit::Bytes, "MiB") => 1024.0 * 1024.0,
        (Unit::Bytes, "GiB") => 1024.0 * 1024.0 * 1024.0,
        (Unit::Seconds, "ms") => 1e-3,
        (Unit::Seconds, "us" | "µs") => 1e-6,
        (Unit::Seconds, "") => return Err("give a pause time a unit: ms or s".to_string()),
        (_, other) => return Err(format!("unit `{other}` does not fit this quantity")),
    };
    Ok(number * scale)
}

pub fn evaluate(conditions: &[Condition], report: &Report) -> Vec<Verdict> {
    conditions
        .iter()
        .map(|c| {
            let measured = measure(&c.name, report);
            let failed = match c.op {
                Op::Greater => measured > c.value,
                Op::GreaterEqual => measured >= c.value,
                Op::Less => measured < c.value,
                Op::LessEqual => measured <= c.value,
            };
            Verdict {
                condition: c.text.clone(),
                measured: show(&c.name, measured),
                failed,
            }
        })
        .collect()
}

fn show(name: &str, value: f64) -> String {
    match quantity(name) {
        Some((Unit::Bytes, rate)) => {
            let bytes = super::advice::human_bytes(value);
            if rate { format!("{bytes}/s") } else { bytes }
        }
        Some((Unit::Seconds, _)) => format!("{:.3} ms", value * 1e3),
        Some((Unit::Count, true)) => format!("{value:.1}/s"),
        _ => format!("{value}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::{CaptureInfo, SCHEMA_VERSION, Summary, Timeline};

    fn report(summary: Summary) -> Report {
        Report {
            schema_version: SCHEMA_VERSION,
            capture: CaptureInfo {
                binary: "svc".into(),
                build_id: String::new(),
                go_version: "go1.22.10".into(),
                map_implementation: "classic".into(),
                pid: 1,
                command: None,
                start_unix_s: 0.0,
                duration_s: 10.0,
                stopped_because: None,
                complete: true,
                damage: None,
                events_lost: 0,
                observations_dropped: 0,
            },
            summary,
            slice_sites: vec![],
            map_sites: vec![],
            timeline: Timeline::default(),
            stw_pauses: vec![],
        }
    }

    #[test]
    fn the_documented_example_gates() {
        let conditions = parse("slice_grow_bytes_rate>50MB/s, map_grow>1000,stw_p99>=5ms").unwrap();
        let busy = report(Summary {
            slice_bytes_copied_per_s: 60e6,
            map_growths: 1000,
            stw_p99_ms: 5.0,
            ..Default::default()
        });
        let verdicts = evaluate(&conditions, &busy);
        let failed: Vec<bool> = verdicts.iter().map(|v| v.failed).collect();
        assert_eq!(failed, [true, false, true]);
        assert_eq!(verdicts[0].measured, "60.0 MB/s");
        assert_eq!(verdicts[2].measured, "5.000 ms");
    }

    #[test]
    fn mistakes_are_explained() {
        for (expr, says) in [
            ("slice_grow_bytes_rate>50MB", "needs `/s`"),
            ("map_grow>1000/s", "not a rate"),
            ("map_grows>1", "unknown quantity `map_grows`"),
            ("map_grow=1", "no comparison"),
            ("stw_p99>5", "ms or s"),
            ("slice_grow_bytes>5ms", "does not fit"),
            ("map_grow>lots", "does not start with a number"),
            ("", "no condition"),
        ] {
            let error = parse(expr).unwrap_err().to_string();
            assert!(error.contains(says), "{expr}: {error}");
        }
        assert_eq!(parse("slice_grow_bytes<1KiB").unwrap()[0].value, 1024.0);
        assert_eq!(parse("map_grow_rate<=2k/s").unwrap()[0].value, 2000.0);
    }
}
