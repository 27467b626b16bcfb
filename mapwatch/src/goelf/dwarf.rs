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
    let dwarf = sections.borrow(|section| EndianSlice::new(section, LittleEndian));

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
                    let Some(name) = name_of(&dwarf, &unit, entry)? else {
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
                    let Some(field) = name_of(&dwarf, &unit, entry)? else {
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
    Ok(Some(found))
}

/// `DW_AT_go_runtime_type` (src/cmd/internal/dwarf/dwarf.go): the address of a DWARF
/// type's runtime type descriptor.
const DW_AT_GO_RUNTIME_TYPE: constants::DwAt = constants::DwAt(0x2904);

/// Every named DWARF type with its runtime type descriptor address: (name, address).
/// An independent source of truth for [`super::types`] (used by tests).
pub fn runtime_type_addresses(elf: &object::File<'_>) -> Result<Vec<(String, u64)>, DwarfError> {
    let sections = load_sections(elf)?;
    let dwarf = sections.borrow(|section| EndianSlice::new(section, LittleEndian));
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
            if let Some(name) = name_of(&dwarf, &unit, entry)? {
                found.push((name, address));
            }
        }
    }
    Ok(found)
}

type Reader<'a> = EndianSlice<'a, LittleEndian>;

/// The DWARF sections, decompressed (Go writes them SHF_COMPRESSED); missing ones empty.
fn load_sections<'a>(
    elf: &object::File<'a>,
) -> Result<gimli::DwarfSections<Cow<'a, [u8]>>, DwarfError> {
    gimli::DwarfSections::load(
        |id: gimli::SectionId| match elf.section_by_name(id.name()) {
            Some(section) => section
                .uncompressed_data()
                .map_err(|e| DwarfError::Section {
                    section: id.name(),
                    reason: e.to_string(),
                }),
            None => Ok(Cow::Borrowed(&[][..])),
        },
    )
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
