//! The growslice capacity rule against the real Go runtime. Each fixture flavor's
//! `capcheck` (fixtures/capcheck) appends to slices over a grid of element types, old
//! capacities and append counts, and prints what the runtime's growslice returned;
//! every line must equal `grown_capacity` for that binary's Go version and
//! GOEXPERIMENT. No BPF, no root: it only runs Go programs.
mod support;

use std::{path::Path, process::Command};

use mapwatch::goruntime::slice_growth::{SliceGrowthRule, grown_capacity, rule_for};
use support::{fixtures_dir, in_ci};

const FIXTURE: &str = "capcheck";
const MISSING: &str = "fixtures missing: run `cargo xtask test`";

/// One line of capcheck output: `<elem_size> <noscan:0|1> <old_cap> <new_len> <cap>`.
#[derive(Debug)]
struct Case {
    elem_size: u64,
    noscan: bool,
    old_cap: u64,
    new_len: u64,
    cap: u64,
}

impl Case {
    fn parse(line: &str) -> Option<Case> {
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let &[elem_size, noscan, old_cap, new_len, cap] = fields.as_slice() else {
            return None;
        };
        Some(Case {
            elem_size,
            noscan: match noscan {
                0 => false,
                1 => true,
                _ => return None,
            },
            old_cap,
            new_len,
            cap,
        })
    }
}

/// What one capcheck binary reported, checked.
struct Outcome {
    flavor: String,
    header: String,
    passed: usize,
    mismatches: Vec<String>,
}

/// The header `# capcheck go1.22.10 [X:…] goexperiment=<setting>`: Go minor and
/// GOEXPERIMENT, as the binary itself reports them.
fn parse_header(header: &str) -> Option<(u32, String)> {
    let rest = header.strip_prefix("# capcheck go1.")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let minor = digits.parse().ok()?;
    let goexperiment = header
        .split_whitespace()
        .find_map(|f| f.strip_prefix("goexperiment="))
        .unwrap_or("");
    Some((minor, goexperiment.to_owned()))
}

fn check(flavor: &str, binary: &Path) -> Outcome {
    let output = Command::new(binary)
        .output()
        .unwrap_or_else(|e| panic!("{flavor}: running {}: {e}", binary.display()));
    assert!(
        output.status.success(),
        "{flavor}: {} failed ({}): {}",
        binary.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("capcheck prints ASCII");
    let mut lines = stdout.lines();
    let header = lines.next().unwrap_or_default().to_owned();
    let (minor, goexperiment) = parse_header(&header)
        .unwrap_or_else(|| panic!("{flavor}: unexpected first line {header:?}"));
    // The directory is named after the toolchain; the binary must agree.
    assert!(
        header.contains(&format!(" {} ", flavor.split('-').next().unwrap())),
        "{flavor}: built by another toolchain: {header:?}"
    );
    let rule: SliceGrowthRule = rule_for(minor, &goexperiment).unwrap_or_else(|| {
        panic!("{flavor}: no slice growth rule for go1.{minor} ({goexperiment:?})")
    });
    let mut outcome = Outcome {
        flavor: flavor.to_owned(),
        header: header.clone(),
        passed: 0,
        mismatches: Vec::new(),
    };
    for line in lines {
        let case =
            Case::parse(line).unwrap_or_else(|| panic!("{flavor}: unparsable line {line:?}"));
        let derived = grown_capacity(
            rule,
            case.old_cap,
            case.new_len,
            case.elem_size,
            case.noscan,
        );
        if derived.new_cap == case.cap {
            outcome.passed += 1;
        } else {
            outcome.mismatches.push(format!(
                "{flavor} ({rule:?}): elem_size={} noscan={} old_cap={} new_len={}: \
                 Go cap {}, derived {}",
                case.elem_size, case.noscan, case.old_cap, case.new_len, case.cap, derived.new_cap
            ));
        }
    }
    outcome
}

#[test]
fn grown_capacity_matches_the_go_runtime() {
    let dir = fixtures_dir();
    // Every fixture flavor (target/fixtures/go<version>[-<experiment>]) with a capcheck.
    let mut flavors: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .filter(|(name, path)| name.starts_with("go") && path.join(FIXTURE).is_file())
                .map(|(name, path)| (name, path.join(FIXTURE)))
                .collect()
        })
        .unwrap_or_default();
    flavors.sort();
    if flavors.is_empty() {
        let message = format!("{MISSING} (no {}/go*/{FIXTURE})", dir.display());
        assert!(!in_ci(), "{message}");
        eprintln!("SKIP {message}");
        return;
    }

    // One capcheck takes a few seconds (it allocates up to 8 MiB per case); run them
    // side by side.
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = flavors
            .iter()
            .map(|(flavor, binary)| scope.spawn(move || check(flavor, binary)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });

    let mut all_mismatches = Vec::new();
    for outcome in &outcomes {
        eprintln!(
            "{}: {} cases, {} match, {} mismatch ({})",
            outcome.flavor,
            outcome.passed + outcome.mismatches.len(),
            outcome.passed,
            outcome.mismatches.len(),
            outcome.header
        );
        assert!(
            outcome.passed + outcome.mismatches.len() > 1000,
            "{}: too few cases; did capcheck stop early?",
            outcome.flavor
        );
        all_mismatches.extend(outcome.mismatches.iter().cloned());
    }
    if !all_mismatches.is_empty() {
        const SHOWN: usize = 50;
        let shown = all_mismatches.len().min(SHOWN);
        panic!(
            "{} mismatches between grown_capacity and the Go runtime (first {shown}):\n{}",
            all_mismatches.len(),
            all_mismatches[..shown].join("\n")
        );
    }
}
