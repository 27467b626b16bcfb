//! mapwatch's BPF programs: a Go uprobe that reads registers and a few struct fields
//! and writes one fixed-size record to the ring buffer.
//!
//! There are no Go-version branches here. Which registers mean what, and which fields
//! to read at which offsets, is decided in userspace per probe slot (see
//! `mapwatch_common::ProbeSpec`); the slot number is the uprobe's cookie.
#![no_std]
#![no_main]

mod directory;
mod process_notices;

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE, pt_regs,
    },
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_get_attach_cookie,
    },
    macros::{map, uprobe},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::ProbeContext,
};
use mapwatch_common::{
    ASSIGN_NO_ENTRY, ASSIGN_NO_HASH, ASSIGN_NOT_FOUND, ASSIGN_READ_FAILED, ASSIGN_STATE_ENTRIES,
    AssignState, EVENT_REGS, Event, GoroutineKey, MAP_SLOT_CLASSIC, MAP_SLOT_SWISS_SMALL,
    MAP_SLOT_SWISS_TABLE, MAX_PROBE_SLOTS, MAX_STACK_DEPTH, MapAssignLayout, MemoryLoad,
    PROBE_LOADS, ProbeKind, ProbeSpec, RING_BUF_BYTES, RING_RECORD_BYTES, StackedEvent,
    crosses_threshold, ring_wakeup_bytes,
};

// A map's name is its static's identifier, and userspace takes the map by that name
// from `mapwatch_common::map_names`: aya-ebpf's `#[map(name = …)]` accepts only a string
// literal, so the constants cannot be used here. mapwatch/tests/bpf_map_names.rs fails
// when the built object's maps and that list differ (here, in process_notices.rs and in
// directory.rs).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUF_BYTES, 0);

#[map]
static PROBE_SPECS: Array<ProbeSpec> = Array::with_max_entries(MAX_PROBE_SLOTS, 0);

/// Hits per slot. Per-CPU because 64-bit atomic adds do not build for the BPF target
/// with the pinned toolchain (docs/building.md) and per-CPU counters never contend.
#[map]
static PROBE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_PROBE_SLOTS, 0);

/// Records that did not fit in the ring buffer, per slot: nothing is dropped silently.
#[map]
static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_PROBE_SLOTS, 0);

/// Per slot: how to find a mapassign_fast64's slot (only the mapassign slots use it).
#[map]
static MAP_ASSIGN_LAYOUTS: Array<MapAssignLayout> = Array::with_max_entries(MAX_PROBE_SLOTS, 0);

/// Per slot: nonzero while the overhead budget has paused it. A paused slot's trap
/// still fires (until its link is gone) but counts and records nothing. The budget
/// pauses a group right before the reading that ends its window and unpauses it right
/// before the reading that starts one, so the records of a window are exactly those
/// of the work between its two readings: closing a uprobe_multi link takes 30–60 ms,
/// during which the breakpoints kept recording (measured: map growth records +5–9%).
#[map]
static SLOTS_PAUSED: Array<u32> = Array::with_max_entries(MAX_PROBE_SLOTS, 0);

/// Traps of paused slots, per slot: they cost the process a trap each (the breakpoints
/// stay in while a link closes or before it is unpaused), which the budget counts
/// against the process's work like any other hit's.
#[map]
static PAUSED_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_PROBE_SLOTS, 0);

/// mapassign_fast64 entry → RET, per goroutine. Paired here, not in userspace, because
/// the slot must be located while the map is as the RET left it: the header is
/// re-read at RET, so a growth inside the assign (hashGrow, growToTable, rehash) is
/// seen, and the overflow chain or directory is followed in the target's memory.
#[map]
static ASSIGN_STATE: LruHashMap<GoroutineKey, AssignState> =
    LruHashMap::with_max_entries(ASSIGN_STATE_ENTRIES, 0);

/// Entry of any probed Go function, or a RET inside it: which one is in the slot's spec.
#[uprobe]
pub fn go_probe(ctx: ProbeContext) -> u32 {
    record(&ctx);
    0
}

/// Does nothing: the baseline a probe's per-hit cost is measured against (the kernel's
/// trap, uprobe dispatch and BPF entry without any work of ours). Used by
/// `cargo xtask bench` and the overhead budget's calibration.
#[uprobe]
pub fn empty_probe(_ctx: ProbeContext) -> u32 {
    0
}

#[inline(always)]
fn bump(counter: &PerCpuArray<u64>, slot: u32) {
    if let Some(value) = counter.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot of this CPU; BPF programs do not preempt each other on it.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn record(ctx: &ProbeContext) {
    // SAFETY: the helper only reads the attach cookie of the running program.
    let slot = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let Some(spec) = PROBE_SPECS.get(slot) else {
        return;
    };
    if spec.kind == ProbeKind::None as u16 {
        // Userspace writes the spec before attaching: reaching this is a bug. Logged
        // (aya-log) only on this cold path; logging per hit would cost more than the hit.
        aya_log_ebpf::warn!(ctx, "uprobe fired on slot {} that has no probe spec", slot);
        return;
    }
    if SLOTS_PAUSED.get(slot).is_some_and(|&paused| paused != 0) {
        bump(&PAUSED_HITS, slot);
        return;
    }
    bump(&PROBE_HITS, slot);

    // SAFETY: ctx.regs points at the trapped task's saved registers for this call.
    let regs: &pt_regs = unsafe { &*ctx.regs };
    let args: [u64; EVENT_REGS] = [regs.rax, regs.rbx, regs.rcx, regs.rdi, regs.rsi, regs.r8];

    let mut loads = [0u64; PROBE_LOADS];
    let mut load_failed = 0u16;
    let mut i = 0;
    while i < PROBE_LOADS {
        let load = spec.loads[i];
        if load.reg != MemoryLoad::NONE {
            match read_field(&args, load) {
                Some(value) => loads[i] = value,
                None => load_failed |= 1 << i,
            }
        }
        i += 1;
    }

    let pid_tgid = bpf_get_current_pid_tgid();
    let kind = spec.kind;
    if kind == ProbeKind::MapAssignEntry as u16
        || kind == ProbeKind::MapAssignHash as u16
        || kind == ProbeKind::MapAssignRet as u16
    {
        let key = GoroutineKey {
            tgid: (pid_tgid >> 32) as u32,
            _pad: 0,
            goroutine: regs.r14,
        };
        map_assign(kind, slot, &key, &args, &mut loads, &mut load_failed);
    }

    let caller_pc = if spec.flags & ProbeSpec::FLAG_CALLER_PC != 0 {
        // SAFETY: bpf_probe_read_user validates the user address.
        unsafe { bpf_probe_read_user(regs.rsp as *const u64) }.unwrap_or(0)
    } else {
        0
    };

    let derived = directory::total_slots(slot, &args);

    let event = Event {
        // SAFETY: no preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        goroutine: regs.r14,
        caller_pc,
        regs: args,
        loads,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        slot,
        kind: spec.kind,
        load_failed,
        derived,
    };
    // Reserved after the mapassign bookkeeping: an entry whose record is lost must
    // still be paired with its RET.
    if spec.stack_depth != 0 {
        let Some(mut entry) = EVENTS.reserve::<StackedEvent>(0) else {
            bump(&EVENTS_LOST, slot);
            return;
        };
        let stacked = entry.as_mut_ptr();
        // SAFETY: the reservation is one StackedEvent; every field is written (frames
        // past `depth` are not read).
        unsafe {
            (*stacked).event = event;
            (*stacked).depth = walk_frames(regs.rbp, spec.stack_depth, &mut (*stacked).frames);
            (*stacked)._pad = 0;
        }
        submit(entry);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(&EVENTS_LOST, slot);
        return;
    };
    entry.write(event);
    submit(entry);
}

/// Follows Go's frame pointers from `fp` (the probed function's caller's frame, since
/// the probe runs before the function pushes RBP): the return address into the next
/// caller is at [fp+8], its frame at [fp]. Stops at `wanted` frames, a zero frame
/// pointer or an unreadable one (the top of a goroutine's stack has fp 0).
#[inline(always)]
fn walk_frames(mut fp: u64, wanted: u8, frames: &mut [u64; MAX_STACK_DEPTH]) -> u32 {
    let mut depth = 0;
    while depth < MAX_STACK_DEPTH {
        if depth >= wanted as usize || fp == 0 {
            break;
        }
        // SAFETY: bpf_probe_read_user validates the user addresses.
        let pc = unsafe { bpf_probe_read_user((fp + 8) as *const u64) }.unwrap_or(0);
        let next = unsafe { bpf_probe_read_user(fp as *const u64) }.unwrap_or(0);
        if pc == 0 {
            break;
        }
        frames[depth] = pc;
        depth += 1;
        fp = next;
    }
    depth as u32
}

#[inline(always)]
fn submit<T>(entry: aya_ebpf::maps::ring_buf::RingBufEntry<T>) {
    // Batched wake-ups: the reader also drains on a short timer, so only a large
    // backlog needs to wake it now — once each time the backlog crosses a multiple of
    // the threshold, not on every record above it (a reader that falls behind would
    // otherwise make every hit pay a wake-up). The backlog already counts this record.
    // Records of other CPUs can step over a crossing; the timer covers that. The ring's
    // size is asked, not assumed: userspace can size it at load time.
    let backlog = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let before = backlog.saturating_sub(RING_RECORD_BYTES);
    let threshold = ring_wakeup_bytes(EVENTS.query(BPF_RB_RING_SIZE as u64));
    let flags = if crosses_threshold(before, backlog, threshold) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

#[inline(always)]
fn arg(args: &[u64; EVENT_REGS], index: u8) -> u64 {
    let index = index as usize;
    if index < EVENT_REGS { args[index] } else { 0 }
}

#[inline(always)]
fn read_u64(address: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user validates the user address.
    unsafe { bpf_probe_read_user(address as *const u64) }.ok()
}

#[inline(always)]
fn read_u8(address: u64) -> Option<u8> {
    // SAFETY: as above.
    unsafe { bpf_probe_read_user(address as *const u8) }.ok()
}

/// mapassign_fast64: entry saves the map and the bucket/group size (loads[0]); the hash
/// site adds the hash; a RET locates the returned slot and overwrites `loads` with it.
#[inline(always)]
fn map_assign(
    kind: u16,
    slot: u32,
    key: &GoroutineKey,
    args: &[u64; EVENT_REGS],
    loads: &mut [u64; PROBE_LOADS],
    load_failed: &mut u16,
) {
    let Some(layout) = MAP_ASSIGN_LAYOUTS.get(slot) else {
        return;
    };
    if kind == ProbeKind::MapAssignEntry as u16 {
        let state = AssignState {
            map: arg(args, layout.map_reg),
            stride: loads[0],
            hash: 0,
            has_hash: 0,
        };
        let _ = ASSIGN_STATE.insert(key, &state, 0);
        return;
    }
    if kind == ProbeKind::MapAssignHash as u16 {
        if let Some(state) = ASSIGN_STATE.get_ptr_mut(key) {
            // SAFETY: a value of this map, written only by this goroutine's probes.
            unsafe {
                (*state).hash = arg(args, layout.hash_reg);
                (*state).has_hash = 1;
            }
        }
        return;
    }
    // SAFETY: copied out before the entry is removed.
    let Some(state) = (unsafe { ASSIGN_STATE.get(key) }).copied() else {
        *load_failed = ASSIGN_NO_ENTRY;
        return;
    };
    let _ = ASSIGN_STATE.remove(key);
    if state.has_hash == 0 {
        *load_failed = ASSIGN_NO_HASH;
        return;
    }
    let elem = arg(args, layout.elem_reg);
    let found = if layout.implementation == MapAssignLayout::CLASSIC {
        classic_slot(layout, &state, elem)
    } else {
        swiss_slot(layout, &state, elem)
    };
    match found {
        Ok(slot_loads) => *loads = slot_loads,
        Err(reason) => *load_failed = reason,
    }
}

/// Classic map: the home bucket is hash & (2^B − 1) of the header as it is now; the
/// slot is in that bucket or in one of its overflow buckets (the pointer in each
/// bucket's last word, src/runtime/map.go `bmap.overflow`).
#[inline(always)]
fn classic_slot(
    layout: &MapAssignLayout,
    state: &AssignState,
    elem: u64,
) -> Result<[u64; PROBE_LOADS], u16> {
    let b = read_u8(state.map + layout.hmap_b as u64).ok_or(ASSIGN_READ_FAILED)?;
    let buckets = read_u64(state.map + layout.hmap_buckets as u64).ok_or(ASSIGN_READ_FAILED)?;
    let stride = state.stride;
    if b >= 64 || stride < 16 {
        return Err(ASSIGN_READ_FAILED);
    }
    let count = 1u64 << b;
    let index = state.hash & (count - 1);
    let mut bucket = buckets + index * stride;
    let mut depth = 0u64;
    let mut i = 0;
    while i <= MapAssignLayout::MAX_OVERFLOW_WALK {
        if elem >= bucket && elem - bucket < stride {
            return Ok([index, count, depth, MAP_SLOT_CLASSIC]);
        }
        bucket = read_u64(bucket + stride - 8).ok_or(ASSIGN_READ_FAILED)?;
        if bucket == 0 {
            break;
        }
        depth += 1;
        i += 1;
    }
    Err(ASSIGN_NOT_FOUND)
}

/// Swiss map: dirLen 0 is a small map (dirPtr is its one group); otherwise the table is
/// directory[hash >> globalShift] (directory[0] when dirLen is 1) and the slot's group
/// is (elem − groups.data) / groupSize (src/internal/runtime/maps/map.go
/// `directoryIndex`, table.go `groupsReference.group`).
#[inline(always)]
fn swiss_slot(
    layout: &MapAssignLayout,
    state: &AssignState,
    elem: u64,
) -> Result<[u64; PROBE_LOADS], u16> {
    let dir_len = read_u64(state.map + layout.map_dir_len as u64).ok_or(ASSIGN_READ_FAILED)?;
    let dir_ptr = read_u64(state.map + layout.map_dir_ptr as u64).ok_or(ASSIGN_READ_FAILED)?;
    let stride = state.stride;
    if stride == 0 {
        return Err(ASSIGN_READ_FAILED);
    }
    if dir_len == 0 {
        if elem >= dir_ptr && elem - dir_ptr < stride {
            return Ok([0, 1, state.hash, MAP_SLOT_SWISS_SMALL]);
        }
        return Err(ASSIGN_NOT_FOUND);
    }
    let index = if dir_len == 1 {
        0
    } else {
        let shift =
            read_u8(state.map + layout.map_global_shift as u64).ok_or(ASSIGN_READ_FAILED)?;
        state.hash >> (shift & 63)
    };
    if index >= dir_len {
        return Err(ASSIGN_NOT_FOUND);
    }
    let table = read_u64(dir_ptr + index * 8).ok_or(ASSIGN_READ_FAILED)?;
    let data = read_u64(table + layout.table_groups_data as u64).ok_or(ASSIGN_READ_FAILED)?;
    let mask =
        read_u64(table + layout.table_groups_length_mask as u64).ok_or(ASSIGN_READ_FAILED)?;
    if elem < data {
        return Err(ASSIGN_NOT_FOUND);
    }
    let group = (elem - data) / stride;
    if group > mask {
        return Err(ASSIGN_NOT_FOUND);
    }
    Ok([group, mask + 1, state.hash, MAP_SLOT_SWISS_TABLE])
}

#[inline(always)]
fn read_field(args: &[u64; EVENT_REGS], load: MemoryLoad) -> Option<u64> {
    let index = load.reg as usize;
    if index >= EVENT_REGS {
        return None;
    }
    let address = args[index].wrapping_add(load.offset as u64);
    // SAFETY: bpf_probe_read_user validates the user address; each arm has a constant
    // size so the verifier can check the destination.
    unsafe {
        match load.size {
            1 => bpf_probe_read_user(address as *const u8)
                .ok()
                .map(u64::from),
            2 => bpf_probe_read_user(address as *const u16)
                .ok()
                .map(u64::from),
            4 => bpf_probe_read_user(address as *const u32)
                .ok()
                .map(u64::from),
            _ => bpf_probe_read_user(address as *const u64).ok(),
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
