//! Struct layouts from a Go binary's DWARF (gimli). Offsets read here are the truth for
//! that binary; the per-version table in goruntime/offsets.rs is the fallback for
//! binaries without DWARF, generated from these reads and checked against them.
use std::{borrow::Cow, collections::HashMap};

use gimli::{AttributeValue, EndianSlice, LittleEndian, constants};
use object::{Object as _, ObjectSection as _};

#[derive(Debug, thiserror::Error)]
pub enum DwarfError {
    #[error("reading DWARF section {section}: {reason}")]
    Section {
        section: &'static str,
        reason: String,
    },
    #[error("malformed DWARF: {0}")]
    Malformed(#[from] gimli::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldLayout {
    pub offset: u64,
    /// Byte size of the field's type, when DWARF gives it.
    pub size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StructLayout {
    pub size: Option<u64>,
    pub fields: HashMap<String, FieldLayout>,
}

/// Layouts of the named structs found in the DWARF of `elf` (an ELF file's bytes).
/// Returns Ok(None) when the binary has no DWARF (built with -ldflags=-w or stripped).
pub fn read_structs(
    elf: &object::File<'_>,
    wanted: &[&str],
) -> Result<Option<HashMap<String, StructLayout>>, DwarfError> {
    if elf.section_by_name(".debug_info").is_none() {
        return Ok(None);
    }
    let sections = load_sections(elf)?;
    structs_in(
        &sections.borrow(|section| EndianSlice::new(section, LittleEndian)),
        wanted,
    )
    .map(Some)
}

/// `DW_AT_go_runtime_type` (src/cmd/internal/dwarf/dwarf.go): the address of a DWARF
/// type's runtime type descriptor.
const DW_AT_GO_RUNTIME_TYPE: constants::DwAt = constants::DwAt(0x2904);

/// Every named DWARF type with its runtime type descriptor address: (name, address).
/// An independent source of truth for [`super::types`] (used by tests).
pub fn runtime_type_addresses(elf: &object::File<'_>) -> Result<Vec<(String, u64)>, DwarfError> {
    let sections = load_sections(elf)?;
    runtime_types_in(&sections.borrow(|section| EndianSlice::new(section, LittleEndian)))
}

/// What [`read_sections`] finds: struct layouts by name, and (type name, runtime type
/// descriptor address) pairs.
pub type SectionsRead = (HashMap<String, StructLayout>, Vec<(String, u64)>);

/// The fuzzing entry point (fuzz/fuzz_targets/dwarf.rs): what [`read_structs`] and
/// [`runtime_type_addresses`] read, from DWARF sections given by name (`.debug_info`,
/// `.debug_abbrev`, …; empty when absent), already decompressed — mutating the bytes
/// of an ELF file's zlib streams would rarely reach the DWARF parser.
pub fn read_sections<'a>(
    section: impl Fn(&'static str) -> &'a [u8],
    wanted: &[&str],
) -> Result<SectionsRead, DwarfError> {
    let dwarf = gimli::Dwarf::load(|id: gimli::SectionId| {
        Ok::<_, DwarfError>(EndianSlice::new(section(id.name()), LittleEndian))
    })?;
    Ok((structs_in(&dwarf, wanted)?, runtime_types_in(&dwarf)?))
}

fn structs_in(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    wanted: &[&str],
) -> Result<HashMap<String, StructLayout>, DwarfError> {
    let mut found: HashMap<String, StructLayout> = HashMap::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut entries = unit.entries();
        let mut depth: isize = 0;
        // The struct being collected and the depth of its DIE.
        let mut current: Option<(String, isize)> = None;
        while let Some((delta, entry)) = entries.next_dfs()? {
            depth += delta;
            if let Some((_, struct_depth)) = &current
                && depth <= *struct_depth
            {
                current = None;
            }
            match entry.tag() {
                constants::DW_TAG_structure_type => {
                    let Some(name) = name_of(dwarf, &unit, entry)? else {
                        continue;
                    };
                    if wanted.contains(&name.as_str()) && !found.contains_key(&name) {
                        let size = entry
                            .attr_value(constants::DW_AT_byte_size)?
                            .and_then(|v| v.udata_value());
                        found.insert(
                            name.clone(),
                            StructLayout {
                                size,
                                fields: HashMap::new(),
                            },
                        );
                        current = Some((name, depth));
                    }
                }
                constants::DW_TAG_member => {
                    let Some((struct_name, struct_depth)) = &current else {
                        continue;
                    };
                    if depth != struct_depth + 1 {
                        continue;
                    }
                    let Some(field) = name_of(dwarf, &unit, entry)? else {
                        continue;
                    };
                    let Some(offset) = entry
                        .attr_value(constants::DW_AT_data_member_location)?
                        .and_then(|v| v.udata_value())
                    else {
                        continue;
                    };
                    let size = match entry.attr_value(constants::DW_AT_type)? {
                        Some(AttributeValue::UnitRef(type_offset)) => unit
                            .entry(type_offset)?
                            .attr_value(constants::DW_AT_byte_size)?
                            .and_then(|v| v.udata_value()),
                        _ => None,
                    };
                    if let Some(layout) = found.get_mut(struct_name) {
                        layout.fields.insert(field, FieldLayout { offset, size });
                    }
                }
                _ => {}
            }
        }
        if found.len() == wanted.len() {
            break;
        }
    }
    Ok(found)
}

fn runtime_types_in(dwarf: &gimli::Dwarf<Reader<'_>>) -> Result<Vec<(String, u64)>, DwarfError> {
    let mut found = Vec::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut entries = unit.entries();
        while let Some((_, entry)) = entries.next_dfs()? {
            let Some(AttributeValue::Addr(address)) = entry.attr_value(DW_AT_GO_RUNTIME_TYPE)?
            else {
                continue;
            };
            if let Some(name) = name_of(dwarf, &unit, entry)? {
                found.push((name, address));
            }
        }
    }
    Ok(found)
}

type Reader<'a> = EndianSlice<'a, LittleEndian>;

/// The sections the readers here use: units, abbreviations, strings, DWARF 5 address
/// tables, and the line programs (gimli parses a unit's line program header). Location
/// and range lists, a third of Go's DWARF, stay compressed in the file.
const SECTIONS_READ: [gimli::SectionId; 7] = [
    gimli::SectionId::DebugAbbrev,
    gimli::SectionId::DebugAddr,
    gimli::SectionId::DebugInfo,
    gimli::SectionId::DebugLine,
    gimli::SectionId::DebugLineStr,
    gimli::SectionId::DebugStr,
    gimli::SectionId::DebugStrOffsets,
];

/// What the sections read may hold together, decompressed. A section is decompressed
/// into as many bytes as its header claims, and a few KiB of zlib fill a GiB: mapwatch
/// reads the DWARF of every Go binary on the node, in a container limited to 512 MiB.
/// Go's DWARF is about 0.6 times its binary, these sections 0.4 (measured: a 2.4 MB
/// binary, 1.0 MB), so this admits binaries up to ~600 MB.
const MAX_DWARF_BYTES: u64 = 256 << 20;

/// The DWARF sections, decompressed (Go writes them SHF_COMPRESSED); missing ones empty.
fn load_sections<'a>(
    elf: &object::File<'a>,
) -> Result<gimli::DwarfSections<Cow<'a, [u8]>>, DwarfError> {
    let mut left = MAX_DWARF_BYTES;
    gimli::DwarfSections::load(|id: gimli::SectionId| {
        let Some(section) = elf
            .section_by_name(id.name())
            .filter(|_| SECTIONS_READ.contains(&id))
        else {
            return Ok(Cow::Borrowed(&[][..]));
        };
        let error = |reason: String| DwarfError::Section {
            section: id.name(),
            reason,
        };
        // Checked before anything is allocated.
        let size = section
            .compressed_data()
            .map_err(|e| error(e.to_string()))?
            .uncompressed_size;
        left = left.checked_sub(size).ok_or_else(|| {
            error(format!(
                "{size} bytes uncompressed: more than the {} MiB of DWARF mapwatch reads",
                MAX_DWARF_BYTES >> 20
            ))
        })?;
        section
            .uncompressed_data()
            .map_err(|e| error(e.to_string()))
    })
}

fn name_of(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    unit: &gimli::Unit<Reader<'_>>,
    entry: &gimli::DebuggingInformationEntry<'_, '_, Reader<'_>>,
) -> Result<Option<String>, gimli::Error> {
    let Some(value) = entry.attr_value(constants::DW_AT_name)? else {
        return Ok(None);
    };
    let name = dwarf.attr_string(unit, value)?;
    Ok(Some(String::from_utf8_lossy(name.slice()).into_owned()))
}

#[cfg(test)]
mod tests {
    use object::ObjectSection as _;

    use super::*;

    fn corpus(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/corpus/dwarf/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// A seed of fuzz/fuzz_targets/dwarf.rs: six (u16 LE length, bytes) sections, then
    /// .debug_info.
    fn seed_sections(seed: &[u8]) -> Vec<(&'static str, &[u8])> {
        let mut sections = Vec::new();
        let mut rest = seed;
        for name in [
            ".debug_abbrev",
            ".debug_str",
            ".debug_line",
            ".debug_str_offsets",
            ".debug_addr",
            ".debug_line_str",
        ] {
            let (len, tail) = rest.split_first_chunk::<2>().unwrap();
            let (bytes, tail) = tail.split_at(usize::from(u16::from_le_bytes(*len)));
            sections.push((name, bytes));
            rest = tail;
        }
        sections.push((".debug_info", rest));
        sections
    }

    fn hmap_offsets(structs: &HashMap<String, StructLayout>) -> Vec<(&str, u64)> {
        let hmap = &structs["runtime.hmap"];
        assert_eq!(hmap.size, Some(48));
        let mut fields: Vec<(&str, u64)> = ["count", "flags", "B", "noverflow", "buckets"]
            .into_iter()
            .map(|f| (f, hmap.fields[f].offset))
            .collect();
        fields.sort_by_key(|&(_, offset)| offset);
        fields
    }

    const HMAP_GO122: [(&str, u64); 5] = [
        ("count", 0),
        ("flags", 8),
        ("B", 9),
        ("noverflow", 10),
        ("buckets", 16),
    ];

    #[test]
    fn fuzz_seeds_hold_what_go_wrote() {
        // The seeds are Go's own DIEs (extract.py): a parse that fails here would leave
        // the fuzzer starting from nothing.
        let seed = corpus("go1.22-classic.bin");
        let sections = seed_sections(&seed);
        let section = |name| {
            sections
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(&[][..], |s| s.1)
        };
        let wanted = ["runtime.hmap", "runtime.g", "internal/abi.Type"];
        let (structs, types) = read_sections(section, &wanted).unwrap();
        assert_eq!(structs.len(), 3);
        assert_eq!(hmap_offsets(&structs), HMAP_GO122);
        assert_eq!(structs["internal/abi.Type"].fields["Str"].offset, 40);
        assert!(types.iter().any(|(name, _)| name == "runtime.hmap"));

        let seed = corpus("go1.26-swiss.bin");
        let sections = seed_sections(&seed);
        let section = |name| {
            sections
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(&[][..], |s| s.1)
        };
        let (structs, _) = read_sections(section, &["internal/runtime/maps.Map"]).unwrap();
        assert!(
            structs["internal/runtime/maps.Map"]
                .fields
                .contains_key("dirPtr")
        );
    }

    #[test]
    fn reads_zlib_compressed_sections() {
        let bytes = corpus("go1.22-classic-compressed.o");
        let elf = object::File::parse(&*bytes).unwrap();
        let structs = read_structs(&elf, &["runtime.hmap"]).unwrap().unwrap();
        assert_eq!(hmap_offsets(&structs), HMAP_GO122);
    }

    #[test]
    fn a_section_claiming_more_than_the_budget_is_refused_before_allocating() {
        // Found by fuzz/fuzz_targets/dwarf.rs: a compression header claiming 0xd01 << 48
        // bytes went straight to an allocation; a claim the allocator grants is filled by
        // a few KiB of zlib per GiB.
        let mut bytes = corpus("go1.22-classic-compressed.o");
        let (start, _) = object::File::parse(&*bytes)
            .unwrap()
            .section_by_name(".debug_info")
            .unwrap()
            .file_range()
            .unwrap();
        // Elf64_Chdr: ch_type, ch_reserved, then ch_size.
        let ch_size = start as usize + 8;
        for claim in [MAX_DWARF_BYTES + 1, 0x0d01 << 48] {
            bytes[ch_size..ch_size + 8].copy_from_slice(&claim.to_le_bytes());
            let elf = object::File::parse(&*bytes).unwrap();
            let error = read_structs(&elf, &["runtime.hmap"])
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(".debug_info") && error.contains("256 MiB of DWARF"),
                "{error}"
            );
        }
    }
}
