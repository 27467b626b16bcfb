//! The Prometheus registry: every metric mapwatch exports, registered in one place with
//! HELP text that names the unit (docs/metrics.md describes each one). Labels identify
//! the workload (namespace, pod, container, binary, go_version) — never a pid or
//! address, so series stay few and outlive process restarts.
mod families;
pub mod http;
mod labels;
mod series_budget;
pub mod weighted;

pub use families::{Family, MetricKind, families};
pub use labels::{AttachErrorReason, KubernetesApiErrorKind};
pub use series_budget::{AGGREGATE, SeriesBudget, Tier};

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::Instant,
};

use families::Registrar;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
pub use weighted::{Histogram, HistogramVec};

/// Labels of every per-workload metric. `namespace`, `pod` and `container` are empty
/// outside Kubernetes.
pub const WORKLOAD_LABELS: [&str; 5] = ["namespace", "pod", "container", "binary", "go_version"];

/// Values of [`WORKLOAD_LABELS`] for one workload.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct WorkloadLabels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub binary: String,
    pub go_version: String,
}

impl WorkloadLabels {
    pub fn values(&self) -> [&str; 5] {
        [
            &self.namespace,
            &self.pod,
            &self.container,
            &self.binary,
            &self.go_version,
        ]
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub slice_grow_total: IntCounterVec,
    pub site_grow_total: IntCounterVec,
    pub slice_grow_bytes_total: IntCounterVec,
    pub slice_grow_new_cap: HistogramVec,
    pub map_grow_total: IntCounterVec,
    pub map_size_at_grow: HistogramVec,
    pub map_buckets_log2: HistogramVec,
    pub map_directory_len: HistogramVec,
    pub map_load_factor_at_grow: HistogramVec,
    pub map_overflow_buckets_at_grow: HistogramVec,
    pub map_make_hint: HistogramVec,
    pub map_assign_bucket_position: HistogramVec,
    pub map_probe_length: HistogramVec,
    pub malloc_total: IntCounterVec,
    pub malloc_bytes_total: IntCounterVec,
    pub gc_cycles_total: IntCounterVec,
    pub stw_pause_seconds: HistogramVec,
    pub growth_bytes_per_gc_cycle: HistogramVec,
    pub stw_growth_correlation: prometheus::GaugeVec,
    pub probe_hits_total: IntCounterVec,
    pub events_lost_total: IntCounterVec,
    pub events_received_total: IntCounterVec,
    pub events_incomplete_total: IntCounterVec,
    pub events_orphaned_total: IntCounter,
    pub http_connections_evicted_total: IntCounter,
    pub http_accept_fd_exhausted_total: IntCounter,
    pub exact_checks_total: IntCounterVec,
    pub attached_processes: IntGauge,
    pub attach_errors_total: IntCounterVec,
    pub kubernetes_api_errors_total: IntCounterVec,
    pub probe_duty_cycle_ratio: prometheus::GaugeVec,
    pub probe_observed_work_ratio: prometheus::GaugeVec,
    pub estimated_overhead_ratio: prometheus::GaugeVec,
    pub build_info: IntGaugeVec,
    pub series_exported: IntGauge,
    pub series_budget_max: IntGauge,
    pub series_budget_workloads: IntGaugeVec,
    series_budget: Mutex<SeriesBudget>,
    families: Vec<Family>,
}

/// Appended to the HELP of every metric whose counts a duty-cycled probe scales: how a
/// scrape (and docs/metrics.md's test) tells estimated families from exact ones.
pub const ESTIMATED_HELP: &str = " Estimated (scaled by 1/observed share of the work) while the \
                          overhead budget duty-cycles the probe: see \
                          mapwatch_probe_duty_cycle_ratio.";

/// `help` + [`ESTIMATED_HELP`].
fn estimated(help: &str) -> String {
    format!("{help}{ESTIMATED_HELP}")
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let mut r = Registrar::new("mapwatch")?;
        let mut elem_labels = WORKLOAD_LABELS.to_vec();
        elem_labels.push("elem_type");
        let slice_grow_total = r.counter(
            "slice_grow_total",
            &estimated(
                "Heap growths of slices: calls of runtime.growslice (an append past capacity), by \
             element type (the first 20 types of a workload; later ones as `other`).",
            ),
            &elem_labels,
        )?;
        let mut site_labels = WORKLOAD_LABELS.to_vec();
        site_labels.extend(["function", "file", "line"]);
        let site_grow_total = r.counter(
            "site_grow_total",
            &estimated(
                "Slice growths per append call site (the caller of runtime.growslice; the first 50 \
             sites of a workload, later ones as `other`).",
            ),
            &site_labels,
        )?;
        let slice_grow_bytes_total = r.counter(
            "slice_grow_bytes_total",
            &estimated(
                "Bytes of new backing arrays allocated by slice growth (new capacity x element size).",
            ),
            &WORKLOAD_LABELS,
        )?;
        let slice_grow_new_cap = r.histogram(
            "slice_grow_new_cap",
            &estimated(
                "New capacity in elements of each grown slice, derived from growslice's arguments with the Go version's growth rule.",
            ),
            prometheus::exponential_buckets(1.0, 4.0, 13)?,
            &WORKLOAD_LABELS,
        )?;
        let mut grow_labels = WORKLOAD_LABELS.to_vec();
        grow_labels.push("kind");
        let map_grow_total = r.counter(
            "map_grow_total",
            &estimated(
                "Map growth events. kind: double / same_size (classic maps: runtime.hashGrow), \
             to_small / to_table / table_grow / table_split (Swiss maps).",
            ),
            &grow_labels,
        )?;
        let map_size_at_grow = r.histogram(
            "map_size_at_grow",
            &estimated("Entries in the map when it grew."),
            prometheus::exponential_buckets(1.0, 4.0, 12)?,
            &WORKLOAD_LABELS,
        )?;
        let map_buckets_log2 = r.histogram(
            "map_buckets_log2",
            &estimated(
                "The map's size after growth as log2 of its 8-slot buckets/groups: B for classic \
             maps; for Swiss maps log2(slots over all its tables / 8), the tables totalled by \
             the kernel at the growth (a small map is 0, a first table 1).",
            ),
            prometheus::linear_buckets(0.0, 1.0, 25)?,
            &WORKLOAD_LABELS,
        )?;
        let map_directory_len = r.histogram(
            "map_directory_len",
            &estimated("Swiss maps: directory length after a table split."),
            prometheus::exponential_buckets(1.0, 2.0, 16)?,
            &WORKLOAD_LABELS,
        )?;
        let map_load_factor_at_grow = r.histogram(
            "map_load_factor_at_grow",
            &estimated(
                "Fraction of slots in use when the map (classic: count / (8 * 2^B)) or table \
             (Swiss: used / capacity) grew.",
            ),
            vec![0.25, 0.5, 0.625, 0.75, 0.8125, 0.875, 0.9375, 1.0],
            &WORKLOAD_LABELS,
        )?;
        let map_overflow_buckets_at_grow = r.histogram(
            "map_overflow_buckets_at_grow",
            &estimated(
                "Classic maps: overflow buckets (hmap.noverflow, approximate above 2^16 buckets) at growth.",
            ),
            prometheus::exponential_buckets(1.0, 4.0, 10)?,
            &WORKLOAD_LABELS,
        )?;
        let mut hint_buckets = vec![0.0];
        hint_buckets.extend(prometheus::exponential_buckets(1.0, 4.0, 12)?);
        let map_make_hint = r.histogram(
            "map_make_hint",
            &estimated("Size hint given to make(map) (0 = none: runtime.makemap_small)."),
            hint_buckets,
            &WORKLOAD_LABELS,
        )?;
        let map_assign_bucket_position = r.histogram(
            "map_assign_bucket_position",
            &estimated(
                "Opt-in (--hot-probes mapassign_fast64; int64-keyed maps only): where each \
             assigned slot lies in its table, 0..1. Classic maps: home bucket index / 2^B \
             (a slot in an overflow bucket counts at its home bucket); Swiss maps: the slot's \
             group index / groups of its table (a small map's single group is 0).",
            ),
            prometheus::linear_buckets(1.0 / 16.0, 1.0 / 16.0, 16)?,
            &WORKLOAD_LABELS,
        )?;
        let map_probe_length = r.histogram(
            "map_probe_length",
            &estimated(
                "Opt-in (--hot-probes mapassign_fast64): buckets or groups visited to reach each \
             assigned slot, 1 = its home bucket or first group. Classic: 1 + overflow buckets \
             from the home bucket to the slot's (the chain length for insert-only maps). \
             Swiss: the place of the slot's group in the table's probe sequence; after deletes \
             the runtime may have probed further before reusing an earlier deleted slot.",
            ),
            vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0, 128.0],
            &WORKLOAD_LABELS,
        )?;
        let malloc_total = r.counter(
            "malloc_total",
            &estimated(
                "Opt-in (--hot-probes mallocgc): heap allocations, calls of runtime.mallocgc plus, \
             on Go 1.27, direct calls of its size-specialised mallocgc*SC* variants.",
            ),
            &WORKLOAD_LABELS,
        )?;
        let malloc_bytes_total = r.counter(
            "malloc_bytes_total",
            &estimated(
                "Opt-in (--hot-probes mallocgc): bytes requested from the heap allocator (the size \
             argument, before rounding up to a size class).",
            ),
            &WORKLOAD_LABELS,
        )?;
        let gc_cycles_total = r.counter(
            "gc_cycles_total",
            &estimated("GC cycles, counted at mark termination (runtime.gcMarkTermination)."),
            &WORKLOAD_LABELS,
        )?;
        let mut reason_labels = WORKLOAD_LABELS.to_vec();
        reason_labels.push("reason");
        let stw_pause_seconds = r.histogram(
            "stw_pause_seconds",
            &estimated(
                "Stop-the-world pauses: from when stopping began to when the world restarted \
                 (the runtime's own clock), by reason (src/runtime/proc.go stwReasonStrings).",
            ),
            prometheus::exponential_buckets(1e-5, 2.0, 16)?,
            &reason_labels,
        )?;
        let growth_bytes_per_gc_cycle = r.histogram(
            "growth_bytes_per_gc_cycle",
            "Bytes of new slice backing arrays allocated by growth between two GC mark terminations.",
            prometheus::exponential_buckets(1024.0, 4.0, 12)?,
            &WORKLOAD_LABELS,
        )?;
        let stw_growth_correlation = r.register(prometheus::GaugeVec::new(
            Opts::new(
                "stw_growth_correlation",
                "Pearson correlation, over the last 16 GC cycles, of each cycle's growth bytes \
                 with its total stop-the-world time (NaN-free: 0 until 3 cycles or no variance).",
            ),
            &WORKLOAD_LABELS,
        )?)?;
        let probe_hits_total = r.counter(
            "probe_hits_total",
            "Times a uprobe fired, counted in the kernel per probe.",
            &["probe"],
        )?;
        let events_lost_total = r.counter(
            "events_lost_total",
            "Records the kernel could not write because the ring buffer was full, per probe.",
            &["probe"],
        )?;
        let events_received_total = r.counter(
            "events_received_total",
            "Records read from the ring buffer and applied by the aggregator, per probe. \
             Drained when probe_hits_total == events_received_total + events_lost_total.",
            &["probe"],
        )?;
        let events_orphaned_total = r.register(IntCounter::new(
            "events_orphaned_total",
            "Records read after their probe was detached (the process exited or exec'd in \
             the meantime): not attributed to any workload.",
        )?)?;
        let http_connections_evicted_total = r.register(IntCounter::new(
            "http_connections_evicted_total",
            "HTTP connections closed to make room for a newer one (at most 64 are kept \
             open): a client that holds connections idle.",
        )?)?;
        let http_accept_fd_exhausted_total = r.register(IntCounter::new(
            "http_accept_fd_exhausted_total",
            "HTTP connections not accepted because mapwatch or the system ran out of file \
             descriptors.",
        )?)?;
        let events_incomplete_total = r.counter(
            "events_incomplete_total",
            "Records whose struct reads failed in the kernel (counted, but without sizes).",
            &["probe"],
        )?;
        let exact_checks_total = r.counter(
            "exact_checks_total",
            "Exact mode only: values derived from entry arguments compared with the values \
             read at RET instructions (result = match, mismatch, unpaired).",
            &["check", "result"],
        )?;
        let attach_errors_total = r.counter(
            "attach_errors_total",
            "Processes or probes that could not be attached, by reason.",
            &["reason"],
        )?;
        for reason in AttachErrorReason::ALL {
            attach_errors_total.with_label_values(&[reason.label()]);
        }
        let kubernetes_api_errors_total = r.counter(
            "kubernetes_api_errors_total",
            "Failed requests to the Kubernetes API (pod names), by kind; while it fails, \
             new processes are profiled without namespace, pod and container labels.",
            &["kind"],
        )?;
        for kind in KubernetesApiErrorKind::ALL {
            kubernetes_api_errors_total.with_label_values(&[kind.label()]);
        }
        let mut duty_labels = WORKLOAD_LABELS.to_vec();
        duty_labels.push("probe");
        let probe_duty_cycle_ratio = r.register(prometheus::GaugeVec::new(
            Opts::new(
                "probe_duty_cycle_ratio",
                "Fraction of the time a probe group (growslice, map_growth, stw, gc, …) was \
                 attached in its last cycle: 1 = always on; below 1 the overhead budget \
                 duty-cycles it and its counts are estimates (see \
                 mapwatch_probe_observed_work_ratio). Mean over the workload's processes.",
            ),
            &duty_labels,
        )?)?;
        let probe_observed_work_ratio = r.register(prometheus::GaugeVec::new(
            Opts::new(
                "probe_observed_work_ratio",
                "Share of its process's work (CPU time not spent in probes) a probe group                  was attached for in its last cycle: 1 = always on; a duty-cycled group's                  counts are its records scaled by 1 / this share. Mean over the                  workload's processes.",
            ),
            &duty_labels,
        )?)?;
        let estimated_overhead_ratio = r.register(prometheus::GaugeVec::new(
            Opts::new(
                "estimated_overhead_ratio",
                "Estimated CPU the probes cost the workload's processes, as a share of one \
                 core (0.01 = 1%), over the last ~60 s: kernel hit counts x the per-hit cost \
                 calibrated at start-up. Summed over the workload's processes; the overhead \
                 budget holds each process to --overhead-budget of a core and \
                 --overhead-share of its own CPU use.",
            ),
            &WORKLOAD_LABELS,
        )?)?;
        let attached_processes = r.register(IntGauge::new(
            "attached_processes",
            "Processes with probes attached.",
        )?)?;
        let build_info = r.register(IntGaugeVec::new(
            Opts::new(
                "build_info",
                "Always 1; labels say which mapwatch build runs.",
            ),
            &["version", "commit"],
        )?)?;
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("MAPWATCH_COMMIT").unwrap_or("unknown"),
            ])
            .set(1);
        let series_exported = r.register(IntGauge::new(
            "series_exported",
            "Series in the last /metrics answer (a histogram counts its buckets, +Inf, \
             _sum and _count), after the series budget.",
        )?)?;
        let series_budget_max = r.register(IntGauge::new(
            "series_budget",
            "The node-wide series budget (--series-budget); 0: none.",
        )?)?;
        let series_budget_workloads = r.register(IntGaugeVec::new(
            Opts::new(
                "series_budget_workloads",
                "Workloads by how much of their detail the series budget exports: tier = \
                 detail, folded (sites and element types as other), aggregated (counted \
                 under the workload labels other).",
            ),
            &["tier"],
        )?)?;
        for tier in Tier::ALL {
            series_budget_workloads.with_label_values(&[tier.label()]);
        }
        let (registry, families) = r.finish();
        Ok(Metrics {
            registry,
            slice_grow_total,
            site_grow_total,
            slice_grow_bytes_total,
            slice_grow_new_cap,
            map_grow_total,
            map_size_at_grow,
            map_buckets_log2,
            map_directory_len,
            map_load_factor_at_grow,
            map_overflow_buckets_at_grow,
            map_make_hint,
            map_assign_bucket_position,
            map_probe_length,
            malloc_total,
            malloc_bytes_total,
            gc_cycles_total,
            stw_pause_seconds,
            growth_bytes_per_gc_cycle,
            stw_growth_correlation,
            probe_hits_total,
            events_lost_total,
            events_received_total,
            events_incomplete_total,
            events_orphaned_total,
            http_connections_evicted_total,
            http_accept_fd_exhausted_total,
            exact_checks_total,
            attached_processes,
            attach_errors_total,
            kubernetes_api_errors_total,
            probe_duty_cycle_ratio,
            probe_observed_work_ratio,
            estimated_overhead_ratio,
            build_info,
            series_exported,
            series_budget_max,
            series_budget_workloads,
            series_budget: Mutex::new(SeriesBudget::new(None)),
            families,
        })
    }

    /// Counts one process or probe that was not attached.
    pub fn count_attach_error(&self, reason: AttachErrorReason) {
        self.attach_errors_total
            .with_label_values(&[reason.label()])
            .inc();
    }

    /// Brings a kernel-side running total into a counter (counters only move forward).
    pub fn sync_counter(counter: &IntCounterVec, labels: &[&str], total: u64) {
        let metric = counter.with_label_values(labels);
        let current = metric.get();
        if total > current {
            metric.inc_by(total - current);
        }
    }

    /// Removes every series of `workload` (its last process is gone): series of
    /// workloads that are gone expire instead of accumulating on a long-running node.
    pub fn forget_workload(&self, workload: &WorkloadLabels) {
        let values = workload.values();
        // Held until the series are gone: a scrape meanwhile would see them without
        // their workload's tier.
        let mut budget = self.budget_state();
        let gathered = if budget.holds_in_aggregate(&values) {
            self.registry.gather()
        } else {
            Vec::new()
        };
        budget.retire(&values, gathered);
        let is_workload = |labels: &HashMap<&str, &str>| {
            WORKLOAD_LABELS
                .iter()
                .zip(values)
                .all(|(name, value)| labels.get(name) == Some(&value))
        };
        forget_series(&self.slice_grow_total, &is_workload);
        forget_series(&self.site_grow_total, &is_workload);
        forget_series(&self.slice_grow_bytes_total, &is_workload);
        forget_series(&self.slice_grow_new_cap, &is_workload);
        forget_series(&self.map_grow_total, &is_workload);
        forget_series(&self.map_size_at_grow, &is_workload);
        forget_series(&self.map_buckets_log2, &is_workload);
        forget_series(&self.map_directory_len, &is_workload);
        forget_series(&self.map_load_factor_at_grow, &is_workload);
        forget_series(&self.map_overflow_buckets_at_grow, &is_workload);
        forget_series(&self.map_make_hint, &is_workload);
        forget_series(&self.map_assign_bucket_position, &is_workload);
        forget_series(&self.map_probe_length, &is_workload);
        forget_series(&self.malloc_total, &is_workload);
        forget_series(&self.malloc_bytes_total, &is_workload);
        forget_series(&self.gc_cycles_total, &is_workload);
        forget_series(&self.stw_pause_seconds, &is_workload);
        forget_series(&self.growth_bytes_per_gc_cycle, &is_workload);
        forget_series(&self.stw_growth_correlation, &is_workload);
        forget_series(&self.probe_duty_cycle_ratio, &is_workload);
        forget_series(&self.probe_observed_work_ratio, &is_workload);
        forget_series(&self.estimated_overhead_ratio, &is_workload);
    }

    /// Keeps /metrics within `budget` series from now on (`mapwatch run`).
    pub fn set_series_budget(&self, budget: usize) {
        *self.budget_state() = SeriesBudget::new(Some(budget));
        self.series_budget_max.set(budget as i64);
    }

    fn budget_state(&self) -> std::sync::MutexGuard<'_, SeriesBudget> {
        self.series_budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The registry in Prometheus text format, within the series budget.
    pub fn render(&self) -> String {
        let mut budget = self.budget_state();
        let (mut families, stats) = budget.apply(self.registry.gather(), Instant::now());
        drop(budget);
        self.series_exported.set(stats.series as i64);
        for (tier, n) in Tier::ALL.iter().zip(stats.workloads) {
            self.series_budget_workloads
                .with_label_values(&[tier.label()])
                .set(n as i64);
        }
        // The gathered copies predate these values.
        use prometheus::core::Collector as _;
        let fresh = [
            self.series_exported.collect(),
            self.series_budget_workloads.collect(),
        ];
        for mut family in fresh.into_iter().flatten() {
            // Collected without the registry's `mapwatch_` prefix.
            let name = format!("mapwatch_{}", family.name());
            if let Some(stale) = families.iter_mut().find(|f| f.name() == name) {
                stale.set_metric(family.take_metric());
            }
        }
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

/// Removes the series of `vec` whose labels `matches` accepts.
fn forget_series<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    matches: &dyn Fn(&HashMap<&str, &str>) -> bool,
) {
    use prometheus::core::Collector as _;
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            if matches(&labels) {
                let _ = vec.remove(&labels);
            }
        }
    }
}
