//! The Markdown report: what to change first, then the evidence (summary, top sites,
//! pauses). GitHub-flavoured tables; reads as plain text in a terminal too.
use std::fmt::Write as _;

use super::{
    advice::{human_bytes, per_second},
    model::{Advice, Distribution, Location, MapSite, Report, SliceSite},
};

pub fn render(report: &Report, top: usize) -> String {
    let mut out = String::new();
    header(&mut out, report);
    summary(&mut out, report);
    to_change(&mut out, report, top);
    slice_sites(&mut out, &report.slice_sites, top);
    map_sites(&mut out, &report.map_sites, top);
    pauses(&mut out, report);
    out
}

fn header(out: &mut String, report: &Report) {
    let c = &report.capture;
    let binary = c.binary.rsplit('/').next().unwrap_or(&c.binary);
    let _ = writeln!(
        out,
        "# mapwatch report: {binary} ({}, {} maps)\n",
        c.go_version, c.map_implementation
    );
    let how = match &c.command {
        Some(command) => format!("`{}`", command.join(" ")),
        None => format!("pid {} ({})", c.pid, c.binary),
    };
    let ended = c
        .stopped_because
        .as_deref()
        .unwrap_or("killed before it could finish");
    let _ = writeln!(
        out,
        "Recorded {:.1} s of {how}; ended: {ended}.",
        c.duration_s
    );
    if !c.complete {
        let _ = writeln!(
            out,
            "\n**Incomplete capture** — counts below are lower bounds: {} records lost in the \
             kernel, {} dropped by the file writer{}.",
            c.events_lost,
            c.observations_dropped,
            c.damage
                .as_deref()
                .map_or(String::new(), |d| format!("; file: {d}"))
        );
    }
    out.push('\n');
}

fn summary(out: &mut String, report: &Report) {
    let s = &report.summary;
    let _ = writeln!(out, "## Summary\n\n| | |\n|---|---|");
    let _ = writeln!(
        out,
        "| slice growths | {} ({:.1}/s) |",
        s.slice_growths, s.slice_growths_per_s
    );
    let _ = writeln!(
        out,
        "| bytes copied by slice growth | {} ({}) |",
        human_bytes(s.slice_bytes_copied as f64),
        per_second(s.slice_bytes_copied_per_s)
    );
    let _ = writeln!(
        out,
        "| bytes allocated by slice growth | {} |",
        human_bytes(s.slice_bytes_allocated as f64)
    );
    let _ = writeln!(
        out,
        "| map growths | {} ({:.1}/s) |",
        s.map_growths, s.map_growths_per_s
    );
    let _ = writeln!(out, "| GC cycles | {} |", s.gc_cycles);
    if s.stw_pauses > 0 {
        let _ = writeln!(
            out,
            "| stop-the-world pauses | {}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, total {:.1} ms |",
            s.stw_pauses, s.stw_p50_ms, s.stw_p99_ms, s.stw_max_ms, s.stw_total_ms
        );
    } else {
        let _ = writeln!(out, "| stop-the-world pauses | none seen |");
    }
    let correlation = s
        .growth_stw_correlation
        .map_or("fewer than 3 GC cycles: not computed".to_string(), |r| {
            format!("{r:.2} over {} GC cycles", s.gc_cycles)
        });
    let _ = writeln!(
        out,
        "| slice growth bytes ↔ STW time per GC cycle | {correlation} |\n"
    );
}

fn to_change(out: &mut String, report: &Report, top: usize) {
    let _ = writeln!(out, "## What to change\n");
    let mut advised: Vec<&Advice> = report
        .slice_sites
        .iter()
        .map(|s| &s.advice)
        .chain(report.map_sites.iter().map(|s| &s.advice))
        .filter(|a| a.is_advised())
        .collect();
    // Biggest saving first, slices and maps together.
    advised.sort_by_key(|a| match a {
        Advice::PreSize { growths_saved, .. } => std::cmp::Reverse(*growths_saved),
        Advice::None { .. } => std::cmp::Reverse(0),
    });
    advised.truncate(top);
    if advised.is_empty() {
        let _ = writeln!(
            out,
            "Nothing to pre-size: no site grew often enough, per instance, with sizes close \
             enough together (each site's reason is in the tables below).\n"
        );
        return;
    }
    for (i, advice) in advised.iter().enumerate() {
        let _ = writeln!(out, "{}. {}", i + 1, advice.message());
    }
    out.push('\n');
}

fn slice_sites(out: &mut String, sites: &[SliceSite], top: usize) {
    let _ = writeln!(out, "## Slice growth by append site\n");
    if sites.is_empty() {
        let _ = writeln!(out, "No slice grew during the capture.\n");
        return;
    }
    let _ = writeln!(
        out,
        "| append site | function | element | growths | copied | slices | growths per slice \
         p50/p95 | final cap p50/p95/max | advised |\n|---|---|---|--:|--:|--:|--:|--:|---|"
    );
    for site in sites.iter().take(top) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {}/{} | {} | {} |",
            site_cell(site.location.as_ref()),
            function_cell(site.location.as_ref()),
            cell(&site.elem_types.join(", ")),
            site.growths,
            human_bytes(site.bytes_copied as f64),
            site.instances,
            site.growths_per_instance.p50,
            site.growths_per_instance.p95,
            three(&site.final_cap),
            advised_cell(&site.advice),
        );
    }
    reasons(
        out,
        sites.iter().take(top).map(|s| (&s.location, &s.advice)),
    );
    more(out, sites.len(), top);
}

fn map_sites(out: &mut String, sites: &[MapSite], top: usize) {
    let _ = writeln!(out, "## Map growth by site\n");
    if sites.is_empty() {
        let _ = writeln!(out, "No map grew during the capture.\n");
        return;
    }
    let _ = writeln!(
        out,
        "| insert site | function | map type | growths | kinds | maps | growths per map p50/p95 | \
         entries at last growth p50/p95/max | room reached p95 | made at (hint max) | \
         health at growth | advised |\n|---|---|---|--:|---|--:|--:|--:|--:|---|---|---|"
    );
    for site in sites.iter().take(top) {
        let kinds: Vec<String> = site.kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        // Classic maps grow past 6.5 entries per bucket, or when overflow buckets pile
        // up (same-size growth); Swiss tables past 7/8 full.
        let mut health = site
            .mean_load_factor_at_growth
            .map_or("—".to_string(), |l| format!("load {l:.2}"));
        if let Some(overflow) = site.mean_overflow_buckets_at_growth {
            health.push_str(&format!(", {overflow:.1} overflow buckets"));
        }
        let made = match (&site.made_at, &site.hint) {
            (Some(at), Some(hint)) => format!("{} ({})", site_cell(Some(at)), hint.max),
            (Some(at), None) => site_cell(Some(at)),
            _ => "not seen".to_string(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {}/{} | {} | {} | {made} | {health} | {} |",
            site_cell(site.location.as_ref()),
            function_cell(site.location.as_ref()),
            cell(&site.map_types.join(", ")),
            site.growths,
            kinds.join(", "),
            site.maps,
            site.growths_per_map.p50,
            site.growths_per_map.p95,
            three(&site.size_at_last_growth),
            site.capacity_reached.p95,
            advised_cell(&site.advice),
        );
    }
    reasons(
        out,
        sites.iter().take(top).map(|s| (&s.location, &s.advice)),
    );
    more(out, sites.len(), top);
}

fn pauses(out: &mut String, report: &Report) {
    let _ = writeln!(out, "## Stop-the-world pauses\n");
    if report.stw_pauses.is_empty() {
        let _ = writeln!(out, "None seen during the capture.");
        return;
    }
    let mut by_reason: std::collections::BTreeMap<&str, (u64, f64, f64)> = Default::default();
    for p in &report.stw_pauses {
        let entry = by_reason.entry(&p.reason).or_default();
        entry.0 += 1;
        entry.1 += p.duration_ms;
        entry.2 = entry.2.max(p.duration_ms);
    }
    let _ = writeln!(
        out,
        "| reason | pauses | total ms | max ms |\n|---|--:|--:|--:|"
    );
    for (reason, (n, total, max)) in by_reason {
        let _ = writeln!(out, "| {} | {n} | {total:.3} | {max:.3} |", cell(reason));
    }
}

fn reasons<'a>(out: &mut String, sites: impl Iterator<Item = (&'a Option<Location>, &'a Advice)>) {
    let mut first = true;
    for (location, advice) in sites {
        if let Advice::None { why } = advice {
            if first {
                let _ = writeln!(out, "\nNot advised:\n");
                first = false;
            }
            let _ = writeln!(out, "- {}: {why}", site_cell(location.as_ref()));
        }
    }
    out.push('\n');
}

fn more(out: &mut String, total: usize, top: usize) {
    if total > top {
        let _ = writeln!(
            out,
            "{} more site(s) not shown (--top {}).\n",
            total - top,
            total
        );
    }
}

fn site_cell(location: Option<&Location>) -> String {
    location.map_or("unknown".to_string(), |l| {
        let file = l.file.rsplit('/').next().unwrap_or(&l.file);
        cell(&format!("{file}:{}", l.line))
    })
}

fn function_cell(location: Option<&Location>) -> String {
    location.map_or(String::new(), |l| {
        format!("`{}`", short_function(&l.function).replace('`', "'"))
    })
}

/// A generic function's type arguments as `[...]`, as Go's own tracebacks print them:
/// the GC shapes (`go.shape.struct { … }`) are long and say little.
fn short_function(function: &str) -> String {
    let mut out = String::with_capacity(function.len());
    let mut depth = 0usize;
    for c in function.chars() {
        match c {
            '[' => {
                if depth == 0 {
                    out.push_str("[...]");
                }
                depth += 1;
            }
            ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

fn advised_cell(advice: &Advice) -> String {
    match advice {
        Advice::PreSize { code, .. } => format!("`{code}`"),
        Advice::None { .. } => "no".to_string(),
    }
}

fn three(d: &Distribution) -> String {
    format!("{}/{}/{}", d.p50, d.p95, d.max)
}

/// Table cells cannot hold pipes or newlines.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::short_function;

    #[test]
    fn generic_type_arguments_are_elided() {
        assert_eq!(
            short_function("main.collect[go.shape.struct { main.a [2]int64 }]"),
            "main.collect[...]"
        );
        assert_eq!(
            short_function("example.com/m.(*Cache[go.shape.int]).Put"),
            "example.com/m.(*Cache[...]).Put"
        );
        assert_eq!(short_function("main.handle"), "main.handle");
        assert_eq!(short_function("a]b[c"), "ab[...]");
    }
}
