//! Type names read from a binary's type data must equal the names DWARF gives the same
//! runtime type descriptors (DW_AT_go_runtime_type) — in every fixture, and in the
//! stripped builds (found through moduledata instead of symbols). No root needed.
mod support;

use std::path::Path;

use mapwatch::{
    goelf::{GoBinary, types::TypeLayout},
    goruntime::offsets::Field,
    plan,
};
use support::{fixtures_dir, in_ci};

fn layout_and_base(binary: &GoBinary) -> (TypeLayout, u64) {
    let info = binary.build_info();
    let version = mapwatch::goruntime::GoVersion::parse(&info.go_version).unwrap();
    let maps = mapwatch::goruntime::MapImplementation::of(&version, info.goexperiment());
    let offsets = plan::struct_offsets(binary, version.minor, maps)
        .unwrap()
        .expect("offsets");
    let layout = TypeLayout {
        tflag: offsets.get(Field::TypeTFlag).unwrap(),
        str: offsets.get(Field::TypeStr).unwrap(),
    };
    let base = binary
        .types_base(offsets.get(Field::ModuledataTypes))
        .expect("types base");
    (layout, base)
}

/// DWARF qualifies names with the full import path (`internal/abi.Type`); the runtime
/// with the package name only (`abi.Type`), as reflect prints them — except inside
/// type arguments, where both keep the path (`atomic.Pointer[internal/bisect.dedup]`).
fn normalize(dwarf_name: &str) -> String {
    let mut out = String::with_capacity(dwarf_name.len());
    let mut chars = dwarf_name.chars().peekable();
    let mut type_args = 0;
    while let Some(c) = chars.next() {
        match c {
            '[' if ends_with_type_name(&out) => type_args += 1,
            ']' if type_args > 0 => type_args -= 1,
            _ => {}
        }
        if c == '\u{b7}' {
            // Function-local types are numbered in DWARF only: `untracedG·6`.
            while chars.next_if(char::is_ascii_digit).is_some() {}
        } else if c == '/' && type_args == 0 {
            // Drop the path element just written: back to the start of the token.
            while out.ends_with(|p: char| p.is_alphanumeric() || matches!(p, '_' | '.' | '-')) {
                out.pop();
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A `[` after a type name opens type arguments; after `map`, `]` or nothing it is
/// part of a map, slice or array type.
fn ends_with_type_name(text: &str) -> bool {
    let mut token: Vec<char> = text
        .chars()
        .rev()
        .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '.'))
        .collect();
    token.reverse();
    let token: String = token.into_iter().collect();
    // The compiler's map internals (`map.group[K]V`, `map.bucket[K]V`) read like maps.
    !token.is_empty() && token != "map" && !token.starts_with("map.")
}

fn check(unstripped: &Path, stripped: Option<&Path>) -> usize {
    let binary = GoBinary::open(unstripped).unwrap();
    let (layout, base) = layout_and_base(&binary);
    // The linker writes DW_AT_go_runtime_type as an absolute address in older Go and
    // as an offset from the types base (R_ADDROFF) in newer; normalize to addresses.
    let types: Vec<(String, u64)> = binary
        .dwarf_runtime_types()
        .unwrap()
        .into_iter()
        .filter(|(_, a)| *a != 0)
        // Literal struct/interface types: DWARF qualifies their unexported field names
        // with the package (`struct { runtime.n int32 }`), the runtime does not.
        .filter(|(name, _)| !name.contains('{'))
        // Compiler-internal "noalg." types carry that prefix in DWARF only.
        .map(|(name, a)| (name.replace("noalg.", ""), a))
        .map(|(name, a)| (name, if a < base { base + a } else { a }))
        .collect();
    assert!(
        types.len() > 50,
        "{}: too few DWARF types",
        unstripped.display()
    );
    let mut compared = 0;
    for (name, address) in &types {
        // DWARF names some types only in its own syntax (e.g. map.bucket[...]); the
        // runtime has no such descriptors, and those names carry no address anyway.
        let got = binary
            .type_name(base, *address, layout)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            got,
            normalize(name),
            "{}: type at {address:#x}",
            unstripped.display()
        );
        compared += 1;
    }
    if let Some(stripped) = stripped {
        let other = GoBinary::open(stripped).unwrap();
        assert!(!other.has_symtab());
        let (other_layout, other_base) = layout_and_base(&other);
        for (name, address) in &types {
            // Same type order in both builds: same distance from the types base.
            let moved = address - base + other_base;
            let got = other
                .type_name(other_base, moved, other_layout)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got, normalize(name), "{}: type {name}", stripped.display());
        }
    }
    compared
}

#[test]
fn type_names_match_dwarf_in_every_fixture() {
    let Ok(dirs) = std::fs::read_dir(fixtures_dir()) else {
        assert!(!in_ci(), "no fixtures: run `cargo xtask test`");
        eprintln!("SKIP: no fixtures; run `cargo xtask test`");
        return;
    };
    let mut total = 0;
    for dir in dirs.filter_map(Result::ok) {
        let slicegrow = dir.path().join("slicegrow");
        if !slicegrow.is_file() {
            continue;
        }
        let stripped = dir.path().join("slicegrow-stripped");
        total += check(&slicegrow, stripped.is_file().then_some(stripped.as_path()));
        total += check(&dir.path().join("slicegrow-pie"), None);
    }
    assert!(total > 0 || !in_ci(), "nothing compared");
    eprintln!("{total} type names compared");
}
