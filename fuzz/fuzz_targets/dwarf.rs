//! DWARF struct layouts (the offsets the probes read) and runtime type addresses.
//! An input starting with the ELF magic is a whole file (section lookup, zlib
//! decompression); anything else is the sections themselves, decompressed: six
//! (u16 LE length, bytes) pairs for .debug_abbrev, .debug_str, .debug_line,
//! .debug_str_offsets, .debug_addr and .debug_line_str, then .debug_info.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mapwatch::{
    goelf::dwarf::{read_sections, read_structs, runtime_type_addresses},
    goruntime::offsets::{Field, StructOffsets},
};

const PREFIXED: [&str; 6] = [
    ".debug_abbrev",
    ".debug_str",
    ".debug_line",
    ".debug_str_offsets",
    ".debug_addr",
    ".debug_line_str",
];

fuzz_target!(|data: &[u8]| {
    let wanted = Field::all_struct_names();
    if data.starts_with(b"\x7fELF") {
        let Ok(elf) = object::File::parse(data) else {
            return;
        };
        if let Ok(Some(structs)) = read_structs(&elf, &wanted) {
            let _ = StructOffsets::from_dwarf(&structs);
        }
        let _ = runtime_type_addresses(&elf);
        return;
    }
    let mut sections: Vec<(&'static str, &[u8])> = Vec::new();
    let mut rest = data;
    for name in PREFIXED {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let (bytes, tail) = tail.split_at(usize::from(u16::from_le_bytes(*len)).min(tail.len()));
        sections.push((name, bytes));
        rest = tail;
    }
    sections.push((".debug_info", rest));
    let section = |name: &'static str| {
        sections
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(&[][..], |(_, bytes)| *bytes)
    };
    if let Ok((structs, _)) = read_sections(section, &wanted) {
        let _ = StructOffsets::from_dwarf(&structs);
    }
});
