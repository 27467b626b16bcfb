//! Drawing for the SVG report: the document, chart axes, and the number and text
//! formats its labels use.
use std::fmt::Write as _;

pub(super) const WIDTH: f64 = 1200.0;
pub(super) const MARGIN: f64 = 24.0;
/// Left edge of the charts' plot area: room for the y tick labels and axis title.
pub(super) const PLOT_LEFT: f64 = 90.0;
pub(super) const PLOT_RIGHT: f64 = WIDTH - 36.0;
const STYLE: &str = concat!(
    "text{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;font-size:12px;fill:#222}",
    ".h1{font-size:20px;font-weight:bold}",
    ".h2{font-size:15px;font-weight:bold}",
    ".sub{font-size:13px;font-weight:normal;fill:#555}",
    ".note{fill:#777;font-style:italic}",
    ".warn{fill:#c53030;font-weight:bold}",
    ".mono{font-family:'DejaVu Sans Mono',Menlo,Consolas,monospace}",
    ".tick{font-size:11px;fill:#555}",
    ".grid{stroke:#e6e6e6;stroke-width:1}",
    // Keeps a label readable where it crosses lines of the chart.
    ".halo{paint-order:stroke;stroke:#fff;stroke-width:4px;stroke-linejoin:round}",
);

/// A chart's plot area and its scales; both maxima are rounded up to a tick.
pub(super) struct Area {
    top: f64,
    height: f64,
    x_max: f64,
    x_step: f64,
    y_max: f64,
    y_step: f64,
}

impl Area {
    pub(super) fn new(top: f64, height: f64, x_data: f64, y_data: f64) -> Area {
        let (x_max, x_step) = nice_axis(x_data, 10);
        let (y_max, y_step) = nice_axis(y_data, 5);
        Area {
            top,
            height,
            x_max,
            x_step,
            y_max,
            y_step,
        }
    }

    pub(super) fn bottom(&self) -> f64 {
        self.top + self.height
    }

    pub(super) fn x(&self, v: f64) -> f64 {
        PLOT_LEFT + (PLOT_RIGHT - PLOT_LEFT) * unit(v / self.x_max)
    }

    pub(super) fn y(&self, v: f64) -> f64 {
        self.bottom() - self.height * unit(v / self.y_max)
    }

    pub(super) fn axes(&self, c: &mut Canvas, x_title: &str, y_title: &str) {
        for v in ticks(self.y_max, self.y_step) {
            let y = self.y(v);
            c.line(PLOT_LEFT, y, PLOT_RIGHT, y, "", 0.0);
            c.text(
                PLOT_LEFT - 6.0,
                y + 4.0,
                "tick",
                "end",
                &tick_label(v, self.y_step),
            );
        }
        for v in ticks(self.x_max, self.x_step) {
            let x = self.x(v);
            c.line(x, self.bottom(), x, self.bottom() + 4.0, "#888", 1.0);
            c.text(
                x,
                self.bottom() + 17.0,
                "tick",
                "middle",
                &tick_label(v, self.x_step),
            );
        }
        c.line(PLOT_LEFT, self.top, PLOT_LEFT, self.bottom(), "#888", 1.0);
        c.line(
            PLOT_LEFT,
            self.bottom(),
            PLOT_RIGHT,
            self.bottom(),
            "#888",
            1.0,
        );
        let mid = (PLOT_LEFT + PLOT_RIGHT) / 2.0;
        c.text(mid, self.bottom() + 33.0, "tick", "middle", x_title);
        let (x, y) = (MARGIN + 10.0, self.top + self.height / 2.0);
        let _ = write!(
            c.body,
            r#"<text class="tick" text-anchor="middle" transform="rotate(-90 {x:.1} {y:.1})" x="{x:.1}" y="{y:.1}">{}</text>"#,
            escape(y_title)
        );
    }
}

fn unit(v: f64) -> f64 {
    if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// A maximum rounded up to a multiple of a 1-2-5 step giving about `ticks` ticks.
fn nice_axis(max: f64, ticks: usize) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / ticks as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude);
    ((max / step).ceil() * step, step)
}

fn ticks(max: f64, step: f64) -> impl Iterator<Item = f64> {
    (0..=20)
        .map(move |i| i as f64 * step)
        .take_while(move |&v| v <= max * (1.0 + 1e-9))
}

fn tick_label(v: f64, step: f64) -> String {
    if step >= 1.0 || v == 0.0 {
        return compact(v);
    }
    let decimals = (-step.log10()).ceil().clamp(0.0, 6.0) as usize;
    format!("{v:.decimals$}")
}

/// At most `max` characters, the middle replaced by "…": both ends of a path or a
/// function name say more than its middle.
pub(super) fn shorten(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max || max < 3 {
        return s.into();
    }
    let head = (max - 1) / 3;
    let tail = max - 1 - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail));
    out
}

/// Text for an XML text node or attribute value. Characters XML 1.0 cannot hold at all
/// (most control characters) become U+FFFD, so a strange symbol name cannot make the
/// whole document unreadable.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(ch),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

pub(super) fn compact(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let (scaled, suffix) = match v.abs() {
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let digits = if scaled.abs() >= 100.0 {
        0
    } else if scaled.abs() >= 10.0 {
        1
    } else {
        2
    };
    let text = format!("{scaled:.digits$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}{suffix}")
}

/// The Markdown report's units (powers of 1000, as `go tool pprof`), so a figure
/// reads the same in both.
pub(super) fn bytes(n: u64) -> String {
    crate::report::advice::human_bytes(n as f64)
}

pub(super) fn ms(v: f64) -> String {
    match v {
        v if !v.is_finite() => "– ms".into(),
        v if v >= 100.0 => format!("{v:.0} ms"),
        v if v >= 10.0 => format!("{v:.1} ms"),
        v if v >= 0.1 || v == 0.0 => format!("{v:.2} ms"),
        v => format!("{v:.3} ms"),
    }
}

pub(super) fn seconds(v: f64) -> String {
    match v {
        v if !v.is_finite() => "– s".into(),
        v if v >= 7200.0 => format!("{:.1} h", v / 3600.0),
        v if v >= 120.0 => format!("{:.1} min", v / 60.0),
        v if v >= 10.0 => format!("{v:.0} s"),
        v => format!("{} s", compact(v)),
    }
}

/// The document being drawn; every string reaching it goes through [`escape`].
#[derive(Default)]
pub(super) struct Canvas {
    body: String,
}

impl Canvas {
    pub(super) fn text(&mut self, x: f64, y: f64, class: &str, anchor: &str, s: &str) {
        let _ = write!(self.body, r#"<text x="{x:.1}" y="{y:.1}""#);
        if !class.is_empty() {
            let _ = write!(self.body, r#" class="{class}""#);
        }
        if !anchor.is_empty() {
            let _ = write!(self.body, r#" text-anchor="{anchor}""#);
        }
        let _ = writeln!(self.body, ">{}</text>", escape(s));
    }

    /// A section's title, and after it in the same line whatever `detail` says.
    pub(super) fn heading(&mut self, x: f64, y: f64, title: &str, detail: &str) {
        let _ = write!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" class="h2">{}"#,
            escape(title)
        );
        if !detail.is_empty() {
            let _ = write!(
                self.body,
                r#"<tspan class="sub" dx="12">{}</tspan>"#,
                escape(detail)
            );
        }
        self.body.push_str("</text>\n");
    }

    /// A stroke of `colour`, or a grid line when `colour` is empty.
    pub(super) fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, colour: &str, width: f64) {
        let style = if colour.is_empty() {
            r#"class="grid""#.to_owned()
        } else {
            format!(r#"stroke="{colour}" stroke-width="{width}""#)
        };
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" {style}/>"#
        );
    }

    pub(super) fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{fill}"/>"#
        );
    }

    pub(super) fn circle(&mut self, x: f64, y: f64, r: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="{r}" fill="{fill}"/>"#
        );
    }

    pub(super) fn polyline(&mut self, points: &[(f64, f64)], colour: &str) {
        let mut p = String::new();
        for (x, y) in points {
            let _ = write!(p, "{x:.1},{y:.1} ");
        }
        let _ = writeln!(
            self.body,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-linejoin="round"/>"#,
            p.trim_end()
        );
    }

    /// A group whose `title` the browser shows on hover: the full names a label cut.
    pub(super) fn open_group(&mut self, title: &str) {
        let _ = writeln!(self.body, "<g><title>{}</title>", escape(title));
    }

    pub(super) fn close_group(&mut self) {
        self.body.push_str("</g>\n");
    }

    pub(super) fn finish(self, height: f64) -> String {
        format!(
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?>"#,
                "\n",
                r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h:.0}" viewBox="0 0 {w} {h:.0}">"#,
                "\n<style>{style}</style>\n",
                r##"<rect width="100%" height="100%" fill="#fff"/>"##,
                "\n{body}</svg>\n"
            ),
            w = WIDTH,
            h = height,
            style = STYLE,
            body = self.body
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_xml_specials_and_forbidden_characters() {
        assert_eq!(
            escape(r#"main.(*T[a&b]).F<"x">'y'"#),
            "main.(*T[a&amp;b]).F&lt;&quot;x&quot;&gt;&apos;y&apos;"
        );
        assert_eq!(
            escape("a\u{0}b\u{1b}c\u{FFFF}\td"),
            "a\u{FFFD}b\u{FFFD}c\u{FFFD}\td"
        );
    }

    #[test]
    fn axes_round_up_to_a_tick() {
        assert_eq!(nice_axis(0.0, 5), (1.0, 0.2));
        assert_eq!(nice_axis(f64::NAN, 5), (1.0, 0.2));
        assert_eq!(nice_axis(87.0, 5), (100.0, 20.0));
        assert_eq!(nice_axis(1234.0, 10), (1400.0, 200.0));
        assert_eq!(tick_label(0.4, 0.2), "0.4");
        assert_eq!(tick_label(0.0, 0.005), "0");
        assert_eq!(ms(0.012), "0.012 ms");
        assert_eq!(compact(12_500.0), "12.5k");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(bytes(450_000), "450.0 kB");
    }
}
