//! State per workload: all processes of one binary's labels share it, and it outlives
//! them. The node daemon sees workloads come and go: once the last process of a
//! workload is gone its series are removed after the series expiry. `attach` watches
//! one workload and keeps its series.
use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use foldhash::{HashMap, HashMapExt as _};
use prometheus::IntCounter;
use tracing::debug;

use super::{children::WorkloadChildren, runtime::GcCycle};
use crate::{
    metrics::{Metrics, WorkloadLabels},
    symbolize::{CallSite, LabelCap, OTHER},
};

/// Cardinality caps per workload (top-K + `other`, docs/metrics.md).
#[derive(Debug, Clone, Copy)]
pub struct LabelLimits {
    pub elem_types: usize,
    pub sites: usize,
}

impl Default for LabelLimits {
    fn default() -> LabelLimits {
        LabelLimits {
            elem_types: 20,
            sites: 50,
        }
    }
}

/// Every workload's state and which processes keep it alive.
pub(super) struct Workloads {
    /// Keyed by a number that slots carry, so that records find their workload without
    /// hashing label strings.
    states: HashMap<u64, WorkloadState>,
    keys: HashMap<WorkloadLabels, u64>,
    next_key: u64,
    limits: LabelLimits,
    pids: HashMap<WorkloadLabels, HashSet<u32>>,
    /// Workloads without processes, since when.
    gone_since: HashMap<WorkloadLabels, Instant>,
    series_expiry: Option<Duration>,
}

impl Workloads {
    pub fn new(limits: LabelLimits) -> Workloads {
        Workloads {
            states: HashMap::new(),
            keys: HashMap::new(),
            next_key: 0,
            limits,
            pids: HashMap::new(),
            gone_since: HashMap::new(),
            series_expiry: None,
        }
    }

    pub fn set_series_expiry(&mut self, expiry: Duration) {
        self.series_expiry = Some(expiry);
    }

    pub fn series_expiry(&self) -> Option<Duration> {
        self.series_expiry
    }

    /// `pid` runs the workload of `labels`; returns the key of its state, made on first
    /// use.
    pub fn add_process(&mut self, labels: &WorkloadLabels, pid: u32) -> u64 {
        self.gone_since.remove(labels);
        self.pids.entry(labels.clone()).or_default().insert(pid);
        if let Some(&key) = self.keys.get(labels) {
            return key;
        }
        let key = self.next_key;
        self.next_key += 1;
        self.keys.insert(labels.clone(), key);
        self.states
            .insert(key, WorkloadState::new(labels.clone(), self.limits));
        key
    }

    /// From `now`, a workload left without processes counts towards its expiry.
    pub fn remove_process(&mut self, pid: u32, now: Instant) {
        for (labels, pids) in &mut self.pids {
            if pids.remove(&pid) && pids.is_empty() {
                self.gone_since.insert(labels.clone(), now);
            }
        }
    }

    /// Forgets the workloads gone for longer than the series expiry, and their series.
    pub fn expire(&mut self, now: Instant, metrics: &Metrics) {
        let Some(expiry) = self.series_expiry else {
            return;
        };
        let expired: Vec<WorkloadLabels> = self
            .gone_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= expiry)
            .map(|(labels, _)| labels.clone())
            .collect();
        for labels in expired {
            debug!(?labels, "workload gone: its series expire");
            metrics.forget_workload(&labels);
            self.gone_since.remove(&labels);
            self.pids.remove(&labels);
            if let Some(key) = self.keys.remove(&labels) {
                self.states.remove(&key);
            }
        }
    }

    pub fn get(&self, key: u64) -> Option<&WorkloadState> {
        self.states.get(&key)
    }

    pub fn get_mut(&mut self, key: u64) -> Option<&mut WorkloadState> {
        self.states.get_mut(&key)
    }
}

/// The caps on the labels a workload produces (top-K + `other`, docs/metrics.md).
pub(super) struct Names {
    pub elem_types: LabelCap,
    pub sites: LabelCap,
}

/// Everything the aggregator keeps per workload.
pub(super) struct WorkloadState {
    pub labels: WorkloadLabels,
    pub names: Names,
    pub cycle: GcCycle,
    pub children: WorkloadChildren,
}

impl WorkloadState {
    fn new(labels: WorkloadLabels, limits: LabelLimits) -> WorkloadState {
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
    pub fn site_grow_for(&mut self, metrics: &Metrics, site: &CallSite) -> IntCounter {
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
