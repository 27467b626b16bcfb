//! The Prometheus registry: every metric of the contract in ../shared/DESIGN.md,
//! registered in one place with HELP text that names the unit. Labels identify the
//! workload (namespace, pod, container, binary, go_version) — never a pid or address.
pub mod http;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

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
    pub slice_grow_bytes_total: IntCounterVec,
    pub slice_grow_new_cap: HistogramVec,
    pub probe_hits_total: IntCounterVec,
    pub events_lost_total: IntCounterVec,
    pub events_received_total: IntCounterVec,
    pub events_incomplete_total: IntCounterVec,
    pub exact_checks_total: IntCounterVec,
    pub attached_processes: IntGauge,
    pub attach_errors_total: IntCounterVec,
    pub build_info: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("mapwatch".into()), None)?;
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let slice_grow_total = counter(
            "slice_grow_total",
            "Heap growths of slices: calls of runtime.growslice (an append past capacity).",
            &WORKLOAD_LABELS,
        )?;
        let slice_grow_bytes_total = counter(
            "slice_grow_bytes_total",
            "Bytes of new backing arrays allocated by slice growth (new capacity x element size).",
            &WORKLOAD_LABELS,
        )?;
        let slice_grow_new_cap = HistogramVec::new(
            HistogramOpts::new(
                "slice_grow_new_cap",
                "New capacity in elements of each grown slice, derived from growslice's arguments with the Go version's growth rule.",
            )
            .buckets(prometheus::exponential_buckets(1.0, 4.0, 13)?),
            &WORKLOAD_LABELS,
        )?;
        registry.register(Box::new(slice_grow_new_cap.clone()))?;
        let probe_hits_total = counter(
            "probe_hits_total",
            "Times a uprobe fired, counted in the kernel per probe.",
            &["probe"],
        )?;
        let events_lost_total = counter(
            "events_lost_total",
            "Records the kernel could not write because the ring buffer was full, per probe.",
            &["probe"],
        )?;
        let events_received_total = counter(
            "events_received_total",
            "Records read from the ring buffer and applied by the aggregator, per probe. \
             Drained when probe_hits_total == events_received_total + events_lost_total.",
            &["probe"],
        )?;
        let events_incomplete_total = counter(
            "events_incomplete_total",
            "Records whose struct reads failed in the kernel (counted, but without sizes).",
            &["probe"],
        )?;
        let exact_checks_total = counter(
            "exact_checks_total",
            "Exact mode only: values derived from entry arguments compared with the values \
             read at RET instructions (result = match, mismatch, unpaired).",
            &["check", "result"],
        )?;
        let attach_errors_total = counter(
            "attach_errors_total",
            "Processes or probes that could not be attached, by reason.",
            &["reason"],
        )?;
        let attached_processes =
            IntGauge::new("attached_processes", "Processes with probes attached.")?;
        registry.register(Box::new(attached_processes.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "build_info",
                "Always 1; labels say which mapwatch build runs.",
            ),
            &["version", "commit"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("MAPWATCH_COMMIT").unwrap_or("unknown"),
            ])
            .set(1);
        Ok(Metrics {
            registry,
            slice_grow_total,
            slice_grow_bytes_total,
            slice_grow_new_cap,
            probe_hits_total,
            events_lost_total,
            events_received_total,
            events_incomplete_total,
            exact_checks_total,
            attached_processes,
            attach_errors_total,
            build_info,
        })
    }

    /// Brings a kernel-side running total into a counter (counters only move forward).
    pub fn sync_counter(counter: &IntCounterVec, labels: &[&str], total: u64) {
        let metric = counter.with_label_values(labels);
        let current = metric.get();
        if total > current {
            metric.inc_by(total - current);
        }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}
