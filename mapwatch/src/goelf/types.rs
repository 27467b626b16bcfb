//! Go type names from a binary's type data: turns a `*_type` seen at run time (e.g.
//! growslice's element type) into `main.Point`, `[]byte`, `map[int64]string`.
//! Layout: src/internal/abi/type.go (`Type.Str` is a `NameOff` from
//! `moduledata.types`; `TFlagExtraStar`), names encoded as in src/internal/abi/type.go
//! `Name` (1 flag byte, uvarint length, bytes; Go 1.17+).

/// `abi.TFlagExtraStar`: the stored name carries a '*' prefix the type does not.
const TFLAG_EXTRA_STAR: u8 = 1 << 1;

/// Offsets within `abi.Type` needed to name a type (from DWARF or the offsets table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeLayout {
    pub tflag: u32,
    pub str: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeNameError {
    #[error("type descriptor at {0:#x} is outside the binary's file-backed data")]
    OutsideBinary(u64),
    #[error("type name of {0:#x} is malformed")]
    Malformed(u64),
}

/// Reads the name of the type descriptor at link-time address `type_vaddr`.
/// `read(vaddr, len)` reads bytes of the binary.
pub fn type_name<'a>(
    read: impl Fn(u64, u64) -> Option<&'a [u8]>,
    types_base: u64,
    type_vaddr: u64,
    layout: TypeLayout,
) -> Result<String, TypeNameError> {
    let outside = || TypeNameError::OutsideBinary(type_vaddr);
    let tflag = read(
        type_vaddr
            .checked_add(u64::from(layout.tflag))
            .ok_or_else(outside)?,
        1,
    )
    .ok_or_else(outside)?[0];
    let str_bytes = read(
        type_vaddr
            .checked_add(u64::from(layout.str))
            .ok_or_else(outside)?,
        4,
    )
    .ok_or_else(outside)?;
    let name_off = i32::from_le_bytes(str_bytes.try_into().map_err(|_| outside())?);
    let name_addr = types_base
        .checked_add_signed(i64::from(name_off))
        .ok_or_else(outside)?;
    let malformed = || TypeNameError::Malformed(type_vaddr);
    // Name: flags byte, then a uvarint length (at most 10 bytes), then the bytes.
    let header = read(name_addr, 1).ok_or_else(malformed)?;
    let _flags = header[0];
    // Checked: a hostile file's segment may end at the top of the address space.
    let at = |offset: u64| name_addr.checked_add(1 + offset).ok_or_else(malformed);
    let mut len: u64 = 0;
    let mut used = 0u64;
    for i in 0..10u64 {
        let byte = read(at(i)?, 1).ok_or_else(malformed)?[0];
        len |= u64::from(byte & 0x7f) << (7 * i);
        used = i + 1;
        if byte & 0x80 == 0 {
            break;
        }
    }
    if len > 1 << 16 {
        return Err(malformed());
    }
    let bytes = read(at(used)?, len).ok_or_else(malformed)?;
    let name = std::str::from_utf8(bytes).map_err(|_| malformed())?;
    let name = if tflag & TFLAG_EXTRA_STAR != 0 {
        name.strip_prefix('*').unwrap_or(name)
    } else {
        name
    };
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_name_and_drops_the_extra_star() {
        // A descriptor at 0x1000 whose Str points 0x10 past types_base 0x2000.
        let mut memory = vec![0u8; 0x3000];
        memory[0x1000 + 20] = TFLAG_EXTRA_STAR;
        memory[0x1000 + 40..0x1000 + 44].copy_from_slice(&0x10i32.to_le_bytes());
        let name = b"*main.Point";
        memory[0x2010] = 0; // flags
        memory[0x2011] = name.len() as u8;
        memory[0x2012..0x2012 + name.len()].copy_from_slice(name);
        let read = |addr: u64, len: u64| memory.get(addr as usize..(addr + len) as usize);
        let layout = TypeLayout { tflag: 20, str: 40 };
        assert_eq!(
            type_name(read, 0x2000, 0x1000, layout).unwrap(),
            "main.Point"
        );
        assert_eq!(
            type_name(read, 0x2000, 0x2ff0, layout),
            Err(TypeNameError::OutsideBinary(0x2ff0))
        );
    }

    #[test]
    fn a_name_at_the_top_of_the_address_space_is_malformed_not_an_overflow() {
        // Memory (a segment of a hostile ELF file) ending at u64::MAX, the name's flag
        // byte its last byte: the length byte after it is at 2^64, which overflowed.
        let base = u64::MAX - 63;
        let mut memory = [0u8; 64];
        let name_off: i32 = 63;
        memory[40..44].copy_from_slice(&name_off.to_le_bytes());
        let read = |addr: u64, len: u64| {
            let start = usize::try_from(addr.checked_sub(base)?).ok()?;
            memory.get(start..start.checked_add(usize::try_from(len).ok()?)?)
        };
        let layout = TypeLayout { tflag: 20, str: 40 };
        assert_eq!(
            type_name(read, base, base, layout),
            Err(TypeNameError::Malformed(base))
        );
    }
}
