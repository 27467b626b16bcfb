//! Types shared by the BPF programs (mapwatch-ebpf) and userspace (mapwatch).
//!
//! Everything here is `#[repr(C)]` with explicit padding and a size assert: the kernel
//! writes these bytes and userspace reads them, so the layout is the contract.
#![no_std]

/// Slots in the probe tables. One slot is one attached uprobe (one probe site in one
/// process); its number rides in the uprobe's cookie so the BPF program needs no
/// hash lookup to find its configuration or counters.
pub const MAX_PROBE_SLOTS: u32 = 4096;

/// Size of the shared ring buffer. A power-of-two multiple of the page size.
pub const RING_BUF_BYTES: u32 = 8 << 20;

/// The BPF side forces a wake-up of the reader only once this much data is waiting;
/// below it the reader's timer drains the buffer. A wake-up per record costs ~1.5 µs
/// per hit on this kind of VM (TOOLCHAIN.md), more than the rest of the program.
pub const RING_WAKEUP_BYTES: u64 = 256 << 10;

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
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 14] = [
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
            _ => ProbeKind::None,
        }
    }
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
    pub _pad: u32,
    pub loads: [MemoryLoad; PROBE_LOADS],
}

impl ProbeSpec {
    /// Read the return address at [RSP]. Only valid where nothing has been pushed yet,
    /// i.e. at the first instruction after the stack-bound check.
    pub const FLAG_CALLER_PC: u16 = 1;
}

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
}

const _: () = assert!(core::mem::size_of::<MemoryLoad>() == 8);
const _: () = assert!(core::mem::size_of::<ProbeSpec>() == 8 + 8 * PROBE_LOADS);
const _: () = assert!(core::mem::size_of::<Event>() == 120);

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
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers with explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::ProbeSpec {}
    unsafe impl aya::Pod for super::Event {}
}
