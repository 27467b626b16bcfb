//! Swiss maps: the total of a map's slots over its distinct tables, read at a growth's
//! entry — the map as a whole, not just the table that grows (`map_buckets_log2`).
//! Walked here because userspace reads the record after the map has moved on, and no
//! single field holds the total.
use aya_ebpf::{macros::map, maps::Array};
use mapwatch_common::{
    DERIVED_UNKNOWN, DirectoryLayout, EVENT_REGS, MAX_DIRECTORY_TABLES, MAX_PROBE_SLOTS,
};

use crate::{arg, read_u8, read_u64};

// Named by its identifier, as `mapwatch_common::map_names` says (see main.rs).
#[map]
static DIRECTORY_LAYOUTS: Array<DirectoryLayout> = Array::with_max_entries(MAX_PROBE_SLOTS, 0);

/// The map's total slots, [`DERIVED_UNKNOWN`] if a read fails or the directory has more
/// than [`MAX_DIRECTORY_TABLES`] tables, or 0 when the slot walks nothing.
#[inline(always)]
pub fn total_slots(slot: u32, args: &[u64; EVENT_REGS]) -> u64 {
    let Some(layout) = DIRECTORY_LAYOUTS.get(slot) else {
        return 0;
    };
    if layout.enabled == 0 {
        return 0;
    }
    walk(layout, arg(args, layout.map_reg)).unwrap_or(DERIVED_UNKNOWN)
}

#[inline(always)]
fn walk(layout: &DirectoryLayout, map: u64) -> Option<u64> {
    let dir_len = read_u64(map + layout.map_dir_len as u64)?;
    let dir_ptr = read_u64(map + layout.map_dir_ptr as u64)?;
    let global_depth = read_u8(map + layout.map_global_depth as u64)?;
    let mut index = 0u64;
    let mut total = 0u64;
    let mut visited = 0u32;
    while visited < MAX_DIRECTORY_TABLES {
        if index >= dir_len {
            return Some(total);
        }
        let table = read_u64(dir_ptr + index * 8)?;
        let capacity = read_u16(table + layout.table_capacity as u64)?;
        let local_depth = read_u8(table + layout.table_local_depth as u64)?;
        if local_depth > global_depth || global_depth - local_depth > 63 {
            return None;
        }
        total += u64::from(capacity);
        index += 1u64 << (global_depth - local_depth);
        visited += 1;
    }
    (index >= dir_len).then_some(total)
}

#[inline(always)]
fn read_u16(address: u64) -> Option<u16> {
    // SAFETY: bpf_probe_read_user validates the user address.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user(address as *const u16) }.ok()
}
