//! The generated struct-offsets table (for binaries without DWARF) must agree with the
//! DWARF of every fixture, and cover every supported Go version and map
//! implementation. A failure here means: run `cargo xtask gen-offsets`.
mod support;

use mapwatch::{
    goelf::GoBinary,
    goruntime::{
        GoVersion, MapImplementation,
        offsets::{Field, StructOffsets, table_entries, table_offsets},
        versions::SUPPORTED_MINORS,
    },
};
use support::{fixtures_dir, in_ci};

#[test]
fn table_matches_dwarf_of_every_fixture() {
    let Ok(dirs) = std::fs::read_dir(fixtures_dir()) else {
        assert!(!in_ci(), "no fixtures: run `cargo xtask test`");
        eprintln!("SKIP: no fixtures; run `cargo xtask test`");
        return;
    };
    let mut checked = 0;
    for dir in dirs.filter_map(Result::ok) {
        for entry in std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
        {
            let path = entry.path();
            if path.extension().is_some() {
                continue;
            }
            let binary = GoBinary::open(&path).unwrap();
            let Some(structs) = binary.dwarf_structs(&Field::all_struct_names()).unwrap() else {
                continue; // stripped
            };
            let from_dwarf = StructOffsets::from_dwarf(&structs);
            let info = binary.build_info();
            let version = GoVersion::parse(&info.go_version).unwrap();
            let maps = MapImplementation::of(&version, info.goexperiment());
            let table = table_offsets(version.minor, maps).unwrap_or_else(|| {
                panic!(
                    "{}: no table entry for Go 1.{} {maps:?}; run `cargo xtask gen-offsets`",
                    path.display(),
                    version.minor
                )
            });
            assert_eq!(
                table.offsets,
                from_dwarf.offsets,
                "{}: table and DWARF disagree; run `cargo xtask gen-offsets`",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 0 || !in_ci(), "no fixture with DWARF was checked");
    eprintln!("{checked} fixtures agree with the table");
}

#[test]
fn table_covers_every_supported_version_and_map_implementation() {
    let mut expected: Vec<(u32, MapImplementation)> = Vec::new();
    for &minor in SUPPORTED_MINORS {
        if minor < 26 {
            expected.push((minor, MapImplementation::Classic));
        }
        if minor >= 24 {
            expected.push((minor, MapImplementation::Swiss));
        }
    }
    let mut entries: Vec<_> = table_entries().collect();
    entries.sort();
    expected.sort();
    assert_eq!(entries, expected, "run `cargo xtask gen-offsets`");
    // Fields every version has.
    for (minor, maps) in entries {
        let offsets = table_offsets(minor, maps).unwrap();
        for field in [Field::TypeSize, Field::TypePtrBytes, Field::GGoid] {
            assert!(
                offsets.get(field).is_some(),
                "Go 1.{minor} {maps:?} lacks {field:?}"
            );
        }
        let (map_field, other) = match maps {
            MapImplementation::Classic => (Field::HmapB, Field::SwissMapDirLen),
            MapImplementation::Swiss => (Field::SwissMapDirLen, Field::HmapB),
        };
        assert!(
            offsets.get(map_field).is_some(),
            "Go 1.{minor} {maps:?} lacks {map_field:?}"
        );
        assert!(
            offsets.get(other).is_none(),
            "Go 1.{minor} {maps:?} has {other:?}"
        );
    }
}
