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
    Histogram, IntCounter,
    core::{MetricVec, MetricVecBuilder},
};

use crate::{
    metrics::{Metrics, WorkloadLabels},
    symbolize::{LabelCap, OTHER},
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

/// The caps on the labels a workload produces (DESIGN.md: top-K + `other`).
pub struct Names {
    pub elem_types: LabelCap,
    pub sites: LabelCap,
}

/// What happened in a workload since its last GC cycle, and the recent cycles.
#[derive(Default)]
pub struct GcCycle {
    pub growth_bytes: u64,
    pub stw_ns: u64,
    /// (growth bytes, STW seconds) of the last cycles, oldest first.
    pub history: std::collections::VecDeque<(f64, f64)>,
}

/// Everything the aggregator keeps per workload (all processes of one binary's labels).
pub struct WorkloadState {
    pub labels: WorkloadLabels,
    pub names: Names,
    pub cycle: GcCycle,
    pub children: WorkloadChildren,
}

impl WorkloadState {
    pub fn new(labels: WorkloadLabels, limits: super::LabelLimits) -> WorkloadState {
        WorkloadState {
            labels,
            names: Names {
                elem_types: LabelCap::new(limits.elem_types),
                sites: LabelCap::new(limits.sites),
            },
            cycle: GcCycle::default(),
            children: WorkloadChildren::default(),
        }
    }

    pub fn map_grow_total(&mut self, metrics: &Metrics, kind: &'static str) -> &IntCounter {
        let labels = &self.labels;
        self.children.map_grow_total.entry(kind).or_insert_with(|| {
            let [namespace, pod, container, binary, go_version] = labels.values();
            metrics
                .map_grow_total
                .with_label_values(&[namespace, pod, container, binary, go_version, kind])
        })
    }

    /// `slice_grow_total` for an element type name, through the cap.
    pub fn slice_grow_for_type(&mut self, metrics: &Metrics, type_name: &str) -> IntCounter {
        let elem_type = self.names.elem_types.admit(type_name);
        let [namespace, pod, container, binary, go_version] = self.labels.values();
        metrics
            .slice_grow_total
            .with_label_values(&[namespace, pod, container, binary, go_version, elem_type])
    }

    /// `site_grow_total` for a source line, through the cap.
    pub fn site_grow_for(
        &mut self,
        metrics: &Metrics,
        site: &crate::symbolize::CallSite,
    ) -> IntCounter {
        let key = format!("{}\u{0}{}\u{0}{}", site.function, site.file, site.line);
        let line = site.line.to_string();
        let (function, file, line) = if self.names.sites.admit(&key) == OTHER {
            (OTHER, OTHER, "0")
        } else {
            (site.function.as_str(), site.file.as_str(), line.as_str())
        };
        let [namespace, pod, container, binary, go_version] = self.labels.values();
        metrics.site_grow_total.with_label_values(&[
            namespace, pod, container, binary, go_version, function, file, line,
        ])
    }
}

/// Where a growslice caller PC counts.
#[derive(Clone)]
pub enum SiteChild {
    /// A line of the program (or `other`).
    Line(IntCounter),
    /// Inside growsliceBuf (Go 1.26+): the append site is growsliceBuf's caller. Its own
    /// line counts only when that caller is not known (its series is made then, not
    /// before: an idle series would name a runtime line as a place to fix).
    ViaGrowsliceBuf(crate::symbolize::CallSite),
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
