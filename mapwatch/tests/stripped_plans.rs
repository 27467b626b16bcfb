//! Stripped binaries (-ldflags=-s -w: no .symtab, no DWARF) must get the same probe plan
//! as their unstripped twins, through the pclntab and the generated offsets table; and
//! the pclntab must agree with .symtab about every function. No root needed.
mod support;

use std::path::Path;

use object::{Object as _, ObjectSymbol as _};

use mapwatch::{
    goelf::GoBinary,
    plan::{PlanRequest, plan_probes},
};
use support::{fixtures_dir, in_ci};

const REQUEST: PlanRequest = PlanRequest::ALL;

/// (probe name, file offset, instruction bytes) of each planned probe.
type ProbeKey = (String, u64, Vec<u8>);
/// Probes and the signals that are unavailable.
type PlanKey = (Vec<ProbeKey>, Vec<String>);

/// The parts of a plan that decide where and what the kernel probes.
fn plan_key(path: &Path) -> PlanKey {
    let binary = GoBinary::open(path).unwrap();
    let plan = plan_probes(&binary, REQUEST).unwrap();
    let probes = plan
        .probes
        .iter()
        .map(|p| (p.probe.to_string(), p.file_offset, p.expected_bytes.clone()))
        .collect();
    let unavailable = plan
        .unavailable
        .iter()
        .map(|u| u.signal.to_string())
        .collect();
    (probes, unavailable)
}

fn flavor_dirs() -> Option<Vec<std::path::PathBuf>> {
    let Ok(dirs) = std::fs::read_dir(fixtures_dir()) else {
        assert!(!in_ci(), "no fixtures: run `cargo xtask test`");
        eprintln!("SKIP: no fixtures; run `cargo xtask test`");
        return None;
    };
    Some(dirs.filter_map(Result::ok).map(|e| e.path()).collect())
}

#[test]
fn stripped_and_unstripped_plans_are_identical() {
    let Some(dirs) = flavor_dirs() else { return };
    let mut compared = 0;
    for dir in dirs {
        let (full, stripped) = (dir.join("slicegrow"), dir.join("slicegrow-stripped"));
        if !stripped.is_file() {
            continue;
        }
        let (full_plan, stripped_plan) = (plan_key(&full), plan_key(&stripped));
        assert!(!full_plan.0.is_empty(), "{}: no probes", full.display());
        assert!(
            full_plan.1.is_empty(),
            "{}: unavailable {:?}",
            full.display(),
            full_plan.1
        );
        // File offsets may differ between the two links; the instructions may not.
        let shape = |plan: &PlanKey| -> Vec<(String, Vec<u8>)> {
            plan.0
                .iter()
                .map(|(p, _, bytes)| (p.clone(), bytes.clone()))
                .collect()
        };
        assert_eq!(
            shape(&full_plan),
            shape(&stripped_plan),
            "{}",
            stripped.display()
        );
        assert_eq!(full_plan.1, stripped_plan.1, "{}", stripped.display());
        compared += 1;
    }
    assert!(compared > 0 || !in_ci(), "no stripped fixtures compared");
}

#[test]
fn pclntab_agrees_with_the_symbol_table() {
    let Some(dirs) = flavor_dirs() else { return };
    for dir in dirs {
        for name in ["slicegrow", "slicegrow-pie", "slicegrow-cgo"] {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            let elf = object::File::parse(&*data).unwrap();
            let binary = GoBinary::open(&path).unwrap();
            let table = binary.pclntab().unwrap().expect("pclntab");
            let mut from_pclntab = std::collections::HashMap::new();
            for function in table.functions() {
                let function = function.unwrap();
                from_pclntab
                    .entry(function.name.to_string())
                    .or_insert_with(Vec::new)
                    .push(function.entry);
            }
            // ABI wrappers share their function's name in .symtab; compare unique names.
            let mut symbols: std::collections::HashMap<&str, Vec<u64>> = Default::default();
            for symbol in elf
                .symbols()
                .filter(|s| s.kind() == object::SymbolKind::Text)
            {
                if let Ok(name) = symbol.name() {
                    symbols.entry(name).or_default().push(symbol.address());
                }
            }
            let mut matched = 0;
            for (name, addresses) in symbols.iter().filter(|(_, a)| a.len() == 1) {
                // ABI0 wrappers and their functions may also share a pclntab name.
                if let Some(entries) = from_pclntab.get(*name) {
                    assert!(
                        entries.contains(&addresses[0]),
                        "{}: {name}",
                        path.display()
                    );
                    matched += 1;
                }
            }
            assert!(
                matched > 1000,
                "{}: only {matched} functions matched",
                path.display()
            );
            // file:line of growslice's first instruction.
            let growslice = table.find_function("runtime.growslice").unwrap().unwrap();
            let line = table
                .source_line(growslice.entry)
                .unwrap()
                .expect("source line");
            assert!(
                line.file.ends_with("runtime/slice.go"),
                "{}: {line:?}",
                path.display()
            );
            assert!(line.line > 100, "{}: {line:?}", path.display());
        }
    }
}

/// A large real stripped Go program from Debian (Go 1.19), if installed.
#[test]
fn debian_prometheus_is_planned_through_pclntab() {
    let path = Path::new("/usr/bin/prometheus");
    if !path.is_file() {
        assert!(
            !in_ci(),
            "prometheus missing: `cargo xtask setup` installs it"
        );
        return;
    }
    let (probes, unavailable) = plan_key(path);
    assert!(unavailable.is_empty(), "{unavailable:?}");
    assert!(probes.iter().any(|(p, _, _)| p == "growslice"));
}
