//! `mapwatch report FILE`: read a capture, analyse it, render one format; optionally
//! gate on it (`--fail-on`).
use std::io::{IsTerminal as _, Write as _};

use super::{ReportArgs, ReportFormat, UsageError};
use crate::{
    record::read::{ReadError, read_file},
    report::{
        analyse::analyse, diagnostics, diff, gate, markdown, model::Location, model::Report, pprof,
        svg,
    },
};

/// Runs the command; Ok(false) when the gate failed.
pub fn run(args: ReportArgs) -> anyhow::Result<bool> {
    let conditions = args
        .fail_on
        .as_deref()
        .map(gate::parse)
        .transpose()
        .map_err(|e| UsageError(e.to_string()))?;
    let recording = read_file(&args.file).map_err(|e| match e {
        ReadError::Io { .. } => UsageError(e.to_string()),
        other => UsageError(format!("{}: {other}", args.file.display())),
    })?;
    if let Some(damage) = &recording.damage {
        eprintln!("mapwatch: {}: {damage}", args.file.display());
    }
    let report = analyse(&recording);
    // With --source, paths relative to the checkout (what code scanning and editors
    // resolve); without, the paths compiled into the binary.
    let tree = match (&args.source, args.format) {
        (Some(dir), ReportFormat::Sarif | ReportFormat::Vet) => {
            Some(diff::SourceTree::open(dir).map_err(|e| UsageError(e.to_string()))?)
        }
        _ => None,
    };
    let raw_path = |l: &Location| match tree.as_ref().and_then(|t| t.relative(&l.file)) {
        Some(relative) => relative.display().to_string(),
        None => l.file.clone(),
    };
    let output: Vec<u8> = match args.format {
        ReportFormat::Md => markdown::render(&report, args.top as usize).into_bytes(),
        ReportFormat::Json => {
            let mut json = serde_json::to_vec_pretty(&report)?;
            json.push(b'\n');
            json
        }
        ReportFormat::Svg => svg::render(&report, args.top as usize).into_bytes(),
        ReportFormat::Pprof => {
            if args.output.is_none() && std::io::stdout().is_terminal() {
                return Err(UsageError(
                    "a pprof profile is binary: write it to a file with -o FILE.pb.gz".into(),
                )
                .into());
            }
            pprof::render(&report)
        }
        ReportFormat::Sarif => diagnostics::sarif(&report, &raw_path).into_bytes(),
        ReportFormat::Vet => diagnostics::vet(&report, &raw_path).into_bytes(),
        ReportFormat::Diff => source_diff(&report, args.source.as_deref())?.into_bytes(),
    };
    match &args.output {
        Some(path) => std::fs::write(path, &output)
            .map_err(|e| UsageError(format!("cannot write {}: {e}", path.display())))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&output)?;
            stdout.flush()?;
        }
    }
    let Some(conditions) = conditions else {
        return Ok(true);
    };
    let verdicts = gate::evaluate(&conditions, &report);
    let failed = verdicts.iter().filter(|v| v.failed).count();
    // The gate's summary goes to stderr so that it shows beside a report piped away.
    let mut summary = String::new();
    for v in &verdicts {
        let mark = if v.failed { "FAIL" } else { "ok  " };
        summary.push_str(&format!(
            "  {mark} {} (measured {})\n",
            v.condition, v.measured
        ));
    }
    let advised = report
        .slice_sites
        .iter()
        .map(|s| &s.advice)
        .chain(report.map_sites.iter().map(|s| &s.advice))
        .filter(|a| a.is_advised())
        .take(5)
        .map(|a| format!("  - {}\n", a.message()))
        .collect::<String>();
    let verdict = if failed > 0 {
        format!(
            "mapwatch: gate FAILED ({failed} of {} conditions):",
            verdicts.len()
        )
    } else {
        format!("mapwatch: gate passed ({} conditions):", verdicts.len())
    };
    eprint!("{verdict}\n{summary}");
    if failed > 0 && !advised.is_empty() {
        eprint!("Top advice:\n{advised}");
    }
    Ok(failed == 0)
}

/// The patch that applies the advice; what it cannot rewrite is said on stderr, site by
/// site, so that a patch piped to `git apply` stays clean.
fn source_diff(report: &Report, source: Option<&std::path::Path>) -> anyhow::Result<String> {
    let dir = source.ok_or_else(|| {
        UsageError(
            "--format diff needs --source DIR: the checkout of the recorded program's source"
                .to_string(),
        )
    })?;
    let plan = diff::plan(report, dir).map_err(|e| UsageError(e.to_string()))?;
    for refusal in &plan.refusals {
        let at = refusal
            .location
            .as_ref()
            .map_or("a site with no location".to_string(), |l| {
                format!("{}:{}", l.file, l.line)
            });
        eprintln!("mapwatch: not rewritten: {at}: {}", refusal.why);
    }
    if plan.edits.is_empty() {
        eprintln!("mapwatch: no change to propose (nothing advised, or nothing rewritable)");
    }
    Ok(plan.unified_diff())
}
