//! Addresses seen at run time (caller PCs, type pointers) → addresses in the binary.
//! A PIE binary is loaded at a random base; the kernel's /proc/PID/maps says where.

/// One line of /proc/PID/maps that maps part of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMapping {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    pub inode: u64,
}

/// Parses the file-backed lines of /proc/PID/maps
/// (`start-end perms offset dev inode path`, proc(5)).
pub fn parse_maps(text: &str) -> Vec<FileMapping> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let _perms = fields.next()?;
            let offset = fields.next()?;
            let _dev = fields.next()?;
            let inode: u64 = fields.next()?.parse().ok()?;
            (inode != 0).then_some(())?;
            Some(FileMapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                file_offset: u64::from_str_radix(offset, 16).ok()?,
                inode,
            })
        })
        .collect()
}

/// The load bias of the binary with `inode`: run-time address − link-time address.
/// `vaddr_of_file_offset` maps a file offset to its link-time virtual address (from
/// the program headers). 0 for non-PIE binaries; None if the binary is not mapped.
pub fn load_bias(
    mappings: &[FileMapping],
    inode: u64,
    vaddr_of_file_offset: impl Fn(u64) -> Option<u64>,
) -> Option<u64> {
    mappings
        .iter()
        .filter(|m| m.inode == inode)
        .find_map(|m| Some(m.start.wrapping_sub(vaddr_of_file_offset(m.file_offset)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIE_MAPS: &str = "\
5581a2e00000-5581a2e9a000 r-xp 00000000 fd:00 1234 /tmp/app
5581a2e9a000-5581a2f4e000 r--p 0009a000 fd:00 1234 /tmp/app
5581a2f4e000-5581a2f66000 rw-p 0014e000 fd:00 1234 /tmp/app
7ffd1c7e0000-7ffd1c801000 rw-p 00000000 00:00 0 [stack]
";

    #[test]
    fn pie_bias_is_mapping_start_minus_link_address() {
        let maps = parse_maps(PIE_MAPS);
        assert_eq!(maps.len(), 3, "anonymous mappings skipped");
        // PIE: link-time vaddr == file offset for the first segment.
        let bias = load_bias(&maps, 1234, Some).unwrap();
        assert_eq!(bias, 0x5581a2e00000);
        assert_eq!(load_bias(&maps, 999, Some), None);
    }

    #[test]
    fn non_pie_bias_is_zero() {
        let maps = parse_maps("00400000-0049a000 r-xp 00000000 fd:00 77 /tmp/app\n");
        assert_eq!(load_bias(&maps, 77, |off| Some(0x400000 + off)), Some(0));
    }
}
