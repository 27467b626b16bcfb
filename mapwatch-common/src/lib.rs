//! Types shared by the BPF programs (mapwatch-ebpf) and userspace (mapwatch).
//!
//! Everything here is `#[repr(C)]` with explicit padding and a size assert: the kernel
//! writes these bytes and userspace reads them, so the layout is the contract.
#![no_std]

/// Slots in the probe tables. One slot is one attached uprobe (one probe site in one
/// process); its number rides in the uprobe's cookie so the BPF program needs no
/// hash lookup to find its configuration or counters.
pub const MAX_PROBE_SLOTS: u32 = 4096;

/// Size of the shared ring buffer. A power-of-two multiple of the page size. 16 MiB
/// (131072 records of 128 B): with 8 MiB, a burst of ~200k records (deepstack under
/// `--exact`, a debug build's aggregator on a loaded 2-vCPU VM) overflowed it in CI.
/// The default only: userspace may size the ring otherwise at load time
/// (`MAPWATCH_RING_BYTES`), so the BPF side asks the ring for its size.
pub const RING_BUF_BYTES: u32 = 16 << 20;

/// The BPF side forces a wake-up of the reader only once this much data is waiting;
/// below it the reader's timer drains the buffer. A wake-up per record costs ~1.5 µs
/// per hit (measured on a 2-vCPU VM), more than the rest of the program. The most it
/// is: see [`ring_wakeup_bytes`].
pub const RING_WAKEUP_BYTES: u64 = 256 << 10;

/// The wake-up threshold of a ring of `ring_bytes`: [`RING_WAKEUP_BYTES`], or a quarter
/// of a smaller ring. A threshold at or above the ring's size is never crossed (the
/// ring is full first), which would leave a small ring to the reader's timer alone.
/// A power of two when `ring_bytes` is one (the kernel requires that of a ring).
pub const fn ring_wakeup_bytes(ring_bytes: u64) -> u64 {
    let quarter = ring_bytes / 4;
    if quarter < RING_WAKEUP_BYTES {
        quarter
    } else {
        RING_WAKEUP_BYTES
    }
}

/// Whether a backlog that grew from `before` to `after` bytes crossed a multiple of
/// `threshold`, a power of two: the bits from the threshold's up differ. Written
/// without a division because the threshold is known only at run time, and a division
/// by a register would put a divide-by-zero panic path into the BPF program. A zero
/// threshold says yes to every record (a wake-up too many, never one too few).
pub const fn crosses_threshold(before: u64, after: u64, threshold: u64) -> bool {
    (before ^ after) >= threshold
}

/// Bytes one [`Event`] takes in the ring: the record and the ring's 8-byte header,
/// rounded up to 8 (kernel/bpf/ringbuf.c `bpf_ringbuf_reserve`).
pub const RING_RECORD_BYTES: u64 = (core::mem::size_of::<Event>() as u64 + 8 + 7) & !7;

/// Callers a [`StackedEvent`] holds at most.
pub const MAX_STACK_DEPTH: usize = 32;

/// A record with the probed call's callers: written instead of an [`Event`] for slots
/// whose [`ProbeSpec::stack_depth`] is nonzero (`mapwatch record`), told apart by its
/// size. Go on amd64 keeps frame pointers: at the probe (before the function pushes
/// RBP) RBP is the caller's frame, [RBP] the next frame's and [RBP+8] the return
/// address into it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackedEvent {
    pub event: Event,
    /// Return addresses beyond `event.caller_pc`, innermost first; `depth` are valid.
    pub frames: [u64; MAX_STACK_DEPTH],
    pub depth: u32,
    pub _pad: u32,
}

/// Number of Go ABI argument registers copied into every record
/// (RAX, RBX, RCX, RDI, RSI, R8 — the first six integer args of ABIInternal on amd64).
pub const EVENT_REGS: usize = 6;

/// Number of config-driven memory loads per probe (hashGrow reads four hmap fields).
pub const PROBE_LOADS: usize = 4;

/// What a probe site is; userspace decides how to interpret the record from it.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// Unused slot.
    None = 0,
    /// `runtime.growslice`, after the stack-bound check.
    GrowsliceEntry = 1,
    /// A RET instruction of `runtime.growslice` (exact mode only).
    GrowsliceRet = 2,
    /// Classic maps: `runtime.hashGrow`.
    HashGrow = 3,
    /// Swiss maps: `(*Map).growToSmall`, `(*Map).growToTable`, `(*table).grow`,
    /// `(*table).split`.
    MapGrowToSmall = 4,
    MapGrowToTable = 5,
    MapTableGrow = 6,
    MapTableSplit = 7,
    /// `runtime.makemap` (with a size hint) and `runtime.makemap_small` (without).
    MakeMap = 8,
    MakeMapSmall = 9,
    /// `runtime.startTheWorldWithSema` entry (Go 1.22+: sees the `worldStop` with the
    /// reason and when stopping started).
    StartTheWorldEntry = 10,
    /// A RET of `runtime.startTheWorldWithSema`: RAX is `now`, the end of the pause.
    StartTheWorldRet = 11,
    /// `runtime.stopTheWorldWithSema` entry (Go ≤1.21, where start does not get the
    /// stop's details).
    StopTheWorldEntry = 12,
    /// `runtime.gcMarkTermination` entry: once per GC cycle.
    GcMarkTermination = 13,
    /// `runtime.growsliceBuf` entry (Go 1.26+): not a growth by itself (it may return
    /// its stack buffer); its caller is the append site of the growslice it may call.
    GrowsliceBufEntry = 14,
    /// `runtime.mapassign_fast64` entry (opt-in hot probe): the kernel saves the map
    /// pointer and the bucket/group size per goroutine for the RET.
    MapAssignEntry = 15,
    /// The instruction after mapassign_fast64's hash call: the key's hash is in RAX.
    MapAssignHash = 16,
    /// A RET of mapassign_fast64: the kernel re-reads the map header and reports where
    /// the returned slot lies (see [`MapAssignLayout`]).
    MapAssignRet = 17,
    /// `runtime.mallocgc` entry (opt-in hot probe): size in RAX.
    Mallocgc = 18,
    /// Go 1.27+ size-specialised `runtime.mallocgc*SC*` entry: called by mallocgc and,
    /// for small `new(T)`, directly by compiled code.
    MallocgcSpecialized = 19,
    /// A RET of `runtime.makemap` or `makemap_small` (`mapwatch record` only): RAX is
    /// the new map, which ties its later growths to this make and its hint.
    MakeMapRet = 20,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 20] = [
        ProbeKind::GrowsliceEntry,
        ProbeKind::GrowsliceRet,
        ProbeKind::HashGrow,
        ProbeKind::MapGrowToSmall,
        ProbeKind::MapGrowToTable,
        ProbeKind::MapTableGrow,
        ProbeKind::MapTableSplit,
        ProbeKind::MakeMap,
        ProbeKind::MakeMapSmall,
        ProbeKind::StartTheWorldEntry,
        ProbeKind::StartTheWorldRet,
        ProbeKind::StopTheWorldEntry,
        ProbeKind::GcMarkTermination,
        ProbeKind::GrowsliceBufEntry,
        ProbeKind::MapAssignEntry,
        ProbeKind::MapAssignHash,
        ProbeKind::MapAssignRet,
        ProbeKind::Mallocgc,
        ProbeKind::MallocgcSpecialized,
        ProbeKind::MakeMapRet,
    ];

    pub const fn from_u16(value: u16) -> ProbeKind {
        match value {
            1 => ProbeKind::GrowsliceEntry,
            2 => ProbeKind::GrowsliceRet,
            3 => ProbeKind::HashGrow,
            4 => ProbeKind::MapGrowToSmall,
            5 => ProbeKind::MapGrowToTable,
            6 => ProbeKind::MapTableGrow,
            7 => ProbeKind::MapTableSplit,
            8 => ProbeKind::MakeMap,
            9 => ProbeKind::MakeMapSmall,
            10 => ProbeKind::StartTheWorldEntry,
            11 => ProbeKind::StartTheWorldRet,
            12 => ProbeKind::StopTheWorldEntry,
            13 => ProbeKind::GcMarkTermination,
            14 => ProbeKind::GrowsliceBufEntry,
            15 => ProbeKind::MapAssignEntry,
            16 => ProbeKind::MapAssignHash,
            17 => ProbeKind::MapAssignRet,
            18 => ProbeKind::Mallocgc,
            19 => ProbeKind::MallocgcSpecialized,
            20 => ProbeKind::MakeMapRet,
            _ => ProbeKind::None,
        }
    }

    /// The kind's name in the `probe` label of the metrics and in `inspect`. Here, next
    /// to the kinds, so that a new kind cannot be added without one; one per kind keeps
    /// the label's cardinality bounded.
    pub const fn label(self) -> &'static str {
        match self {
            ProbeKind::GrowsliceEntry => "growslice",
            ProbeKind::GrowsliceRet => "growslice_ret",
            ProbeKind::HashGrow => "hashgrow",
            ProbeKind::MapGrowToSmall => "map_grow_to_small",
            ProbeKind::MapGrowToTable => "map_grow_to_table",
            ProbeKind::MapTableGrow => "map_table_grow",
            ProbeKind::MapTableSplit => "map_table_split",
            ProbeKind::MakeMap => "makemap",
            ProbeKind::MakeMapSmall => "makemap_small",
            ProbeKind::StartTheWorldEntry => "start_the_world",
            ProbeKind::StartTheWorldRet => "start_the_world_ret",
            ProbeKind::StopTheWorldEntry => "stop_the_world",
            ProbeKind::GcMarkTermination => "gc_mark_termination",
            ProbeKind::GrowsliceBufEntry => "growslice_buf",
            ProbeKind::MapAssignEntry => "mapassign_fast64",
            ProbeKind::MapAssignHash => "mapassign_fast64_hash",
            ProbeKind::MapAssignRet => "mapassign_fast64_ret",
            ProbeKind::Mallocgc => "mallocgc",
            ProbeKind::MallocgcSpecialized => "mallocgc_specialized",
            ProbeKind::MakeMapRet => "makemap_ret",
            ProbeKind::None => "none",
        }
    }
}

/// The names of the BPF maps, by which userspace takes them from the loaded object
/// (`Ebpf::take_map`). aya-ebpf's `#[map]` accepts only a string literal as its name, so
/// the BPF side cannot use these: there the static's identifier is the name, and
/// `mapwatch/tests/bpf_map_names.rs` fails when the built object and this list differ.
pub mod map_names {
    /// The ring buffer of [`Event`](crate::Event) records.
    pub const EVENTS: &str = "EVENTS";
    /// [`ProbeSpec`](crate::ProbeSpec) per slot.
    pub const PROBE_SPECS: &str = "PROBE_SPECS";
    /// Hits per slot, per CPU.
    pub const PROBE_HITS: &str = "PROBE_HITS";
    /// Records that did not fit in [`EVENTS`], per slot, per CPU.
    pub const EVENTS_LOST: &str = "EVENTS_LOST";
    /// [`MapAssignLayout`](crate::MapAssignLayout) per slot.
    pub const MAP_ASSIGN_LAYOUTS: &str = "MAP_ASSIGN_LAYOUTS";
    /// [`DirectoryLayout`](crate::DirectoryLayout) per slot.
    pub const DIRECTORY_LAYOUTS: &str = "DIRECTORY_LAYOUTS";
    /// mapassign_fast64 entry → RET state; the kernel's own, never taken by userspace.
    pub const ASSIGN_STATE: &str = "ASSIGN_STATE";
    /// The ring buffer of [`ProcessNotice`](crate::ProcessNotice)s.
    pub const PROCESS_NOTICES: &str = "PROCESS_NOTICES";
    /// Notices that did not fit in [`PROCESS_NOTICES`].
    pub const PROCESS_NOTICES_LOST: &str = "PROCESS_NOTICES_LOST";
    /// Per slot: nonzero while the overhead budget has the slot paused.
    pub const SLOTS_PAUSED: &str = "SLOTS_PAUSED";
    /// Traps of paused slots, per slot, per CPU.
    pub const PAUSED_HITS: &str = "PAUSED_HITS";

    /// Every map mapwatch's BPF object defines (aya-log's own map aside).
    pub const ALL: [&str; 11] = [
        EVENTS,
        PROBE_SPECS,
        PROBE_HITS,
        EVENTS_LOST,
        MAP_ASSIGN_LAYOUTS,
        DIRECTORY_LAYOUTS,
        ASSIGN_STATE,
        PROCESS_NOTICES,
        PROCESS_NOTICES_LOST,
        SLOTS_PAUSED,
        PAUSED_HITS,
    ];
}

/// Read `size` bytes at `regs[reg] + offset` from the target's memory.
/// Used for struct fields whose offsets vary by Go version (they come from userspace).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryLoad {
    /// Index into [`Event::regs`]; [`MemoryLoad::NONE`] disables the load.
    pub reg: u8,
    /// 1, 2, 4 or 8.
    pub size: u8,
    pub _pad: [u8; 2],
    pub offset: u32,
}

impl MemoryLoad {
    pub const NONE: u8 = 0xff;
    pub const fn is_enabled(&self) -> bool {
        self.reg != Self::NONE
    }

    pub const fn disabled() -> Self {
        MemoryLoad {
            reg: Self::NONE,
            size: 0,
            _pad: [0; 2],
            offset: 0,
        }
    }
}

/// Per-slot configuration, written by userspace before the uprobe is attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// `ProbeKind as u16`; `ProbeKind::None` makes the program return at once.
    pub kind: u16,
    pub flags: u16,
    /// Callers to walk (frame pointers) beyond the return address, at most
    /// [`MAX_STACK_DEPTH`]; nonzero makes the record a [`StackedEvent`].
    pub stack_depth: u8,
    pub _pad: [u8; 3],
    pub loads: [MemoryLoad; PROBE_LOADS],
}

impl ProbeSpec {
    /// Read the return address at [RSP]. Only valid where nothing has been pushed yet,
    /// i.e. at the first instruction after the stack-bound check.
    pub const FLAG_CALLER_PC: u16 = 1;
}

/// How the kernel finds the slot a `mapassign_fast64` returned, per probe slot (the
/// entry, hash and RET slots of one binary carry the same layout). Offsets are from
/// DWARF or the generated table; the kernel only follows them.
///
/// At RET the kernel writes into [`Event::loads`]:
/// `[bucket or group index, buckets or groups in the table, overflow depth (classic)
/// or hash (Swiss), MAP_SLOT_* tag]`; bits of [`Event::load_failed`] say why not
/// (`ASSIGN_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapAssignLayout {
    /// [`MapAssignLayout::CLASSIC`] or [`MapAssignLayout::SWISS`]; 0 = unused slot.
    pub implementation: u8,
    /// Index into [`Event::regs`] of the map pointer at entry.
    pub map_reg: u8,
    /// … of the hash at the hash site.
    pub hash_reg: u8,
    /// … of the returned element pointer at RET.
    pub elem_reg: u8,
    /// Classic `runtime.hmap.B` (u8) and `.buckets`.
    pub hmap_b: u32,
    pub hmap_buckets: u32,
    /// Swiss `internal/runtime/maps.Map.dirPtr`, `.dirLen`, `.globalShift` (u8).
    pub map_dir_ptr: u32,
    pub map_dir_len: u32,
    pub map_global_shift: u32,
    /// Swiss `table.groups.data` and `table.groups.lengthMask`, from the table's start.
    pub table_groups_data: u32,
    pub table_groups_length_mask: u32,
}

impl MapAssignLayout {
    pub const CLASSIC: u8 = 1;
    pub const SWISS: u8 = 2;
    /// Overflow buckets the kernel follows before giving up (ASSIGN_NOT_FOUND).
    pub const MAX_OVERFLOW_WALK: u32 = 32;
}

/// `Event::loads[3]` of a mapassign RET record: what kind of slot the first three are.
pub const MAP_SLOT_CLASSIC: u64 = 0;
pub const MAP_SLOT_SWISS_TABLE: u64 = 1;
/// A Swiss map with one group and no table (dirLen == 0).
pub const MAP_SLOT_SWISS_SMALL: u64 = 2;

/// `Event::load_failed` bits of a mapassign RET record.
pub const ASSIGN_NO_ENTRY: u16 = 1;
pub const ASSIGN_NO_HASH: u16 = 2;
pub const ASSIGN_READ_FAILED: u16 = 4;
pub const ASSIGN_NOT_FOUND: u16 = 8;

/// Kernel state between a mapassign_fast64 entry and its RET, keyed by
/// [`GoroutineKey`]: goroutines migrate between threads, and a panic leaves no RET
/// (the map is an LRU, so leftovers age out).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AssignState {
    pub map: u64,
    /// Classic `maptype.BucketSize` or Swiss `MapType.GroupSize`, read at entry.
    pub stride: u64,
    pub hash: u64,
    pub has_hash: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoroutineKey {
    pub tgid: u32,
    pub _pad: u32,
    pub goroutine: u64,
}

/// Entries of the kernel's entry→RET state: goroutines inside mapassign at once.
pub const ASSIGN_STATE_ENTRIES: u32 = 16384;

/// One record in the ring buffer: what the probe saw, uninterpreted.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub ktime_ns: u64,
    /// R14: the current goroutine (`g`) in Go's register ABI. Pairs entry and RET
    /// records — goroutines migrate between threads, so the tid cannot.
    pub goroutine: u64,
    /// The return address at [RSP] (0 when the spec does not ask for it).
    pub caller_pc: u64,
    pub regs: [u64; EVENT_REGS],
    pub loads: [u64; PROBE_LOADS],
    pub tgid: u32,
    pub tid: u32,
    pub slot: u32,
    pub kind: u16,
    /// Bit i set: load i failed (page not present, bad pointer).
    pub load_failed: u16,
    /// A value the kernel derived by walking the target's memory, for slots with a
    /// [`DirectoryLayout`]: a Swiss map's slots over all its tables; `u64::MAX` when
    /// the walk failed or was cut short.
    pub derived: u64,
}

/// Per slot (Swiss map growth probes only): how to total a map's slots over its
/// distinct tables, read at the growth's entry. The directory repeats a table
/// 2^(globalDepth − localDepth) times in a row (internal/runtime/maps/map.go), so the
/// walk steps over the repeats.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectoryLayout {
    /// 0: this slot has no directory to walk.
    pub enabled: u8,
    /// Index into [`Event::regs`] of the `*Map`.
    pub map_reg: u8,
    pub _pad: [u8; 2],
    /// `internal/runtime/maps.Map.dirPtr`, `.dirLen`, `.globalDepth` (u8).
    pub map_dir_ptr: u32,
    pub map_dir_len: u32,
    pub map_global_depth: u32,
    /// `internal/runtime/maps.table.capacity` (u16), `.localDepth` (u8).
    pub table_capacity: u32,
    pub table_local_depth: u32,
}

/// Distinct tables the kernel visits at most (1024 slots each: maps of up to ~900k
/// entries); beyond, the total is reported as unknown.
pub const MAX_DIRECTORY_TABLES: u32 = 256;
/// [`Event::derived`] when the kernel could not derive the value.
pub const DERIVED_UNKNOWN: u64 = u64::MAX;

const _: () = assert!(core::mem::size_of::<MemoryLoad>() == 8);
const _: () = assert!(core::mem::size_of::<ProbeSpec>() == 8 + 8 * PROBE_LOADS);
const _: () = assert!(core::mem::size_of::<Event>() == 128);
const _: () = assert!(core::mem::size_of::<StackedEvent>() == 128 + 8 * MAX_STACK_DEPTH + 8);
const _: () = assert!(core::mem::size_of::<DirectoryLayout>() == 24);
const _: () = assert!(core::mem::size_of::<MapAssignLayout>() == 32);
const _: () = assert!(core::mem::size_of::<AssignState>() == 32);
const _: () = assert!(core::mem::size_of::<GoroutineKey>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_kinds_round_trip_through_u16() {
        for kind in ProbeKind::ALL {
            assert_eq!(ProbeKind::from_u16(kind as u16), kind);
        }
        assert_eq!(ProbeKind::from_u16(0xffff), ProbeKind::None);
    }

    #[test]
    fn probe_kinds_have_distinct_labels() {
        // Two kinds under one label would merge their series in every metric.
        for (i, a) in ProbeKind::ALL.iter().enumerate() {
            assert!(!a.label().is_empty());
            assert_ne!(a.label(), ProbeKind::None.label(), "{a:?}");
            for b in &ProbeKind::ALL[i + 1..] {
                assert_ne!(a.label(), b.label(), "{a:?} and {b:?}");
            }
        }
    }

    #[test]
    fn wakeup_threshold_fits_every_ring() {
        assert_eq!(
            ring_wakeup_bytes(u64::from(RING_BUF_BYTES)),
            RING_WAKEUP_BYTES
        );
        assert_eq!(ring_wakeup_bytes(4096), 1024);
        assert_eq!(ring_wakeup_bytes(64 << 10), 16 << 10);
        assert_eq!(ring_wakeup_bytes(1 << 20), RING_WAKEUP_BYTES);
        for shift in 12..32 {
            let wakeup = ring_wakeup_bytes(1 << shift);
            assert!(wakeup.is_power_of_two() && wakeup < 1 << shift, "{shift}");
        }
    }

    #[test]
    fn threshold_crossings_match_division() {
        for threshold in [1024u64, 16 << 10, RING_WAKEUP_BYTES] {
            for after in (0..4 * threshold).step_by(8) {
                let before = after.saturating_sub(RING_RECORD_BYTES);
                assert_eq!(
                    crosses_threshold(before, after, threshold),
                    before / threshold != after / threshold,
                    "{before} → {after} over {threshold}"
                );
            }
        }
        assert!(crosses_threshold(0, RING_RECORD_BYTES, 0));
    }

    #[test]
    fn map_names_are_distinct() {
        for (i, a) in map_names::ALL.iter().enumerate() {
            assert!(!map_names::ALL[i + 1..].contains(a), "{a}");
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers with explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::ProbeSpec {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::MapAssignLayout {}
    unsafe impl aya::Pod for super::DirectoryLayout {}
}

/// Bytes of the ring buffer that carries process exec/exit notices to the daemon.
pub const PROCESS_RING_BYTES: u32 = 256 << 10;

/// A process exec'd (`sched_process_exec`) or its last thread exited
/// (`sched_process_exit` of the thread group leader): the daemon's cue to attach or
/// detach without waiting for its next /proc scan.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessNotice {
    pub tgid: u32,
    pub kind: u32,
}

impl ProcessNotice {
    pub const EXEC: u32 = 1;
    pub const EXIT: u32 = 2;
}

const _: () = assert!(core::mem::size_of::<ProcessNotice>() == 8);

#[cfg(feature = "user")]
// SAFETY: two u32s, no padding: every bit pattern is valid.
unsafe impl aya::Pod for ProcessNotice {}
