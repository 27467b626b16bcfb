//! `--format diff` end to end on a real Go module: a report written by hand with the
//! lines of its appends and inserts (paths as another machine compiled them), the diff
//! applied with `patch -p1` and with `git apply`, and the patched module checked by the
//! Go toolchain itself: `gofmt -l` prints nothing and `go build ./...` succeeds.
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mapwatch::report::diff::{EditKind, plan};
use mapwatch::report::model::{
    Advice, CaptureInfo, Distribution, Location, MapSite, Report, SCHEMA_VERSION, SliceSite, Stack,
    Summary, Timeline,
};
use support::in_ci;

const GO_MOD: &str = "module example.com/shop\n\ngo 1.21\n";

const MAIN_GO: &str = r#"package main

import (
	"fmt"
	"strings"

	"example.com/shop/store"
)

// words splits every line into words.
func words(lines []string) []string {
	var out []string
	for _, l := range lines {
		for _, w := range strings.Fields(l) {
			out = append(out, w)
		}
	}
	return out
}

func counts(words []string) map[string]int {
	seen := make(map[string]int)
	for _, w := range words {
		seen[w]++
	}
	seen["total"] = len(words)
	return seen
}

func lengths(words []string) []int {
	ls := make([]int, 0, 4)
	each(words, func(w string) {
		for i := 0; i < len(w); i++ {
			ls = append(ls, i)
		}
	})
	return ls
}

// addWord grows its caller's slice: the declaration to pre-size is the caller's.
func addWord(upper bool, out []string, w string) []string {
	if upper {
		w = strings.ToUpper(w)
	}
	return append(out, w)
}

func shout(words []string) []string {
	var loud []string
	for _, w := range words {
		loud = addWord(true, loud, w)
	}
	return loud
}

func addPair(pairs []string, a, b string) []string {
	return append(pairs, a+b)
}

// pairs calls addPair from two lines, so no one declaration feeds its append.
func pairs(words []string) []string {
	var ps []string
	for i := 1; i < len(words); i++ {
		ps = addPair(ps, words[i-1], words[i])
	}
	ps = addPair(ps, words[0], words[len(words)-1])
	return ps
}

func each(words []string, f func(string)) {
	for _, w := range words {
		f(w)
	}
}

func main() {
	ws := words([]string{"a b", "c d e"})
	kept := store.Keep(ws, func(s string) bool { return s != "b" })
	ix := store.NewIndex()
	for _, w := range kept {
		ix.Add(w)
	}
	fmt.Println(len(ws), len(counts(ws)), len(lengths(ws)), len(store.Group(kept)))
	fmt.Println(len(shout(ws)), len(pairs(ws)))
}
"#;

const STORE_GO: &str = r#"package store

// Keep returns the elements ok accepts.
func Keep[T any](in []T, ok func(T) bool) []T {
	kept := []T{}
	for _, v := range in {
		if ok(v) {
			kept = append(kept, v)
		}
	}
	return kept
}

type Index struct {
	byName map[string]int
}

func NewIndex() *Index {
	return &Index{byName: map[string]int{}}
}

func (ix *Index) Add(name string) {
	ix.byName[name] = len(ix.byName)
}

func Group(items []string) map[int][]string {
	groups := map[int][]string{}
	for _, it := range items {
		groups[len(it)] = append(groups[len(it)], it)
	}
	return groups
}
"#;

/// The line of `src` containing `needle`.
fn line_of(src: &str, needle: &str) -> u32 {
    let index = src
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line contains {needle:?}"));
    u32::try_from(index).unwrap() + 1
}

fn location(function: &str, file: &str, src: &str, needle: &str) -> Option<Location> {
    Some(Location {
        function: function.into(),
        file: file.into(),
        line: line_of(src, needle),
    })
}

fn pre_size(n: u64) -> Advice {
    Advice::PreSize {
        n,
        code: format!("make(…, {n})"),
        growths_saved: 10,
        growths_saved_per_instance: 1.0,
        bytes_saved_per_s: 1.0,
        message: String::new(),
    }
}

fn slice_site(location: Option<Location>, advice: Advice) -> SliceSite {
    SliceSite {
        location,
        elem_types: vec!["string".into()],
        elem_size: Some(16),
        growths: 10,
        bytes_allocated: 0,
        bytes_copied: 0,
        bytes_copied_per_s: 0.0,
        instances: 1,
        growths_per_instance: Distribution::default(),
        final_cap: Distribution::default(),
        started_non_empty: 0,
        stacks: Vec::new(),
        advice,
    }
}

/// A site whose growths came through each caller (one stack each, the site inlined
/// into it).
fn called_from(
    location: Option<Location>,
    callers: &[Option<Location>],
    advice: Advice,
) -> SliceSite {
    let stacks = callers
        .iter()
        .map(|caller| Stack {
            frames: vec![location.clone().unwrap(), caller.clone().unwrap()],
            inlined: vec![true, false],
            growths: 5,
            bytes: 0,
        })
        .collect();
    SliceSite {
        stacks,
        ..slice_site(location, advice)
    }
}

fn map_site(location: Option<Location>, advice: Advice) -> MapSite {
    MapSite {
        location,
        map_types: Vec::new(),
        kinds: Default::default(),
        growths: 10,
        maps: 1,
        growths_per_map: Distribution::default(),
        size_at_last_growth: Distribution::default(),
        capacity_reached: Distribution::default(),
        hint: None,
        made_at: None,
        mean_load_factor_at_growth: None,
        mean_overflow_buckets_at_growth: None,
        stacks: Vec::new(),
        advice,
    }
}

/// What a capture of the module built on another machine (in /build/ci/shop, store
/// built with -trimpath) would report.
fn report() -> Report {
    let main = "/build/ci/shop/main.go";
    let store = "example.com/shop/store/store.go";
    let slice_sites = vec![
        slice_site(
            location("main.words", main, MAIN_GO, "out = append"),
            pre_size(300),
        ),
        slice_site(
            location("main.lengths.func1", main, MAIN_GO, "ls = append"),
            pre_size(40),
        ),
        slice_site(
            location(
                "example.com/shop/store.Keep[...]",
                store,
                STORE_GO,
                "kept = append",
            ),
            pre_size(128),
        ),
        slice_site(
            location(
                "example.com/shop/store.Group",
                store,
                STORE_GO,
                "= append(groups",
            ),
            pre_size(9),
        ),
        slice_site(None, pre_size(7)),
        slice_site(
            location("main.words", main, MAIN_GO, "out = append"),
            Advice::None {
                why: "already right".into(),
            },
        ),
        called_from(
            location("main.addWord", main, MAIN_GO, "return append(out, w)"),
            &[location("main.shout", main, MAIN_GO, "loud = addWord(")],
            pre_size(33),
        ),
        called_from(
            location("main.addPair", main, MAIN_GO, "return append(pairs"),
            &[
                location("main.pairs", main, MAIN_GO, "ps = addPair(ps, words[i-1]"),
                location("main.pairs", main, MAIN_GO, "ps = addPair(ps, words[0]"),
            ],
            pre_size(5),
        ),
    ];
    let map_sites = vec![
        map_site(
            location("main.counts", main, MAIN_GO, "seen[w]++"),
            pre_size(500),
        ),
        map_site(
            location("main.counts", main, MAIN_GO, "seen[\"total\"]"),
            pre_size(20),
        ),
        map_site(
            location(
                "example.com/shop/store.Group",
                store,
                STORE_GO,
                "groups[len(it)] =",
            ),
            pre_size(16),
        ),
        map_site(
            location(
                "example.com/shop/store.(*Index).Add",
                store,
                STORE_GO,
                "ix.byName[name]",
            ),
            pre_size(64),
        ),
    ];
    Report {
        schema_version: SCHEMA_VERSION,
        capture: CaptureInfo {
            binary: "/build/ci/shop/shop".into(),
            build_id: String::new(),
            go_version: "go1.27.3".into(),
            map_implementation: "swiss".into(),
            pid: 1,
            command: None,
            start_unix_s: 0.0,
            duration_s: 1.0,
            stopped_because: None,
            complete: true,
            damage: None,
            events_lost: 0,
            observations_dropped: 0,
        },
        summary: Summary::default(),
        slice_sites,
        map_sites,
        timeline: Timeline::default(),
        stw_pauses: Vec::new(),
    }
}

/// Where `cargo xtask setup` keeps Go toolchains.
fn go_bin() -> Option<PathBuf> {
    let cache = std::env::var_os("MAPWATCH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/mapwatch")
        });
    let bin = cache.join("go/go1.27.3/go/bin");
    (bin.join("go").is_file() && bin.join("gofmt").is_file()).then_some(bin)
}

fn cache_dir(bin: &Path) -> PathBuf {
    // bin is <cache>/go/go1.27.3/go/bin
    bin.ancestors().nth(4).unwrap().to_path_buf()
}

fn write_module(dir: &Path) {
    std::fs::create_dir_all(dir.join("store")).unwrap();
    std::fs::write(dir.join("go.mod"), GO_MOD).unwrap();
    std::fs::write(dir.join("main.go"), MAIN_GO).unwrap();
    std::fs::write(dir.join("store/store.go"), STORE_GO).unwrap();
}

/// Runs `command` in `dir` with `stdin`, returning stdout; panics with its output on
/// failure.
fn run(mut command: Command, dir: &Path, stdin: &str) -> String {
    use std::io::Write as _;
    command
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{command:?}");
    let mut child = command.spawn().unwrap_or_else(|e| panic!("{shown}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{shown} in {}: {}\n{stdout}{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn go_command(bin: &Path, tool: &str) -> Command {
    let cache = cache_dir(bin);
    let mut command = Command::new(bin.join(tool));
    command
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        .env("GOWORK", "off")
        // The module has no dependencies: nothing to download, and nothing may be.
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", cache.join("gocache"))
        .env("GOPATH", cache.join("gopath"));
    command
}

fn gofmt_and_build(bin: &Path, dir: &Path) {
    let mut gofmt = go_command(bin, "gofmt");
    gofmt.args(["-l", "."]);
    assert_eq!(run(gofmt, dir, ""), "", "gofmt -l in {}", dir.display());
    let mut build = go_command(bin, "go");
    build.args(["build", "./..."]);
    run(build, dir, "");
}

#[test]
fn diff_applies_and_the_module_still_formats_and_builds() {
    let Some(bin) = go_bin() else {
        assert!(!in_ci(), "no go1.27.3 toolchain: run `cargo xtask setup`");
        eprintln!("SKIP: no go1.27.3 toolchain; run `cargo xtask setup`");
        return;
    };
    let root = std::env::temp_dir().join(format!("mapwatch-report-diff-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let source = root.join("shop");
    write_module(&source);
    // The module as written is clean: what the patched copies show is the patch's.
    gofmt_and_build(&bin, &source);

    let plan = plan(&report(), &source).unwrap();
    let edits: Vec<(String, u32, EditKind, u64)> = plan
        .edits
        .iter()
        .map(|e| {
            let rel = e.file.strip_prefix(&source).unwrap();
            (rel.display().to_string(), e.line, e.kind, e.n)
        })
        .collect();
    assert_eq!(
        edits,
        [
            (
                "main.go".to_string(),
                line_of(MAIN_GO, "var out []string"),
                EditKind::Slice,
                300
            ),
            (
                "main.go".to_string(),
                line_of(MAIN_GO, "seen := make"),
                EditKind::Map,
                500
            ),
            (
                "main.go".to_string(),
                line_of(MAIN_GO, "ls := make"),
                EditKind::Slice,
                40
            ),
            (
                "main.go".to_string(),
                line_of(MAIN_GO, "var loud []string"),
                EditKind::Slice,
                33
            ),
            (
                "store/store.go".to_string(),
                line_of(STORE_GO, "kept := []T{}"),
                EditKind::Slice,
                128
            ),
            (
                "store/store.go".to_string(),
                line_of(STORE_GO, "groups := map"),
                EditKind::Map,
                16
            ),
        ]
    );
    let refusals: Vec<String> = plan.refusals.iter().map(|r| r.why.clone()).collect();
    assert_eq!(refusals.len(), 4, "{refusals:#?}");
    assert!(
        refusals[0].contains("an element of another map or slice"),
        "{refusals:#?}"
    );
    assert!(refusals[1].contains("no source line"), "{refusals:#?}");
    assert!(
        refusals[2]
            .contains("addPair appends to its parameter and returns it, and 2 lines call it"),
        "{refusals:#?}"
    );
    assert!(
        refusals[3].contains("the field `ix.byName`"),
        "{refusals:#?}"
    );

    let diff = plan.unified_diff();
    let main_at = diff.find("--- a/main.go\n+++ b/main.go\n").expect(&diff);
    let store_at = diff
        .find("--- a/store/store.go\n+++ b/store/store.go\n")
        .expect(&diff);
    assert!(main_at < store_at, "files out of order:\n{diff}");
    for added in [
        "+\tvar out = make([]string, 0, 300)\n",
        "+\tseen := make(map[string]int, 500)\n",
        "+\tls := make([]int, 0, 40)\n",
        "+\tkept := make([]T, 0, 128)\n",
        "+\tgroups := make(map[int][]string, 16)\n",
        "+\tvar loud = make([]string, 0, 33)\n",
    ] {
        assert!(diff.contains(added), "{added:?} not in:\n{diff}");
    }
    assert_eq!(
        diff.lines()
            .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
            .count(),
        6
    );

    for (tool, args) in [
        ("patch", &["-p1", "--batch", "--forward"][..]),
        ("git", &["apply", "-"][..]),
    ] {
        if Command::new(tool).arg("--version").output().is_err() {
            assert!(!in_ci(), "{tool} is not installed");
            eprintln!("SKIP: {tool} is not installed");
            continue;
        }
        let copy = root.join(format!("patched-{tool}"));
        write_module(&copy);
        let mut apply = Command::new(tool);
        apply.args(args);
        run(apply, &copy, &diff);
        let patched = std::fs::read_to_string(copy.join("main.go")).unwrap();
        assert!(
            patched.contains("\tvar out = make([]string, 0, 300)\n"),
            "{patched}"
        );
        gofmt_and_build(&bin, &copy);
    }
    // The plan read the source; it wrote nothing there.
    assert_eq!(
        std::fs::read_to_string(source.join("main.go")).unwrap(),
        MAIN_GO
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_missing_source_directory_is_an_error_and_missing_files_are_refusals() {
    let missing = std::env::temp_dir().join(format!("mapwatch-no-such-dir-{}", std::process::id()));
    let err = plan(&report(), &missing).unwrap_err();
    assert!(err.to_string().contains("mapwatch-no-such-dir"), "{err}");

    let empty = std::env::temp_dir().join(format!("mapwatch-empty-source-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let plan = plan(&report(), &empty).unwrap();
    assert!(plan.edits.is_empty());
    assert_eq!(plan.unified_diff(), "");
    // Every advised site is accounted for: 7 slice and 4 map sites advise pre-sizing.
    assert_eq!(plan.refusals.len(), 11, "{:#?}", plan.refusals);
    assert!(
        plan.refusals[0]
            .why
            .contains("no file under the source directory is named main.go"),
        "{:#?}",
        plan.refusals
    );
    let _ = std::fs::remove_dir_all(&empty);
}
