//! What a report says, whatever its format: built from a recording by `analyse/`,
//! rendered by the other files of this room. The JSON format is this model serialized
//! (docs/report.md describes it; `SCHEMA_VERSION` changes when a field's meaning does).
use std::collections::BTreeMap;

use serde::Serialize;

/// Version of the JSON report's schema (docs/report.schema.json).
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub capture: CaptureInfo,
    pub summary: Summary,
    /// By growths, most first.
    pub slice_sites: Vec<SliceSite>,
    /// By growths, most first.
    pub map_sites: Vec<MapSite>,
    pub timeline: Timeline,
    /// Every stop-the-world pause, in order.
    pub stw_pauses: Vec<Pause>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptureInfo {
    pub binary: String,
    pub build_id: String,
    pub go_version: String,
    /// "classic" or "swiss".
    pub map_implementation: String,
    pub pid: u32,
    /// The command line, when mapwatch started the program.
    pub command: Option<Vec<String>>,
    pub start_unix_s: f64,
    pub duration_s: f64,
    /// Why the capture ended; None when it was killed.
    pub stopped_because: Option<String>,
    /// False when events were lost or the file's tail was damaged: counts are then
    /// lower bounds.
    pub complete: bool,
    pub damage: Option<String>,
    pub events_lost: u64,
    pub observations_dropped: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub slice_growths: u64,
    pub slice_growths_per_s: f64,
    /// Bytes of the new backing arrays.
    pub slice_bytes_allocated: u64,
    /// Bytes copied from old arrays into new ones (old length × element size).
    pub slice_bytes_copied: u64,
    pub slice_bytes_copied_per_s: f64,
    pub map_growths: u64,
    pub map_growths_per_s: f64,
    pub gc_cycles: u64,
    pub stw_pauses: u64,
    pub stw_p50_ms: f64,
    pub stw_p99_ms: f64,
    pub stw_max_ms: f64,
    pub stw_total_ms: f64,
    /// Pearson correlation, over GC cycles, of bytes allocated by slice growth during
    /// the cycle with the cycle's STW time; None with fewer than 3 cycles.
    pub growth_stw_correlation: Option<f64>,
}

/// A source line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Location {
    pub function: String,
    pub file: String,
    pub line: u32,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A distribution of counts over instances (slices, maps).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Distribution {
    pub count: u64,
    pub p50: u64,
    pub p95: u64,
    pub max: u64,
    pub mean: f64,
}

/// What to change at a site, or why nothing.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Advice {
    /// Pre-size to `n`: the growths and bytes it saves are estimated from the capture.
    PreSize {
        n: u64,
        /// The Go expression to write, e.g. `make([]main.Item, 0, 512)`.
        code: String,
        /// Growths the capture would not have had, per instance and per second.
        growths_saved: u64,
        growths_saved_per_instance: f64,
        bytes_saved_per_s: f64,
        /// One sentence with the numbers.
        message: String,
    },
    /// Nothing to change here, and why.
    None { why: String },
}

impl Advice {
    pub fn is_advised(&self) -> bool {
        matches!(self, Advice::PreSize { .. })
    }

    pub fn message(&self) -> &str {
        match self {
            Advice::PreSize { message, .. } => message,
            Advice::None { why } => why,
        }
    }
}

/// A frame-pointer stack (innermost first), with what was counted under it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stack {
    pub frames: Vec<Location>,
    /// By frame: true when it is inlined into the next frame (the compiler put both at
    /// one machine address; pprof shows them as one location's lines).
    pub inlined: Vec<bool>,
    pub growths: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SliceSite {
    /// The append; None for growths whose caller could not be named.
    pub location: Option<Location>,
    /// Element types seen here, most growths first (a generic function's append sees
    /// GC shapes like go.shape.int64).
    pub elem_types: Vec<String>,
    pub elem_size: Option<u64>,
    pub growths: u64,
    pub bytes_allocated: u64,
    pub bytes_copied: u64,
    pub bytes_copied_per_s: f64,
    /// Slices seen growing here: chains of growths of one backing array after another.
    pub instances: u64,
    pub growths_per_instance: Distribution,
    /// Capacity of each instance after its last growth in the capture.
    pub final_cap: Distribution,
    /// Instances whose first growth started from a non-empty array (a make, a literal,
    /// or a growth before the capture).
    pub started_non_empty: u64,
    /// Stacks (with `record --stack-depth`), most growths first.
    pub stacks: Vec<Stack>,
    pub advice: Advice,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MapSite {
    /// The user-code line whose insert grew the map (the first frame outside the
    /// runtime); None when unknown.
    pub location: Option<Location>,
    /// Map types seen growing here (e.g. `map[string]int`), most maps first.
    pub map_types: Vec<String>,
    /// Growths by kind ("double", "same_size", "to_small", "to_table", "table_grow",
    /// "table_split").
    pub kinds: BTreeMap<String, u64>,
    pub growths: u64,
    /// Maps seen growing here (by map header address).
    pub maps: u64,
    pub growths_per_map: Distribution,
    /// Entries at each map's last growth.
    pub size_at_last_growth: Distribution,
    /// Entries each map can hold without growing again, after its last growth.
    pub capacity_reached: Distribution,
    /// make(map, hint) hints of these maps, where the make was seen (its result tied to
    /// the map's address).
    pub hint: Option<Distribution>,
    /// Where most of these maps were made, when seen.
    pub made_at: Option<Location>,
    pub mean_load_factor_at_growth: Option<f64>,
    /// Classic maps: mean overflow buckets at growth.
    pub mean_overflow_buckets_at_growth: Option<f64>,
    pub stacks: Vec<Stack>,
    pub advice: Advice,
}

/// Counts per time bucket from the capture's start.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timeline {
    pub bucket_s: f64,
    pub slice_growths: Vec<u64>,
    pub map_growths: Vec<u64>,
    pub slice_bytes_copied: Vec<u64>,
    pub gc_cycles: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pause {
    /// Start, seconds from the capture's start.
    pub t_s: f64,
    pub duration_ms: f64,
    pub reason: String,
}
