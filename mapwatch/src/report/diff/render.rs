//! Rewrites applied to a file's text, and the unified diff of each file that
//! `patch -p1` and `git apply` read from the source directory. Pure.
use std::fmt::Write as _;
use std::ops::Range;

/// `text` with each `(range, replacement)` applied. Applied from the end of the file
/// back, so each range still means the original text's bytes; overlapping or
/// out-of-bounds ranges are skipped (the planner never makes them).
pub(super) fn apply(text: &str, rewrites: &[(Range<usize>, &str)]) -> String {
    let mut sorted: Vec<&(Range<usize>, &str)> = rewrites.iter().collect();
    sorted.sort_by_key(|(range, _)| std::cmp::Reverse(range.start));
    let mut out = text.to_string();
    let mut floor = text.len();
    for (range, replacement) in sorted {
        if range.start > range.end
            || range.end > floor
            || !text.is_char_boundary(range.start)
            || !text.is_char_boundary(range.end)
        {
            continue;
        }
        out.replace_range(range.clone(), replacement);
        floor = range.start;
    }
    out
}

/// One file's unified diff with 3 lines of context, headed `--- a/REL` / `+++ b/REL`;
/// empty when nothing changed.
pub(super) fn file_diff(rel: &str, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    let diff = similar::TextDiff::from_lines(old, new);
    let mut out = String::new();
    // Writing into a String only fails if Display does, which similar's doesn't.
    let _ = write!(
        out,
        "{}",
        diff.unified_diff()
            .context_radius(3)
            .header(&format!("a/{rel}"), &format!("b/{rel}"))
    );
    out
}

#[cfg(test)]
mod tests {
    use super::{apply, file_diff};

    #[test]
    fn rewrites_apply_from_the_end() {
        let text = "aaa bbb ccc";
        assert_eq!(apply(text, &[(0..3, "x"), (8..11, "yyyy")]), "x bbb yyyy");
        // Overlapping and out-of-range rewrites are dropped rather than mangling the text.
        assert_eq!(
            apply(text, &[(0..5, "x"), (4..6, "y"), (50..60, "z")]),
            "aaa yb ccc"
        );
    }

    #[test]
    fn unified_diff_has_headers_and_three_lines_of_context() {
        let old: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        let new = old.replace("line 10\n", "line ten\n");
        let diff = file_diff("pkg/h.go", &old, &new);
        let expected = "--- a/pkg/h.go\n+++ b/pkg/h.go\n@@ -7,7 +7,7 @@\n line 7\n line 8\n line 9\n-line 10\n+line ten\n line 11\n line 12\n line 13\n";
        assert_eq!(diff, expected);
        assert_eq!(file_diff("h.go", &old, &old), "");
        let diff = file_diff("h.go", "a\nb", "a\nc");
        assert!(
            diff.ends_with("-b\n\\ No newline at end of file\n+c\n\\ No newline at end of file\n"),
            "{diff}"
        );
    }
}
