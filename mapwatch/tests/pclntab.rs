//! The pclntab parser checked against independent truths, for every fixture of every Go
//! version: the binary's own .symtab (entry addresses), `go tool objdump` of the same
//! toolchain (file:line of every instruction of runtime.growslice), and the stripped
//! build (`-ldflags=-s -w`) of the same program, which must give the same functions.
//! No root needed.
mod support;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use mapwatch::{
    goelf::pclntab::{PclnFunction, Pclntab},
    goruntime::functions::{
        GC_MARK_TERMINATION, GROW_TO_SMALL, GROW_TO_TABLE, GROWSLICE, GROWSLICE_BUF, HASH_GROW,
        MAKEMAP, MAKEMAP_SMALL, START_THE_WORLD, STOP_THE_WORLD, TABLE_GROW, TABLE_SPLIT,
    },
};
use support::{cache_dir, fixtures_dir, in_ci};

/// The functions mapwatch probes.
const PROBED: &[&str] = &[
    GROWSLICE,
    GROWSLICE_BUF,
    HASH_GROW,
    GROW_TO_SMALL,
    GROW_TO_TABLE,
    TABLE_GROW,
    TABLE_SPLIT,
    MAKEMAP,
    MAKEMAP_SMALL,
    START_THE_WORLD,
    STOP_THE_WORLD,
    GC_MARK_TERMINATION,
];

/// Whether pclntab name `pcln` and .symtab name `symbol` are the same function:
/// .symtab adds ".abi0" to assembly functions and ABI0 wrappers, writes "·" as "."
/// (cmd/link/internal/ld/symtab.go `putelfsym`), and spells out what the pclntab
/// abbreviates to "[...]" (type arguments of generic shapes, array lengths in
/// generated `type..eq.[5]T`).
fn same_function(pcln: &str, symbol: &str) -> bool {
    fn elide_brackets(name: &str) -> String {
        let mut out = String::new();
        let mut depth = 0usize;
        for c in name.chars() {
            match c {
                '[' => {
                    if depth == 0 {
                        out.push_str("[...]");
                    }
                    depth += 1;
                }
                ']' if depth > 0 => depth -= 1,
                _ if depth == 0 => out.push(c),
                _ => {}
            }
        }
        out
    }
    let symbol = symbol.strip_suffix(".abi0").unwrap_or(symbol);
    let pcln = pcln.replace('·', ".");
    pcln == symbol || elide_brackets(&pcln) == elide_brackets(symbol)
}

/// A fixture's bytes and what the test needs from its ELF headers.
struct Elf {
    data: Vec<u8>,
    /// File range of the pclntab section.
    pclntab: (usize, usize),
    text: u64,
    /// Function symbols, name → addresses (ABI wrappers may share a name).
    symbols: HashMap<String, Vec<u64>>,
}

impl Elf {
    fn open(path: &Path) -> Elf {
        let data = std::fs::read(path).unwrap();
        let elf = object::File::parse(&*data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // PIE builds of Go ≤1.25 put the table in relro (its textStart needs a
        // relocation); 1.26+ stopped storing textStart and moved it back.
        let section = elf
            .section_by_name(".gopclntab")
            .or_else(|| elf.section_by_name(".data.rel.ro.gopclntab"))
            .unwrap_or_else(|| panic!("{}: no pclntab section", path.display()));
        let (offset, size) = section.file_range().unwrap();
        // The fallback base as cmd/internal/objfile computes it. Right for internally
        // linked binaries (all fixtures); externally linked ones put C code first.
        let text = elf.section_by_name(".text").unwrap().address();
        let mut symbols: HashMap<String, Vec<u64>> = HashMap::new();
        for symbol in elf.symbols() {
            if symbol.kind() == object::SymbolKind::Text
                && let Ok(name) = symbol.name()
            {
                symbols
                    .entry(name.to_string())
                    .or_default()
                    .push(symbol.address());
            }
        }
        drop(elf);
        Elf {
            pclntab: (offset as usize, (offset + size) as usize),
            data,
            text,
            symbols,
        }
    }

    fn table(&self) -> Pclntab<'_> {
        Pclntab::parse(&self.data[self.pclntab.0..self.pclntab.1], self.text).unwrap()
    }

    /// The raw pcHeader.textStart word.
    fn header_text_start(&self) -> u64 {
        let at = self.pclntab.0 + 24;
        u64::from_le_bytes(self.data[at..at + 8].try_into().unwrap())
    }
}

/// (directory name, directory) of every fixture flavour: go<version>[-experiment].
fn flavor_dirs() -> Option<Vec<(String, PathBuf)>> {
    let mut dirs: Vec<(String, PathBuf)> = std::fs::read_dir(fixtures_dir())
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .filter(|(name, path)| name.starts_with("go") && path.is_dir())
                .collect()
        })
        .unwrap_or_default();
    if dirs.is_empty() {
        assert!(!in_ci(), "no fixtures: run `cargo xtask test`");
        eprintln!(
            "SKIP: no fixtures in {}; run `cargo xtask test`",
            fixtures_dir().display()
        );
        return None;
    }
    dirs.sort();
    Some(dirs)
}

/// Binaries of a flavour directory (stamps and other files with an extension skipped).
fn binaries(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_none())
        .collect();
    paths.sort();
    paths
}

/// "go1.24.11-noswissmap" → (1, 24).
fn go_minor(flavor: &str) -> (u32, u32) {
    let version = flavor.trim_start_matches("go");
    let mut parts = version.split(['.', '-']).map(|p| p.parse::<u32>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}

/// The toolchain that built a flavour (go1.19 is Debian's, the rest from the cache).
fn go_tool(flavor: &str) -> PathBuf {
    let name = flavor.split('-').next().unwrap();
    if name.starts_with("go1.19.") {
        return PathBuf::from("/usr/lib/go-1.19/bin/go");
    }
    cache_dir().join("go").join(name).join("go/bin/go")
}

fn all_functions<'a>(path: &Path, table: &Pclntab<'a>) -> Vec<PclnFunction<'a>> {
    let functions: Vec<PclnFunction<'a>> = table
        .functions()
        .map(|f| f.unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect();
    assert_eq!(functions.len(), table.len());
    for pair in functions.windows(2) {
        assert_eq!(pair[0].end, pair[1].entry, "{}: {pair:?}", path.display());
    }
    functions
}

#[test]
fn pclntab_matches_symtab_in_every_fixture() {
    let Some(dirs) = flavor_dirs() else { return };
    let mut checked = 0;
    for (flavor, dir) in dirs {
        let (_, minor) = go_minor(&flavor);
        for path in binaries(&dir) {
            let elf = Elf::open(&path);
            let table = elf.table();
            let name = path.display();
            assert_eq!(table.go_1_18_layout(), minor < 20, "{name}");
            // Go 1.26 stopped writing textStart (src/runtime/symtab.go pcHeader `_`).
            if minor >= 26 {
                assert_eq!(elf.header_text_start(), 0, "{name}");
            } else {
                assert_eq!(elf.header_text_start(), elf.text, "{name}");
            }
            assert_eq!(table.text_start(), elf.text, "{name}");
            let functions = all_functions(&path, &table);
            let mut by_name: HashMap<&str, Vec<u64>> = HashMap::new();
            for function in &functions {
                by_name
                    .entry(function.name)
                    .or_default()
                    .push(function.entry);
                // The binary search finds each function from its first and last byte.
                for pc in [function.entry, function.end - 1] {
                    if function.end > function.entry {
                        assert_eq!(
                            table.function_at(pc).unwrap(),
                            Some(*function),
                            "{name}: {pc:#x}"
                        );
                    }
                }
            }
            if elf.symbols.is_empty() {
                continue; // stripped: compared with its twin below
            }
            // Every function symbol that the pclntab names has the same entry. (Where
            // an ABI wrapper and its function share a pclntab name, .symtab calls the
            // ABI0 one "name.abi0": the plain symbol is one of the entries.)
            for (symbol, addresses) in &elf.symbols {
                let Some(entries) = by_name.get(symbol.as_str()) else {
                    continue;
                };
                for address in addresses {
                    assert!(
                        entries.contains(address),
                        "{name}: {symbol} at {address:#x} in .symtab, {entries:x?} in pclntab"
                    );
                }
            }
            // And the other way round: every pclntab function has a symbol at its entry
            // with the same name, up to the spellings that differ (".abi0", and "[...]"
            // for type arguments and array lengths).
            let mut at_address: HashMap<u64, Vec<&str>> = HashMap::new();
            for (symbol, addresses) in &elf.symbols {
                for address in addresses {
                    at_address.entry(*address).or_default().push(symbol);
                }
            }
            for function in &functions {
                let symbols = at_address.get(&function.entry).cloned().unwrap_or_default();
                assert!(
                    symbols.iter().any(|s| same_function(function.name, s)),
                    "{name}: {} at {:#x}, .symtab has {symbols:?} there",
                    function.name,
                    function.entry
                );
            }
            // Names shared by several functions resolve to the first in address order;
            // none of the probed functions is among them.
            for (function, entries) in by_name.iter().filter(|(_, e)| e.len() > 1) {
                if let Some(found) = table.find_function(function).unwrap() {
                    assert_eq!(found.entry, entries[0], "{name}: {function}");
                }
            }
            for probed in PROBED {
                if let Some(entries) = by_name.get(probed) {
                    assert_eq!(entries.len(), 1, "{name}: {probed} {entries:x?}");
                    assert_eq!(elf.symbols[*probed], *entries, "{name}: {probed}");
                }
            }
            let growslice = table.find_function(GROWSLICE).unwrap().unwrap();
            assert_eq!(
                elf.symbols[GROWSLICE],
                [growslice.entry],
                "{name}: growslice"
            );
            checked += 1;
        }
    }
    assert!(checked > 0 || !in_ci(), "no fixture with a .symtab checked");
}

/// Builds `fixtures/slicegrow` with `-ldflags=-s -w` into a temporary directory, the
/// way xtask builds `slicegrow-stripped`; None (with a message) if the toolchain is
/// missing.
fn build_stripped(flavor: &str, go: &Path) -> Option<PathBuf> {
    if !go.is_file() {
        eprintln!(
            "SKIP {flavor}: {} missing for the stripped build",
            go.display()
        );
        return None;
    }
    let experiment = flavor.split_once('-').map(|(_, e)| e).unwrap_or("");
    let out = std::env::temp_dir().join(format!(
        "mapwatch-pclntab-{}-{flavor}-slicegrow-stripped",
        std::process::id()
    ));
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let status = Command::new(go)
        .args(["build", "-ldflags=-s -w", "-o"])
        .arg(&out)
        .arg("./slicegrow")
        .current_dir(&source)
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", cache_dir().join("gocache"))
        .env("GOEXPERIMENT", experiment)
        .env("GOFLAGS", "")
        .status()
        .expect("run go build");
    assert!(
        status.success(),
        "{flavor}: go build -ldflags='-s -w' failed"
    );
    Some(out)
}

#[test]
fn stripped_builds_have_the_same_functions() {
    let Some(dirs) = flavor_dirs() else { return };
    let mut compared = 0;
    for (flavor, dir) in dirs {
        let full_path = dir.join("slicegrow");
        if !full_path.is_file() {
            continue;
        }
        let fixture = dir.join("slicegrow-stripped");
        let (stripped_path, temporary) = if fixture.is_file() {
            (fixture, false)
        } else {
            match build_stripped(&flavor, &go_tool(&flavor)) {
                Some(path) => (path, true),
                None => continue,
            }
        };
        let (full, stripped) = (Elf::open(&full_path), Elf::open(&stripped_path));
        let name = stripped_path.display();
        assert!(stripped.symbols.is_empty(), "{name} has a .symtab");
        let (full_table, stripped_table) = (full.table(), stripped.table());
        let growslice = stripped_table.find_function(GROWSLICE).unwrap().unwrap();
        assert_eq!(full.symbols[GROWSLICE], [growslice.entry], "{name}");
        // -s -w drop symbols and DWARF only: code, and so the function table, is the same.
        assert_eq!(
            all_functions(&full_path, &full_table),
            all_functions(&stripped_path, &stripped_table),
            "{name}"
        );
        for pc in growslice.entry..growslice.entry + 64 {
            assert_eq!(
                stripped_table.source_line(pc).unwrap(),
                full_table.source_line(pc).unwrap(),
                "{name}: {pc:#x}"
            );
        }
        if temporary {
            let _ = std::fs::remove_file(&stripped_path);
        }
        compared += 1;
    }
    assert!(compared > 0 || !in_ci(), "no stripped build compared");
}

/// `go tool objdump -s '^runtime.growslice$'`: the function's file from the TEXT line
/// (`TEXT runtime.growslice(SB) /path/to/runtime/slice.go`) and (address, base file
/// name, line) of each instruction (`  slice.go:178\t\t0x478ba0\t\t493b6610\t\t...`).
fn objdump_lines(go: &Path, binary: &Path, symbol: &str) -> (String, Vec<(u64, String, u32)>) {
    let out = Command::new(go)
        .args([
            "tool",
            "objdump",
            "-s",
            &format!("^{}$", symbol.replace('.', "\\.")),
        ])
        .arg(binary)
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("run go tool objdump");
    assert!(
        out.status.success(),
        "go tool objdump {}: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut file = String::new();
    let mut lines = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("TEXT ") {
            file = rest.split_once(' ').unwrap().1.trim().to_string();
            continue;
        }
        let fields: Vec<&str> = line
            .split('\t')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect();
        let (Some(position), Some(address)) = (fields.first(), fields.get(1)) else {
            continue;
        };
        let Some((base, number)) = position.rsplit_once(':') else {
            continue;
        };
        let address = u64::from_str_radix(address.trim_start_matches("0x"), 16).unwrap();
        lines.push((address, base.to_string(), number.parse().unwrap()));
    }
    (file, lines)
}

#[test]
fn source_lines_match_go_objdump() {
    let Some(dirs) = flavor_dirs() else { return };
    let mut checked = 0;
    for (flavor, dir) in dirs {
        let path = dir.join("slicegrow");
        if !path.is_file() {
            continue;
        }
        let go = go_tool(&flavor);
        if !go.is_file() {
            assert!(
                !in_ci(),
                "{} missing: run `cargo xtask setup`",
                go.display()
            );
            eprintln!("SKIP {flavor}: {} missing", go.display());
            continue;
        }
        let elf = Elf::open(&path);
        let table = elf.table();
        let growslice = table.find_function(GROWSLICE).unwrap().unwrap();
        let (file, lines) = objdump_lines(&go, &path, GROWSLICE);
        assert!(
            lines.len() > 100,
            "{}: {} instructions",
            path.display(),
            lines.len()
        );
        assert_eq!(lines[0].0, growslice.entry, "{}", path.display());
        // The entry instruction is in the function's own file: the full path agrees.
        let entry = table.source_line(growslice.entry).unwrap().unwrap();
        assert_eq!(entry.file, file, "{}", path.display());
        assert!(file.ends_with("runtime/slice.go"), "{file}");
        assert_eq!(entry.function, GROWSLICE);
        // Every instruction, inlined code (other files) included.
        for (address, base, number) in &lines {
            let line = table
                .source_line(*address)
                .unwrap()
                .unwrap_or_else(|| panic!("{}: no line at {address:#x}", path.display()));
            let line_base = line.file.rsplit('/').next().unwrap();
            assert_eq!(
                (line_base, line.line),
                (base.as_str(), *number),
                "{}: {address:#x}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(
        checked > 0 || !in_ci(),
        "no fixture checked against objdump"
    );
}

/// A large, stripped, externally linked Go 1.19 program (Debian's prometheus), if
/// installed: every function reads cleanly and has a line at its entry.
#[test]
fn a_large_stripped_binary_reads_cleanly() {
    let path = Path::new("/usr/bin/prometheus");
    if !path.is_file() {
        eprintln!("SKIP: {} not installed", path.display());
        return;
    }
    let elf = Elf::open(path);
    let table = elf.table();
    assert!(table.go_1_18_layout());
    // The header's textStart (runtime.text) lies past .text's C code.
    assert!(table.text_start() > elf.text);
    let functions = all_functions(path, &table);
    assert!(functions.len() > 10_000, "{}", functions.len());
    for function in &functions {
        let line = table.source_line(function.entry).unwrap();
        assert!(line.is_some(), "{}", function.name);
    }
    assert!(table.find_function(GROWSLICE).unwrap().is_some());
}
