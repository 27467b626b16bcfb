//! `--format svg`: the report as one picture for a browser — totals, growth rate over
//! time, the top sites as bars, stop-the-world pauses. Self-contained (system fonts,
//! inline style) so the file can be attached to an issue or opened offline.
mod draw;

use super::model::{Location, Report};
use draw::{
    Area, Canvas, MARGIN, PLOT_LEFT, PLOT_RIGHT, WIDTH, bytes, compact, ms, seconds, shorten,
    thousands,
};

/// Site labels are monospace (DejaVu Sans Mono's advance is 0.6 em, 7.2 px at 12 px),
/// so a character budget is a width budget: 60 characters end before `BAR_LEFT`.
const LABEL_CHARS: usize = 60;
const BAR_LEFT: f64 = 470.0;
/// Leaves 270 px right of the longest bar for its value text (~38 characters).
const BAR_MAX: f64 = 430.0;
const ROW: f64 = 22.0;
/// Space above each section's heading.
const GAP: f64 = 30.0;
const SLICE: &str = "#2b6cb0";
const MAP: &str = "#dd6b20";
const PAUSE: &str = "#c53030";

/// The report as an SVG document, with the `top` sites of each kind.
pub fn render(report: &Report, top: usize) -> String {
    let mut c = Canvas::default();
    let time = TimeAxis::of(report);
    let mut y = header(&mut c, report) + GAP + 8.0;
    y = growth_chart(&mut c, report, &time, y) + GAP;
    let rows = report.slice_sites.iter().take(top).map(|s| Bar {
        label: site_label(s.location.as_ref()),
        tooltip: tooltip(s.location.as_ref(), &s.elem_types, s.advice.message()),
        value: s.growths,
        text: format!("{} · {} copied", growths(s.growths), bytes(s.bytes_copied)),
    });
    let heading = ("Top slice sites by growths", report.slice_sites.len());
    let empty = "no slice growths recorded";
    y = bars(&mut c, heading, rows.collect(), SLICE, empty, y) + GAP;
    let rows = report.map_sites.iter().take(top).map(|s| Bar {
        label: site_label(s.location.as_ref()),
        tooltip: tooltip(s.location.as_ref(), &[], s.advice.message()),
        value: s.growths,
        text: format!("{} · {}", growths(s.growths), plural(s.maps, "map")),
    });
    let heading = ("Top map sites by growths", report.map_sites.len());
    let empty = "no map growths recorded";
    y = bars(&mut c, heading, rows.collect(), MAP, empty, y) + GAP;
    y = pause_chart(&mut c, report, &time, y);
    c.finish(y + MARGIN)
}

fn header(c: &mut Canvas, r: &Report) -> f64 {
    let (cap, s) = (&r.capture, &r.summary);
    let title = match cap.binary.as_str() {
        "" => "mapwatch report".to_owned(),
        binary => format!("mapwatch report · {}", shorten(binary, 64)),
    };
    c.text(MARGIN, 34.0, "h1", "", &title);
    // Go names its versions "go1.27.3"; empty fields are left out, not shown blank.
    let go = cap.go_version.strip_prefix("go").unwrap_or(&cap.go_version);
    let about = [
        (!go.is_empty()).then(|| format!("Go {go}")),
        (!cap.map_implementation.is_empty()).then(|| format!("{} maps", cap.map_implementation)),
        (cap.pid != 0).then(|| format!("pid {}", cap.pid)),
        Some(format!("{} captured", seconds(cap.duration_s))),
        cap.stopped_because
            .as_ref()
            .map(|why| format!("stopped: {}", shorten(why, 60))),
    ];
    let about: Vec<String> = about.into_iter().flatten().collect();
    c.text(MARGIN, 58.0, "sub", "", &about.join(" · "));
    let slices = format!(
        "Slices: {} ({}/s) · {} allocated · {} copied ({}/s)",
        growths(s.slice_growths),
        compact(s.slice_growths_per_s),
        bytes(s.slice_bytes_allocated),
        bytes(s.slice_bytes_copied),
        bytes(s.slice_bytes_copied_per_s as u64),
    );
    c.text(MARGIN, 80.0, "sub", "", &slices);
    let maps = format!(
        "Maps: {} ({}/s) · GC: {} · STW: {}, total {}, max {}",
        growths(s.map_growths),
        compact(s.map_growths_per_s),
        plural(s.gc_cycles, "cycle"),
        plural(s.stw_pauses, "pause"),
        ms(s.stw_total_ms),
        ms(s.stw_max_ms),
    );
    let maps = match s.growth_stw_correlation {
        Some(r) if r.is_finite() => format!("{maps} · growth/STW correlation {r:.2}"),
        _ => maps,
    };
    c.text(MARGIN, 100.0, "sub", "", &maps);
    if cap.complete {
        return 100.0;
    }
    let mut warn = vec![format!("{} lost", plural(cap.events_lost, "event"))];
    if cap.observations_dropped > 0 {
        warn.push(format!(
            "{} dropped",
            plural(cap.observations_dropped, "observation")
        ));
    }
    warn.extend(cap.damage.as_ref().map(|d| shorten(d, 60)));
    let warn = format!(
        "Incomplete capture: {}. Counts are lower bounds.",
        warn.join(", ")
    );
    c.text(MARGIN, 122.0, "warn", "", &warn);
    122.0
}

/// The charts' shared time axis, so growth spikes and pauses line up: it spans the
/// timeline's buckets and every pause, in seconds, or minutes or hours for long
/// captures (ticks of "1.5k" seconds say little).
struct TimeAxis {
    span: f64,
    unit_s: f64,
    title: &'static str,
}

impl TimeAxis {
    fn of(r: &Report) -> TimeAxis {
        let t = &r.timeline;
        let buckets = t.slice_growths.len().max(t.map_growths.len()) as f64;
        let pauses = r.stw_pauses.iter().map(|p| p.t_s + p.duration_ms / 1e3);
        let span = pauses
            .chain([r.capture.duration_s, buckets * bucket_s(r)])
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let (unit_s, title) = match span {
            s if s >= 48.0 * 3600.0 => (3600.0, "hours since start"),
            s if s >= 20.0 * 60.0 => (60.0, "minutes since start"),
            _ => (1.0, "seconds since start"),
        };
        let span = if span > 0.0 { span / unit_s } else { 1.0 };
        TimeAxis {
            span,
            unit_s,
            title,
        }
    }

    fn area(&self, top: f64, height: f64, y_data: f64) -> Area {
        Area::new(top, height, self.span, y_data)
    }
}

fn bucket_s(r: &Report) -> f64 {
    let b = r.timeline.bucket_s;
    if b.is_finite() && b > 0.0 { b } else { 1.0 }
}

fn growth_chart(c: &mut Canvas, r: &Report, time: &TimeAxis, top: f64) -> f64 {
    let t = &r.timeline;
    let b = bucket_s(r);
    let n = t.slice_growths.len().max(t.map_growths.len());
    c.heading(
        MARGIN,
        top,
        "Growth rate over time",
        &format!("per {} bucket", seconds(b)),
    );
    if t.slice_growths
        .iter()
        .chain(&t.map_growths)
        .all(|&g| g == 0)
    {
        c.text(
            MARGIN,
            top + 26.0,
            "note",
            "",
            "no growths over time recorded",
        );
        return top + 26.0;
    }
    // The last bucket is cut short when the capture ended inside it: rate over its part.
    let width = |i: usize| match r.capture.duration_s - i as f64 * b {
        rest if i + 1 == n && rest.is_finite() && rest > 0.0 => rest.min(b),
        _ => b,
    };
    let rates = |counts: &[u64]| -> Vec<(f64, f64)> {
        let rate = |i: usize| counts.get(i).copied().unwrap_or(0) as f64 / width(i);
        (0..n)
            .map(|i| ((i as f64 * b + width(i) / 2.0) / time.unit_s, rate(i)))
            .collect()
    };
    let (slices, maps) = (rates(&t.slice_growths), rates(&t.map_growths));
    let y_data = slices.iter().chain(&maps).map(|p| p.1).fold(0.0, f64::max);
    for (i, (colour, name)) in [(SLICE, "slice growths/s"), (MAP, "map growths/s")]
        .iter()
        .enumerate()
    {
        let x = PLOT_RIGHT - 270.0 + i as f64 * 140.0;
        c.rect(x, top - 10.0, 12.0, 12.0, colour);
        c.text(x + 17.0, top, "", "", name);
    }
    let area = time.area(top + 18.0, 200.0, y_data);
    area.axes(c, time.title, "growths / s");
    for (points, colour) in [(&slices, SLICE), (&maps, MAP)] {
        let scaled: Vec<(f64, f64)> = points
            .iter()
            .map(|&(x, y)| (area.x(x), area.y(y)))
            .collect();
        c.polyline(&scaled, colour);
        // Markers show where the buckets are while there is room between them.
        if n <= 60 {
            for (x, y) in scaled {
                c.circle(x, y, 2.5, colour);
            }
        }
    }
    area.bottom() + 36.0
}

struct Bar {
    label: String,
    tooltip: String,
    value: u64,
    text: String,
}

fn bars(
    c: &mut Canvas,
    (title, total): (&str, usize),
    rows: Vec<Bar>,
    colour: &str,
    empty: &str,
    top: f64,
) -> f64 {
    if rows.is_empty() {
        c.heading(MARGIN, top, title, "");
        c.text(MARGIN, top + 26.0, "note", "", empty);
        return top + 26.0;
    }
    let detail = format!(
        "{} of {} · hover a row for the full name",
        rows.len(),
        total
    );
    c.heading(MARGIN, top, title, &detail);
    let max = rows.iter().map(|r| r.value).max().unwrap_or(0).max(1) as f64;
    let mut y = top + 12.0;
    for (i, row) in rows.iter().enumerate() {
        c.open_group(&row.tooltip);
        // Stripes lead the eye from a label across the gap to its bar.
        let stripe = if i % 2 == 0 { "#f2f4f7" } else { "#fff" };
        c.rect(MARGIN - 6.0, y, WIDTH - 2.0 * MARGIN + 12.0, ROW, stripe);
        c.text(MARGIN, y + 15.0, "mono", "", &row.label);
        let w = (row.value as f64 / max * BAR_MAX).max(if row.value > 0 { 1.0 } else { 0.0 });
        c.rect(BAR_LEFT, y + 4.0, w, 14.0, colour);
        c.text(BAR_LEFT + w + 6.0, y + 15.0, "", "", &row.text);
        c.close_group();
        y += ROW;
    }
    y
}

fn pause_chart(c: &mut Canvas, r: &Report, time: &TimeAxis, top: f64) -> f64 {
    let s = &r.summary;
    let drawn: Vec<(f64, f64, &str)> = r
        .stw_pauses
        .iter()
        .filter(|p| p.t_s.is_finite() && p.duration_ms.is_finite())
        .map(|p| (p.t_s.max(0.0), p.duration_ms.max(0.0), p.reason.as_str()))
        .collect();
    if drawn.is_empty() {
        c.heading(MARGIN, top, "Stop-the-world pauses", "");
        c.text(MARGIN, top + 26.0, "note", "", "no pauses");
        return top + 26.0;
    }
    let stats = format!(
        "{} · p50 {} · p99 {} · max {} · total {}",
        plural(r.stw_pauses.len() as u64, "pause"),
        ms(s.stw_p50_ms),
        ms(s.stw_p99_ms),
        ms(s.stw_max_ms),
        ms(s.stw_total_ms)
    );
    c.heading(MARGIN, top, "Stop-the-world pauses", &stats);
    let y_data = drawn.iter().map(|p| p.1).fold(0.0, f64::max);
    let area = time.area(top + 18.0, 140.0, y_data);
    area.axes(c, time.title, "pause (ms)");
    for &(t, d, reason) in &drawn {
        let (x, y) = (area.x(t / time.unit_s), area.y(d));
        c.open_group(&format!("{} at {} ({reason})", ms(d), seconds(t)));
        c.line(x, area.bottom(), x, y, PAUSE, 1.5);
        c.circle(x, y, 2.5, PAUSE);
        c.close_group();
    }
    // The longest pause, named: the one a reader looks for first.
    if let Some(&(t, d, reason)) = drawn.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
        let (x, y) = (area.x(t / time.unit_s), area.y(d));
        let right_half = x > (PLOT_LEFT + PLOT_RIGHT) / 2.0;
        let (dx, anchor) = if right_half {
            (-6.0, "end")
        } else {
            (6.0, "start")
        };
        let label = format!("{} ({})", ms(d), shorten(reason, 40));
        c.text(x + dx, y + 4.0, "tick halo", anchor, &label);
    }
    area.bottom() + 36.0
}

/// "12,345 growths"; compact past ten million, where digits stop being read.
fn growths(n: u64) -> String {
    if n >= 10_000_000 {
        format!("{} growths", compact(n as f64))
    } else {
        plural(n, "growth")
    }
}

fn plural(n: u64, noun: &str) -> String {
    format!("{} {noun}{}", thousands(n), if n == 1 { "" } else { "s" })
}

/// "store/load.go:42 store.(*Loader[…]).Load": the file's last two path parts, the
/// function without its import path. To fit the label column, type arguments go
/// first (mostly GC shapes), then the directory, and only then part of the name.
fn site_label(location: Option<&Location>) -> String {
    let Some(l) = location else {
        return "(caller unknown)".into();
    };
    let base = l.file.rsplit('/').next().unwrap_or_default();
    let parts: Vec<&str> = l.file.rsplit('/').take(2).collect();
    let dir_file = parts.into_iter().rev().collect::<Vec<_>>().join("/");
    // The import path ends at the last '/' before any type arguments, whose own
    // types may have paths.
    let f = &l.function;
    let plain_end = f.find('[').unwrap_or(f.len());
    let name = &f[f[..plain_end].rfind('/').map_or(0, |i| i + 1)..];
    let short_name = without_type_args(name);
    let place = |file: &str| format!("{}:{} ", shorten(file, 36), l.line);
    let candidates = [
        (place(&dir_file), name),
        (place(&dir_file), short_name.as_str()),
        (place(base), short_name.as_str()),
    ];
    for (place, name) in &candidates {
        if place.chars().count() + name.chars().count() <= LABEL_CHARS {
            return format!("{place}{name}");
        }
    }
    let place = place(base);
    let budget = LABEL_CHARS.saturating_sub(place.chars().count()).max(12);
    format!("{place}{}", shorten(&short_name, budget))
}

/// `F[go.shape.int64,go.shape.string]` → `F[…]`.
fn without_type_args(name: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for ch in name.chars() {
        match ch {
            '[' => {
                if depth == 0 {
                    out.push_str("[…");
                }
                depth += 1;
            }
            ']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    out.push(']');
                }
            }
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    out
}

fn tooltip(l: Option<&Location>, elem_types: &[String], advice: &str) -> String {
    let place = l.map_or("caller unknown".into(), |l| format!("{} {l}", l.function));
    let types = if elem_types.is_empty() {
        String::new()
    } else {
        format!("\n[]{}", elem_types.join(", []"))
    };
    format!("{place}{types}\n{advice}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::*;

    fn empty() -> Report {
        Report {
            schema_version: SCHEMA_VERSION,
            capture: CaptureInfo {
                binary: String::new(),
                build_id: String::new(),
                go_version: String::new(),
                map_implementation: String::new(),
                pid: 0,
                command: None,
                start_unix_s: 0.0,
                duration_s: 0.0,
                stopped_because: None,
                complete: true,
                damage: None,
                events_lost: 0,
                observations_dropped: 0,
            },
            summary: Summary::default(),
            slice_sites: Vec::new(),
            map_sites: Vec::new(),
            timeline: Timeline::default(),
            stw_pauses: Vec::new(),
        }
    }

    #[test]
    fn an_empty_report_says_so_in_every_section() {
        let svg = render(&empty(), 10);
        assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));
        for note in [
            "no growths over time",
            "no slice growths",
            "no map growths",
            "no pauses",
        ] {
            assert!(svg.contains(note), "{note} missing from {svg}");
        }
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn odd_numbers_and_names_stay_valid() {
        let mut r = empty();
        r.capture.binary = "/a&b/<bin>".into();
        r.capture.duration_s = f64::NAN;
        r.capture.complete = false;
        r.capture.damage = Some("tail <cut>".into());
        r.summary.slice_growths_per_s = f64::INFINITY;
        r.timeline = Timeline {
            bucket_s: 0.0,
            slice_growths: vec![3, 0, 7],
            map_growths: vec![1],
            ..Timeline::default()
        };
        r.stw_pauses = vec![
            Pause {
                t_s: f64::NAN,
                duration_ms: 1.0,
                reason: "x".into(),
            },
            Pause {
                t_s: 0.5,
                duration_ms: 2.0,
                reason: "GC <mark>".into(),
            },
        ];
        let svg = render(&r, 10);
        assert!(svg.contains("/a&amp;b/&lt;bin&gt;") && svg.contains("GC &lt;mark&gt;"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert!(!svg.contains("<bin>") && !svg.contains("<cut>"));
    }

    #[test]
    fn site_labels_fit_their_column() {
        let l = Location {
            function: "github.com/acme/store.(*Loader[go.shape.struct { Name string; Path example.com/x.P }]).LoadEverything".into(),
            file: "/home/ci/go/pkg/mod/github.com/acme/store@v1.2.3/loader.go".into(),
            line: 1234,
        };
        let label = site_label(Some(&l));
        assert_eq!(label, "loader.go:1234 store.(*Loader[…]).LoadEverything");
        let mut l = l;
        l.function = "main.F[go.shape.int64]".into();
        assert_eq!(
            site_label(Some(&l)),
            "store@v1.2.3/loader.go:1234 main.F[go.shape.int64]"
        );
        l.function = format!("main.{}", "x".repeat(100));
        let label = site_label(Some(&l));
        assert!(
            label.starts_with("loader.go:1234 main.xx") && label.contains('…'),
            "{label}"
        );
        assert_eq!(label.chars().count(), LABEL_CHARS, "{label}");
        assert_eq!(site_label(None), "(caller unknown)");
        assert_eq!(without_type_args("F[a[b]]x[c]"), "F[…]x[…]");
    }
}
