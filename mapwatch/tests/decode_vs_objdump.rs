//! Prologue decoding checked against Go's own disassembler: for every fixture binary of
//! every Go version, the probe offsets mapwatch computes for every probed function (first
//! instruction after the stack-bound check, every RET) must equal what
//! `go tool objdump` of the same toolchain shows. No root needed.
mod support;

use std::{path::Path, process::Command};

use mapwatch::{
    goelf::{GoBinary, decode},
    goruntime::functions::{
        GC_MARK_TERMINATION, GROW_TO_SMALL, GROW_TO_TABLE, GROWSLICE, GROWSLICE_BUF, HASH_GROW,
        MAKEMAP, MAKEMAP_SMALL, START_THE_WORLD, STOP_THE_WORLD, TABLE_GROW, TABLE_SPLIT,
    },
};
use support::{fixtures_dir, in_ci};

struct GoListing {
    after_check: u64,
    rets: Vec<u64>,
    /// (address, "slice.go:157") of every instruction.
    lines: Vec<(u64, String)>,
}

/// Parses `go tool objdump -s '^SYMBOL$'`: lines like
/// `  slice.go:157  0x44a3a0  493b6610  CMPQ SP, 0x10(R14)` (fields separated by tabs).
fn objdump(go: &Path, binary: &Path, symbol: &str, start: u64) -> GoListing {
    // objdump's -s is a regexp: quote the symbol's metacharacters ((*Map).grow…).
    let quoted: String = symbol
        .chars()
        .flat_map(|c| {
            let escape = "().*[]$^+?{}|\\".contains(c);
            escape.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect();
    let out = Command::new(go)
        .args(["tool", "objdump", "-s", &format!("^{quoted}$")])
        .arg(binary)
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("run go tool objdump");
    assert!(
        out.status.success(),
        "go tool objdump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = Vec::new();
    let instructions: Vec<(u64, String)> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line
                .split('\t')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .collect();
            let address = u64::from_str_radix(fields.get(1)?.strip_prefix("0x")?, 16).ok()?;
            lines.push((address, fields.first()?.to_string()));
            Some((address, fields.get(3)?.to_string()))
        })
        .collect();
    let jbe = instructions
        .iter()
        .position(|(_, text)| text.starts_with("JBE"))
        .unwrap_or_else(|| panic!("stack-bound check JBE in {symbol}"));
    GoListing {
        after_check: instructions[jbe + 1].0 - start,
        rets: instructions
            .iter()
            .filter(|(_, text)| text.starts_with("RET"))
            .map(|(address, _)| address - start)
            .collect(),
        lines,
    }
}

/// Every function mapwatch may probe.
const PROBED: [&str; 12] = [
    GROWSLICE,
    GROWSLICE_BUF,
    START_THE_WORLD,
    STOP_THE_WORLD,
    GC_MARK_TERMINATION,
    HASH_GROW,
    GROW_TO_SMALL,
    GROW_TO_TABLE,
    TABLE_GROW,
    TABLE_SPLIT,
    MAKEMAP,
    MAKEMAP_SMALL,
];

#[test]
fn probe_offsets_match_go_objdump_in_every_fixture() {
    let cache = std::env::var_os("MAPWATCH_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/mapwatch")
        });
    let Ok(versions) = std::fs::read_dir(fixtures_dir()) else {
        assert!(!in_ci(), "no fixtures: run `cargo xtask test`");
        eprintln!("SKIP: no fixtures; run `cargo xtask test`");
        return;
    };
    let mut checked = 0;
    for version in versions.filter_map(Result::ok) {
        let dir_name = version.file_name().to_string_lossy().into_owned();
        // "go1.24.11-noswissmap" was built by "go1.24.11"; go1.19 is Debian's.
        let go_name = dir_name.split('-').next().unwrap().to_string();
        let go = if go_name.starts_with("go1.19.") {
            Path::new("/usr/lib/go-1.19/bin/go").to_path_buf()
        } else {
            cache.join("go").join(&go_name).join("go/bin/go")
        };
        assert!(
            go.is_file(),
            "{} missing: run `cargo xtask setup`",
            go.display()
        );
        for entry in std::fs::read_dir(version.path())
            .unwrap()
            .filter_map(Result::ok)
        {
            let path = entry.path();
            if path.extension().is_some() {
                continue; // stamps
            }
            let binary = GoBinary::open(&path).unwrap_or_else(|e| panic!("{e}"));
            if !binary.has_symtab() {
                continue; // go tool objdump needs symbols; stripped plans have their own test
            }
            let mut seen = 0;
            for symbol in PROBED {
                let Some(function) = binary.function(symbol) else {
                    continue; // e.g. hashGrow in a Swiss-map build
                };
                seen += 1;
                let layout =
                    decode::analyze_function(binary.code(function).unwrap(), function.vaddr)
                        .unwrap();
                let expected = objdump(&go, &path, symbol, function.vaddr);
                let name = format!("{} {symbol}", path.display());
                assert_eq!(
                    layout.after_stack_check,
                    Some(expected.after_check),
                    "{name}: after-check offset"
                );
                assert_eq!(layout.rets, expected.rets, "{name}: RET offsets");
                // file:line from the pclntab, as Go's own disassembler prints it.
                let table = binary.pclntab().unwrap().expect("pclntab");
                // Go 1.19's objdump prints ":0" (no line) for PIE binaries; nothing to compare.
                for (address, go_line) in expected.lines.iter().filter(|(_, l)| l != ":0") {
                    let line = table.source_line(*address).unwrap().unwrap_or_else(|| {
                        panic!("{name}: no source line for {address:#x} ({go_line})")
                    });
                    let base = line.file.rsplit('/').next().unwrap();
                    assert_eq!(
                        format!("{base}:{}", line.line),
                        *go_line,
                        "{name}: line of {address:#x}"
                    );
                }
            }
            // growslice and some map functions in every build (which are linked varies).
            assert!(
                seen >= 4,
                "{}: only {seen} probed functions found",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 0 || !in_ci(), "no fixture binaries were checked");
    eprintln!("checked the probed functions in {checked} fixture binaries");
}
