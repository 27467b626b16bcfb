//! `mapwatch record -- presize` then `mapwatch report`: the report names the fixture's
//! own sites (found by their `// site: NAME` markers) with the fixture's own counts, the
//! pre-sized sites do not appear, and the advised size covers the fixture's p95 final
//! length within twice it. One classic-map and one Swiss-map Go version.
mod schema;
mod support;

use std::{collections::HashMap, path::Path, process::Command};

use serde_json::Value;
use support::{Fixture, cache_dir, fixture, go_toolchain, mapwatch_command, privileged};

/// (flavour, what its maps are): the Go matrix of this test.
const FLAVORS: [&str; 2] = ["go1.22.10", "go1.26.6"];

/// `// site: NAME` markers of fixtures/presize: NAME → (file name, line).
fn sites() -> HashMap<String, (String, u32)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/presize");
    let mut sites = HashMap::new();
    for entry in std::fs::read_dir(&dir).expect("fixtures/presize") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("read a fixture file");
        for (i, line) in text.lines().enumerate() {
            let code_line = !line.trim_start().starts_with("//");
            if let Some((_, site)) = line.split_once("// site: ").filter(|_| code_line) {
                sites.insert(site.trim().to_string(), (name.clone(), i as u32 + 1));
            }
        }
    }
    assert_eq!(sites.len(), 7, "{sites:?}");
    sites
}

/// `mapwatch record -o FILE -- BINARY ARGS…`. The fixture's stdin and stdout are
/// mapwatch's: the harness talks to it through them.
fn record_command(file: &Path, binary: &Path, args: &[&str]) -> Command {
    let mut command = mapwatch_command();
    command
        .arg("record")
        .arg("-o")
        .arg(file)
        .arg("--")
        .arg(binary)
        .args(args);
    command
}

/// Records one run of the fixture; returns the file and the fixture's done line.
fn record(binary: &Path, dir: &Path) -> (std::path::PathBuf, HashMap<String, u64>) {
    let file = dir.join("presize.mapwatch");
    let mut fixture = Fixture::start_command(&mut record_command(&file, binary, &[]));
    let done = fixture.run_workload_fields();
    let status = fixture.finish();
    assert!(status.success(), "mapwatch record: {status}");
    (file, done)
}

fn run_report(file: &Path, args: &[&str]) -> (i32, String, String) {
    let out = mapwatch_command()
        .arg("report")
        .arg(file)
        .args(args)
        .output()
        .expect("run mapwatch report");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The report's slice or map site at file:line, if any.
fn site_at<'a>(sites: &'a [Value], file: &str, line: u32) -> Option<&'a Value> {
    sites.iter().find(|s| {
        s["location"]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with(&format!("/{file}")))
            && s["location"]["line"] == line
    })
}

#[test]
fn the_report_names_the_fixtures_sites_with_its_own_counts() {
    let Some(_guard) = privileged("the_report_names_the_fixtures_sites_with_its_own_counts") else {
        return;
    };
    let sites = sites();
    for flavor in FLAVORS {
        let Some(binary) = fixture(flavor, "presize") else {
            return;
        };
        let dir = tempdir(flavor);
        let (file, done) = record(&binary, &dir);
        let (code, json, stderr) = run_report(&file, &["--format", "json"]);
        assert_eq!(code, 0, "{flavor}: report failed: {stderr}");
        let report: Value = serde_json::from_str(&json).expect("report JSON");
        assert_eq!(report["schema_version"], 1);
        schema::assert_valid_report(&report);
        assert_eq!(report["capture"]["complete"], true, "{flavor}");
        let slices = report["slice_sites"].as_array().expect("slice_sites");
        let at = |name: &str| {
            let (file, line) = &sites[name];
            site_at(slices, file, *line)
        };
        for (name, grows) in [
            ("items", "items_grows"),
            ("tags", "tags_grows"),
            ("generic", "generic_grows"),
        ] {
            let site = at(name).unwrap_or_else(|| panic!("{flavor}: no slice site {name}"));
            assert_eq!(site["growths"], done[grows], "{flavor}: growths at {name}");
        }
        // Named by the function the append is written in, inlined or generic.
        assert_eq!(at("tags").unwrap()["location"]["function"], "main.addTag");
        assert!(
            at("generic").unwrap()["location"]["function"]
                .as_str()
                .unwrap()
                .starts_with("main.collect["),
            "{flavor}"
        );
        assert!(
            at("presized_slice").is_none(),
            "{flavor}: the pre-sized slice grew"
        );
        assert_eq!(done["presized_slice_grows"], 0);
        // Every request's items slice is one instance, whose growths chain.
        let items = at("items").unwrap();
        assert_eq!(items["instances"], done["requests"], "{flavor}: instances");
        let advice = &items["advice"];
        assert_eq!(advice["kind"], "pre_size", "{flavor}: {advice}");
        let (n, p95) = (advice["n"].as_u64().unwrap(), done["items_p95_len"]);
        assert!(
            n >= p95 && n <= 2 * p95,
            "{flavor}: advised {n} for a p95 length of {p95}"
        );
        assert!(
            advice["code"]
                .as_str()
                .unwrap()
                .starts_with("make([]Item, 0, "),
            "{flavor}: {advice}"
        );
        // Maps: named by the line that inserted (the kernel walks the stack past the
        // runtime's frames).
        let maps = report["map_sites"].as_array().expect("map_sites");
        let (index_file, index_line) = &sites["index"];
        let index = site_at(maps, index_file, *index_line)
            .unwrap_or_else(|| panic!("{flavor}: no map site at the index insert"));
        assert_eq!(
            index["growths"], done["index_grows"],
            "{flavor}: index growths"
        );
        assert_eq!(index["maps"], done["requests"], "{flavor}: index maps");
        assert_eq!(
            index["map_types"],
            serde_json::json!(["map[int64]int"]),
            "{flavor}"
        );
        // Each map's make was seen and tied to it: the line, and no hint.
        let (make_file, make_line) = &sites["index_make"];
        assert!(
            index["made_at"]["file"]
                .as_str()
                .is_some_and(|f| f.ends_with(&format!("/{make_file}"))),
            "{flavor}: {}",
            index["made_at"]
        );
        assert_eq!(index["made_at"]["line"], *make_line, "{flavor}");
        assert_eq!(index["hint"]["count"], done["requests"], "{flavor}");
        assert_eq!(index["hint"]["max"], 0, "{flavor}");
        let map_advice = &index["advice"];
        let (map_n, len) = (map_advice["n"].as_u64().unwrap(), done["index_len"]);
        assert!(
            map_n >= len && map_n <= 2 * len,
            "{flavor}: advised {map_n} for {len} entries"
        );
        assert_eq!(map_advice["code"], format!("make(map[int64]int, {map_n})"));
        let (presized_file, presized_line) = &sites["presized_map"];
        assert!(
            site_at(maps, presized_file, *presized_line).is_none(),
            "{flavor}: the pre-sized map grew"
        );
        assert_eq!(done["presized_map_grows"], 0);
        assert_eq!(report["summary"]["gc_cycles"], done["gc"], "{flavor}");

        // The other formats name the same advised site.
        let (items_file, items_line) = &sites["items"];
        let (code, vet, _) = run_report(&file, &["--format", "vet"]);
        assert_eq!(code, 0);
        assert!(
            vet.lines()
                .any(|l| l.contains(&format!("/{items_file}:{items_line}:1: pre-size"))),
            "{flavor}: vet output:\n{vet}"
        );
        // SARIF with --source: paths relative to the checkout, as code scanning wants.
        let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/presize");
        let (code, sarif, _) = run_report(
            &file,
            &["--format", "sarif", "--source", checkout.to_str().unwrap()],
        );
        assert_eq!(code, 0);
        let sarif: Value = serde_json::from_str(&sarif).expect("SARIF JSON");
        let results = sarif["runs"][0]["results"].as_array().unwrap();
        assert!(
            results.iter().any(|r| {
                let location = &r["locations"][0]["physicalLocation"];
                location["region"]["startLine"] == *items_line
                    && location["artifactLocation"]["uri"] == items_file.as_str()
            }),
            "{flavor}: {results:?}"
        );
        let (code, md, _) = run_report(&file, &[]);
        assert_eq!(code, 0);
        assert!(md.contains(&format!(
            "pre-size at {items_file}:{items_line}: make([]Item, 0, {n})"
        )));

        // pprof: the real `go tool pprof -top` lists the advised function with the
        // report's count of slice growths there (map growths under it are cumulative).
        if let Some(go) = go_toolchain(flavor) {
            let profile = dir.join("presize.pb.gz");
            let (code, _, stderr) = run_report(
                &file,
                &["--format", "pprof", "-o", profile.to_str().unwrap()],
            );
            assert_eq!(code, 0, "{stderr}");
            let top = Command::new(&go)
                .args(["tool", "pprof", "-top", "-lines"])
                .arg(&profile)
                .env("GOTOOLCHAIN", "local")
                .env("GOCACHE", cache_dir().join("gocache"))
                .env("PPROF_TMPDIR", &dir)
                .output()
                .expect("go tool pprof");
            let top = String::from_utf8_lossy(&top.stdout);
            let items_row = top
                .lines()
                .find(|l| l.contains(&format!("{items_file}:{items_line}")))
                .unwrap_or_else(|| panic!("{flavor}: pprof -top -lines:\n{top}"));
            let flat: u64 = items_row
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(flat, done["items_grows"], "{flavor}: {items_row}");
            // The inlined addTag is a line of its caller's location.
            let traces = Command::new(&go)
                .args(["tool", "pprof", "-traces"])
                .arg(&profile)
                .env("GOTOOLCHAIN", "local")
                .env("GOCACHE", cache_dir().join("gocache"))
                .env("PPROF_TMPDIR", &dir)
                .output()
                .expect("go tool pprof -traces");
            let traces = String::from_utf8_lossy(&traces.stdout);
            let lines: Vec<&str> = traces.lines().map(str::trim).collect();
            assert!(
                lines
                    .windows(2)
                    .any(|w| w[0].ends_with("main.addTag (inline)")
                        && w[1].starts_with("main.tagRequest")),
                "{flavor}: pprof -traces:\n{traces}"
            );
        }
        let (code, svg, _) = run_report(&file, &["--format", "svg"]);
        assert_eq!(code, 0);
        assert!(
            svg.starts_with("<svg") || svg.starts_with("<?xml"),
            "{flavor}"
        );
        assert!(
            svg.contains(&format!("{items_file}:{items_line}")),
            "{flavor}"
        );

        // The gate: exit 3 and a summary when a condition holds, 0 when none does.
        let (code, _, stderr) =
            run_report(&file, &["--format", "json", "--fail-on", "slice_grow>100"]);
        assert_eq!(code, 3, "{stderr}");
        assert!(stderr.contains("gate FAILED") && stderr.contains("FAIL slice_grow>100"));
        let (code, _, stderr) = run_report(&file, &["--fail-on", "slice_grow>100M,map_grow>=1M"]);
        assert_eq!(code, 0, "{stderr}");
    }
}

/// A capture killed mid-write is readable up to its last complete block.
#[test]
fn a_killed_capture_is_still_read() {
    let Some(_guard) = privileged("a_killed_capture_is_still_read") else {
        return;
    };
    let Some(binary) = fixture("go1.22.10", "presize") else {
        return;
    };
    let (fixture, file) = long_capture(&binary, "killed");
    // Blocks are written every second: wait for one past the header.
    let header_only = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) <= header_only + 64 {
        assert!(std::time::Instant::now() < deadline, "no block written");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for pid in [fixture.child_pid(), fixture.pid] {
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("kill");
    }
    drop(fixture);
    let (code, md, stderr) = run_report(&file, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(md.contains("**Incomplete capture**"), "{md}");
    assert!(stderr.contains("no end record"), "{stderr}");
    assert!(md.contains("handler.go"), "{md}");
}

/// Ctrl-C ends a capture early with a complete file; a command it started and that
/// still runs is stopped.
#[test]
fn ctrl_c_ends_the_capture_with_a_complete_file() {
    let Some(_guard) = privileged("ctrl_c_ends_the_capture_with_a_complete_file") else {
        return;
    };
    let Some(binary) = fixture("go1.22.10", "presize") else {
        return;
    };
    let (fixture, file) = long_capture(&binary, "interrupted");
    std::thread::sleep(std::time::Duration::from_secs(2));
    Command::new("kill")
        .args(["-INT", &fixture.child_pid().to_string()])
        .status()
        .expect("kill -INT");
    let status = fixture.finish();
    assert!(status.success(), "mapwatch record after Ctrl-C: {status}");
    let (code, json, stderr) = run_report(&file, &["--format", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["capture"]["complete"], true, "{}", report["capture"]);
    assert_eq!(report["capture"]["stopped_because"], "interrupted");
    assert!(report["summary"]["slice_growths"].as_u64().unwrap() > 0);
}

/// `mapwatch record -- presize` of a run far longer than the test, its workload started.
fn long_capture(binary: &Path, name: &str) -> (Fixture, std::path::PathBuf) {
    let file = tempdir(name).join(format!("{name}.mapwatch"));
    let mut command = record_command(&file, binary, &["-requests", "100000"]);
    let mut fixture = Fixture::start_command(&mut command);
    fixture.start_workload();
    (fixture, file)
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mapwatch-record-report-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The end-to-end proof that the advice is right: the diff applied to a copy of the
/// fixture's source, the copy rebuilt with the same Go and recorded again, the advised
/// sites grow no more — by the fixture's own count and by the new report.
#[test]
fn the_diff_applied_removes_the_advised_growth() {
    let Some(_guard) = privileged("the_diff_applied_removes_the_advised_growth") else {
        return;
    };
    let sites = sites();
    for flavor in FLAVORS {
        let Some(binary) = fixture(flavor, "presize") else {
            return;
        };
        let Some(go) = go_toolchain(flavor) else {
            return;
        };
        let dir = tempdir(&format!("applied-{flavor}"));
        let (file, before) = record(&binary, &dir);

        // The fixtures' Go module (go.mod, internal/, presize/) copied, the diff made
        // against the copy of presize/ and applied there.
        let module = dir.join("fixtures");
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures"),
            &module,
        );
        let source = module.join("presize");
        let (code, patch, stderr) = run_report(
            &file,
            &["--format", "diff", "--source", source.to_str().unwrap()],
        );
        assert_eq!(code, 0, "{flavor}: {stderr}");
        assert!(patch.contains("make([]Item, 0, "), "{flavor}: {patch}");
        assert!(patch.contains("make(map[int64]int, "), "{flavor}: {patch}");
        // The append inside the inlined addTag grows tagRequest's slice: its
        // declaration there is the one pre-sized.
        assert!(
            patch.contains("var tags = make([]Tag, 0, "),
            "{flavor}: {patch}"
        );
        let mut apply = Command::new("patch");
        apply
            .arg("-p1")
            .current_dir(&source)
            .stdin(std::process::Stdio::piped());
        let mut child = apply.spawn().expect("run patch");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(patch.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "{flavor}: patch failed");
        let gofmt = Command::new(go.with_file_name("gofmt"))
            .arg("-l")
            .arg(&source)
            .output()
            .expect("gofmt");
        assert!(gofmt.stdout.is_empty(), "{flavor}: gofmt -l: {gofmt:?}");
        let rebuilt = dir.join("presize-presized");
        let build = Command::new(&go)
            .args(["build", "-o"])
            .arg(&rebuilt)
            .arg(".")
            .current_dir(&source)
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "")
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", "0")
            .env("GOCACHE", cache_dir().join("gocache"))
            .env("GOPATH", cache_dir().join("gopath"))
            .output()
            .expect("go build");
        assert!(build.status.success(), "{flavor}: {build:?}");

        let again_dir = tempdir(&format!("again-{flavor}"));
        let (again, after) = record(&rebuilt, &again_dir);
        for grows in ["items_grows", "tags_grows", "generic_grows", "index_grows"] {
            assert_ne!(before[grows], 0, "{flavor}: {grows} before the diff");
            assert_eq!(after[grows], 0, "{flavor}: {grows} after the diff");
        }
        let (code, json, stderr) = run_report(&again, &["--format", "json"]);
        assert_eq!(code, 0, "{stderr}");
        let report: Value = serde_json::from_str(&json).unwrap();
        let slices = report["slice_sites"].as_array().unwrap();
        let maps = report["map_sites"].as_array().unwrap();
        for name in ["items", "tags", "generic"] {
            let (file, line) = &sites[name];
            assert!(
                site_at(slices, file, *line).is_none(),
                "{flavor}: {name} still grows"
            );
        }
        let (file, line) = &sites["index"];
        assert!(
            site_at(maps, file, *line).is_none(),
            "{flavor}: index grows"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}
