//! The record file (`mapwatch record -o FILE`), version 1. docs/record-format.md is the
//! user's description; this file is the definition.
//!
//! ```text
//! MAGIC (8 bytes) · version (u16 LE) · header length (u32 LE) · header (JSON)
//! then blocks until the end of the file:
//!   body length (u32 LE) · CRC-32 of the body (u32 LE) · body
//!   body = raw DEFLATE of the postcard encoding of Vec<Entry>
//! ```
//!
//! Blocks are only ever appended, each written whole and flushed, so a capture killed
//! mid-write is readable up to its last complete block. Names (functions, files, types)
//! are interned: an entry refers to a [`Entry::Name`] or [`Entry::Site`] written earlier
//! in the same or an earlier block. Times are nanoseconds since the header's start.
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"MWRECORD";
pub const FORMAT_VERSION: u16 = 1;
/// A block larger than this is damage, not data (a block holds ~1 s of events).
pub const MAX_BLOCK_BYTES: u32 = 64 << 20;
/// A header larger than this is damage.
pub const MAX_HEADER_BYTES: u32 = 1 << 20;

/// What was captured, written before the first block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The mapwatch version that wrote the file.
    pub mapwatch_version: String,
    /// Wall-clock start, seconds since the Unix epoch (for people).
    pub start_unix_s: f64,
    /// Start on CLOCK_MONOTONIC (the records' clock), nanoseconds.
    pub start_monotonic_ns: u64,
    /// The duration asked for (`--duration`), seconds; None: until stopped.
    pub duration_asked_s: Option<f64>,
    pub target: TargetInfo,
    /// The probes attached for the capture.
    pub probes: Vec<ProbeInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub pid: u32,
    /// The executable as the process ran it.
    pub binary: String,
    /// The Go build ID (`go tool buildid`), empty if the binary has none.
    pub build_id: String,
    pub go_version: String,
    /// "classic" or "swiss".
    pub map_implementation: String,
    /// The command line, when mapwatch started the program (`record -- CMD`).
    pub command: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeInfo {
    /// The `probe` label value (docs/metrics.md), e.g. "growslice".
    pub probe: String,
    pub sites: u32,
    /// Share of the capture the probe was attached: record keeps every probe on (1).
    pub duty_cycle: f64,
}

/// Refers to an [`Entry::Name`]; 0 is the empty name ("unknown").
pub type NameId = u32;
/// Refers to an [`Entry::Site`]; 0 is an unknown site.
pub type SiteId = u32;

/// One entry of a block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    /// Defines name `id` (ids count up from 1 in order of definition).
    Name { id: NameId, text: String },
    /// Defines source site `id` (ids count up from 1): a line in a function.
    Site {
        id: SiteId,
        function: NameId,
        file: NameId,
        line: u32,
    },
    /// runtime.growslice: one append outgrew its backing array.
    SliceGrowth {
        t: u64,
        goroutine: u64,
        site: SiteId,
        elem_type: NameId,
        elem_size: Option<u64>,
        old_ptr: u64,
        /// Elements copied into the new array.
        old_len: u64,
        old_cap: u64,
        new_len: u64,
        new_cap: Option<u64>,
        new_bytes: Option<u64>,
        /// The call's return address and, with `--stack-depth`, each further caller's,
        /// innermost first; each address as its source frames, innermost first (a call
        /// the compiler inlined gives several; `site` is `frames[0][0]`).
        frames: Vec<Vec<SiteId>>,
    },
    /// growslice's return, on the same goroutine: the new array's address.
    SliceGrown {
        t: u64,
        goroutine: u64,
        new_ptr: u64,
        new_cap: u64,
    },
    /// A map grew.
    MapGrowth {
        t: u64,
        goroutine: u64,
        site: SiteId,
        /// The `kind` label of mapwatch_map_grow_total ("double", "table_split", …).
        kind: NameId,
        map: u64,
        /// e.g. "map[string]int".
        map_type: NameId,
        size: Option<u64>,
        load_factor: Option<f64>,
        overflow_buckets: Option<u64>,
        slots_after: Option<u64>,
        /// As in `SliceGrowth`: `site` is the runtime's frame; the first frame outside
        /// the runtime is the line that inserted.
        frames: Vec<Vec<SiteId>>,
    },
    /// make(map) with its size hint.
    MakeMap {
        t: u64,
        goroutine: u64,
        site: SiteId,
        map_type: NameId,
        hint: u64,
    },
    /// makemap's return, on the same goroutine: the new map's address.
    MapMade { t: u64, goroutine: u64, map: u64 },
    /// A stop-the-world pause; `t` is its start.
    StwPause {
        t: u64,
        duration_ns: u64,
        reason: NameId,
    },
    /// A GC cycle ended.
    GcCycle { t: u64 },
    /// The capture's end: written last, absent if the capture was killed.
    End(Summary),
}

/// What only the end of a capture knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub duration_ns: u64,
    /// Why the capture ended ("duration elapsed", "process 123 exited", …).
    pub stopped_because: String,
    /// Records the kernel could not put in the ring buffer (events_lost_total).
    pub events_lost: u64,
    /// Decoded events the file writer could not keep up with.
    pub observations_dropped: u64,
}
