//! `mapwatch record -- presize` then `mapwatch report`: the report names the fixture's
//! own sites (found by their `// site: NAME` markers) with the fixture's own counts, the
//! pre-sized sites do not appear, and the advised size covers the fixture's p95 final
//! length within twice it. One classic-map and one Swiss-map Go version.
mod support;

use std::{collections::HashMap, path::Path, process::Command};

use serde_json::Value;
use support::{Fixture, fixture, mapwatch_command, privileged};

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

/// Records one run of the fixture; returns the file and the fixture's done line.
fn record(binary: &Path, dir: &Path) -> (std::path::PathBuf, HashMap<String, u64>) {
    let file = dir.join("presize.mapwatch");
    let mut command = mapwatch_command();
    command
        .arg("record")
        .arg("-o")
        .arg(&file)
        .arg("--")
        .arg(binary);
    // The fixture's stdin and stdout are mapwatch's: the harness talks to it through them.
    let mut fixture = Fixture::start_command(&mut command);
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
        let (code, sarif, _) = run_report(&file, &["--format", "sarif"]);
        assert_eq!(code, 0);
        let sarif: Value = serde_json::from_str(&sarif).expect("SARIF JSON");
        let results = sarif["runs"][0]["results"].as_array().unwrap();
        assert!(results.iter().any(|r| {
            r["locations"][0]["physicalLocation"]["region"]["startLine"] == *items_line
        }));
        let (code, md, _) = run_report(&file, &[]);
        assert_eq!(code, 0);
        assert!(md.contains(&format!(
            "pre-size at {items_file}:{items_line}: make([]Item, 0, {n})"
        )));

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
    let dir = tempdir("killed");
    let file = dir.join("killed.mapwatch");
    let mut command = mapwatch_command();
    command
        .arg("record")
        .arg("-o")
        .arg(&file)
        .arg("--")
        .arg(&binary)
        .args(["-requests", "2000"]);
    let mut fixture = Fixture::start_command(&mut command);
    fixture.start_workload();
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

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mapwatch-record-report-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
