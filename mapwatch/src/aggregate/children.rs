//! Metric children resolved once and kept, so that applying a record is integer hashing
//! and atomic adds. `with_label_values` hashes every label string and allocates; done per
//! record it was ~70% of the daemon's CPU at 100k records/s (BENCHMARKS.md).
//!
//! Children are created on first use, not up front, so that a workload exports only the
//! series of the probes that fired. A workload's children are dropped with its state
//! when its series expire (`Metrics::forget_workload`); a process's with the process.
use std::cell::OnceCell;

use foldhash::HashMap;

use prometheus::{
    IntCounter,
    core::{MetricVec, MetricVecBuilder},
};

use crate::{
    metrics::{Histogram, WorkloadLabels},
    symbolize::CallSite,
};

/// The children of the metrics labelled by the workload alone (plus `kind` for
/// map growth, a closed set).
#[derive(Default)]
pub struct WorkloadChildren {
    pub slice_grow_bytes_total: OnceCell<IntCounter>,
    pub slice_grow_new_cap: OnceCell<Histogram>,
    pub slice_grow_unknown: OnceCell<IntCounter>,
    pub map_grow_total: HashMap<&'static str, IntCounter>,
    pub map_size_at_grow: OnceCell<Histogram>,
    pub map_buckets_log2: OnceCell<Histogram>,
    pub map_directory_len: OnceCell<Histogram>,
    pub map_load_factor_at_grow: OnceCell<Histogram>,
    pub map_overflow_buckets_at_grow: OnceCell<Histogram>,
    pub map_make_hint: OnceCell<Histogram>,
    pub map_assign_bucket_position: OnceCell<Histogram>,
    pub map_probe_length: OnceCell<Histogram>,
    pub malloc_total: OnceCell<IntCounter>,
    pub malloc_bytes_total: OnceCell<IntCounter>,
}

/// `cell`'s child of `vec` for `labels`, resolved the first time.
pub fn child<'a, B: MetricVecBuilder>(
    cell: &'a OnceCell<B::M>,
    vec: &MetricVec<B>,
    labels: &WorkloadLabels,
) -> &'a B::M {
    cell.get_or_init(|| vec.with_label_values(&labels.values()))
}

/// Where a growslice caller PC counts.
#[derive(Clone)]
pub enum SiteChild {
    /// A line of the program (or `other`).
    Line(IntCounter),
    /// Inside growsliceBuf (Go 1.26+): the append site is growsliceBuf's caller. Its own
    /// line counts only when that caller is not known (its series is made then, not
    /// before: an idle series would name a runtime line as a place to fix).
    ViaGrowsliceBuf(CallSite),
    /// Not a known function.
    Unknown,
}

/// Per process: children by the raw numbers a record carries. Addresses are per
/// process (PIE, ASLR), so the cache is too.
#[derive(Default)]
pub struct ProcessChildren {
    pub by_elem_type: HashMap<u64, IntCounter>,
    pub by_caller: HashMap<u64, SiteChild>,
    /// Whether a `mallocgc*SC*` call from this return address is mallocgc's own.
    pub called_by_mallocgc: HashMap<u64, bool>,
}

/// Entries a process's cache may hold before it is emptied (bounds memory against a
/// program that makes types with reflect without end).
pub const MAX_CACHED: usize = 1 << 16;

impl ProcessChildren {
    /// Empties a map that grew past [`MAX_CACHED`]: entries are cheap to resolve again.
    pub fn bound(&mut self) {
        if self.by_elem_type.len() > MAX_CACHED {
            self.by_elem_type.clear();
        }
        if self.by_caller.len() > MAX_CACHED {
            self.by_caller.clear();
        }
        if self.called_by_mallocgc.len() > MAX_CACHED {
            self.called_by_mallocgc.clear();
        }
    }
}
