//! The runtime functions mapwatch probes, by their linker symbol names (the names in
//! `.symtab` and in the pclntab), and which Go versions have them. `plan/` decides what
//! to read at each; this file is where a new Go version's renames and additions go.
//!
//! Source files are under `src/` of the Go toolchain. "Every supported version" is every
//! minor in [`super::versions::SUPPORTED_MINORS`], checked when that list last grew: a
//! new version needs its sources read for each name here (docs/NEW_GO_VERSION.md).

// --- Slices -------------------------------------------------------------------------

/// Every supported version: src/runtime/slice.go. Its arguments moved in 1.20
/// ([`super::versions::GrowsliceAbi`]).
pub const GROWSLICE: &str = "runtime.growslice";

/// Go 1.26+: src/runtime/slice.go, for appends that start in a stack buffer. Linked only
/// when the compiler emitted a call to it, so its absence is not an error.
pub const GROWSLICE_BUF: &str = "runtime.growsliceBuf";

// --- Map growth -------------------------------------------------------------------

/// Classic maps' growth: src/runtime/map.go up to 1.23, map_noswiss.go in 1.24–1.25
/// (GOEXPERIMENT=noswissmap); gone in 1.26, where Swiss maps are the only kind.
pub const HASH_GROW: &str = "runtime.hashGrow";

/// Swiss maps' growth, 1.24+, one function per kind of growth. A map's first group:
/// src/internal/runtime/maps/map.go.
pub const GROW_TO_SMALL: &str = "internal/runtime/maps.(*Map).growToSmall";
/// A small map (one group) becoming a table: src/internal/runtime/maps/map.go.
pub const GROW_TO_TABLE: &str = "internal/runtime/maps.(*Map).growToTable";
/// A table doubling its capacity, or splitting in two once doubling would pass
/// `maxTableCapacity`: src/internal/runtime/maps/table.go. `(*table).rehash` there only
/// chooses between the two, so it has no name here: probing it would count each growth
/// twice.
pub const TABLE_GROW: &str = "internal/runtime/maps.(*table).grow";
pub const TABLE_SPLIT: &str = "internal/runtime/maps.(*table).split";

// --- Map creation -------------------------------------------------------------------

/// Every supported version, both map kinds: src/runtime/map.go up to 1.23 and from 1.26;
/// map_noswiss.go and map_swiss.go in 1.24–1.25 (one of them is built, by
/// GOEXPERIMENT).
pub const MAKEMAP: &str = "runtime.makemap";
/// `make(map)` without a size hint, in the same files as [`MAKEMAP`].
pub const MAKEMAP_SMALL: &str = "runtime.makemap_small";

// --- Stop-the-world pauses and GC cycles --------------------------------------------

/// Every supported version: src/runtime/proc.go. Which of the two a pause is measured
/// with depends on the version ([`super::versions::StwAbi`]).
pub const START_THE_WORLD: &str = "runtime.startTheWorldWithSema";
pub const STOP_THE_WORLD: &str = "runtime.stopTheWorldWithSema";
/// Every supported version: src/runtime/mgc.go. GC cycles are counted here rather than
/// at `gcStart` (same file), which returns early and is called by several goroutines
/// per cycle.
pub const GC_MARK_TERMINATION: &str = "runtime.gcMarkTermination";

// --- Hot probes (opt-in) ------------------------------------------------------------

/// Every supported version, under this one name. Classic maps: src/runtime/map_fast64.go
/// up to 1.23, map_fast64_noswiss.go in 1.24–1.25. Swiss maps: the body is
/// `runtime_mapassign_fast64` in src/internal/runtime/maps/runtime_fast64_swiss.go
/// (1.24–1.25) or runtime_fast64.go (1.26+), given this name by a `go:linkname`.
pub const MAPASSIGN_FAST64: &str = "runtime.mapassign_fast64";

/// Go 1.27: src/internal/runtime/maps/runtime_fast64.go hashes the key with a direct
/// call to `memHash64AES` when the CPU has AES, else to `memHash64Fallback`. Earlier
/// versions call the map type's Hasher, a func value, so there is no name to look for.
pub const MEMHASH64: [&str; 2] = [
    "internal/runtime/maps.memHash64AES",
    "internal/runtime/maps.memHash64Fallback",
];

/// Every supported version: src/runtime/malloc.go, as `mallocgc(size uintptr, typ *_type,
/// needzero bool)`, so the size is in RAX whatever the version.
pub const MALLOCGC: &str = "runtime.mallocgc";

/// Go 1.27: src/runtime/malloc_generated.go. GOEXPERIMENT SizeSpecializedMalloc is on by
/// default from 1.27 (src/internal/buildcfg/exp.go; 1.26 has the experiment, off), and
/// compiled code then calls these directly for `new(T)` of at most 80 bytes, bypassing
/// mallocgc: without them the malloc signal would be partial. mallocgc calls them too
/// (the aggregator skips hits whose caller is mallocgc, so nothing is counted twice).
/// Same signature as mallocgc. 1.27 generates only the size classes up to 80 bytes:
/// SC1–SC7, and SC2 alone for tiny objects.
pub const MALLOCGC_SPECIALIZED: [&str; 14] = [
    "runtime.mallocgcTinySC2",
    "runtime.mallocgcSmallNoScanSC2",
    "runtime.mallocgcSmallNoScanSC3",
    "runtime.mallocgcSmallNoScanSC4",
    "runtime.mallocgcSmallNoScanSC5",
    "runtime.mallocgcSmallNoScanSC6",
    "runtime.mallocgcSmallNoScanSC7",
    "runtime.mallocgcSmallScanNoHeaderSC1",
    "runtime.mallocgcSmallScanNoHeaderSC2",
    "runtime.mallocgcSmallScanNoHeaderSC3",
    "runtime.mallocgcSmallScanNoHeaderSC4",
    "runtime.mallocgcSmallScanNoHeaderSC5",
    "runtime.mallocgcSmallScanNoHeaderSC6",
    "runtime.mallocgcSmallScanNoHeaderSC7",
];
