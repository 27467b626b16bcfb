//! The registry's contents as data: name, type, HELP and labels of every metric family.
//!
//! `Registry::gather` leaves out families that have no series yet (most of ours until a
//! workload is attached), and the registry has no other way to list what it holds. So
//! [`Registrar`] notes each family as `Metrics::new` registers it: the list is a by-product
//! of the registration itself, not a second copy that could drift from it. The
//! documentation test (docs/metrics.md) and `cargo xtask deploy-check` (dashboards and
//! alert rules) both check against [`families`].
use prometheus::{
    HistogramOpts, IntCounterVec, Opts, Registry, core::Collector, proto::MetricType,
};
use serde::Serialize;

use super::Metrics;

/// The Prometheus metric type (the `# TYPE` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    /// The word of the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// One registered metric family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Family {
    /// As scraped, `mapwatch_` included. A histogram's base name: its series are
    /// `<name>_bucket`, `<name>_sum` and `<name>_count`.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: MetricKind,
    pub help: String,
    /// In registration order; Prometheus adds its own target labels (`instance`, `job`, …).
    pub labels: Vec<String>,
}

/// Every metric family [`Metrics::new`] registers, in registration order.
pub fn families() -> Result<Vec<Family>, prometheus::Error> {
    Ok(Metrics::new()?.families)
}

/// Registers collectors and notes what each is. It owns the registry until
/// [`Registrar::finish`], so nothing can be registered past it while `Metrics::new` runs.
pub(super) struct Registrar {
    registry: Registry,
    prefix: String,
    families: Vec<Family>,
}

impl Registrar {
    /// A registry whose families are all named `<prefix>_<name>`.
    pub(super) fn new(prefix: &str) -> Result<Registrar, prometheus::Error> {
        Ok(Registrar {
            registry: Registry::new_custom(Some(prefix.into()), None)?,
            prefix: prefix.into(),
            families: Vec::new(),
        })
    }

    pub(super) fn register<C: Collector + Clone + 'static>(
        &mut self,
        collector: C,
    ) -> Result<C, prometheus::Error> {
        // The type is only in the collected family (the descriptor lacks it); a vec with
        // no series still collects one empty family that carries it.
        let collected = collector.collect();
        for desc in collector.desc() {
            let kind = collected
                .iter()
                .find(|family| family.name() == desc.fq_name)
                .map(|family| family.get_field_type());
            let kind = match kind {
                Some(MetricType::COUNTER) => MetricKind::Counter,
                Some(MetricType::GAUGE) => MetricKind::Gauge,
                Some(MetricType::HISTOGRAM) => MetricKind::Histogram,
                other => {
                    return Err(prometheus::Error::Msg(format!(
                        "{}: type {other:?} is not one mapwatch documents",
                        desc.fq_name
                    )));
                }
            };
            self.families.push(Family {
                name: format!("{}_{}", self.prefix, desc.fq_name),
                kind,
                help: desc.help.clone(),
                labels: desc.variable_labels.clone(),
            });
        }
        self.registry.register(Box::new(collector.clone()))?;
        Ok(collector)
    }

    pub(super) fn counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        self.register(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    pub(super) fn histogram(
        &mut self,
        name: &str,
        help: &str,
        buckets: Vec<f64>,
        labels: &[&str],
    ) -> Result<super::HistogramVec, prometheus::Error> {
        self.register(super::weighted::histogram_vec(
            HistogramOpts::new(name, help).buckets(buckets),
            labels,
        )?)
    }

    pub(super) fn finish(self) -> (Registry, Vec<Family>) {
        (self.registry, self.families)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_list_agrees_with_what_the_registry_gathers() {
        let metrics = Metrics::new().unwrap();
        let listed = &metrics.families;
        let names: BTreeSet<&str> = listed.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names.len(), listed.len(), "a family is listed twice");
        // Only families with series are gathered (attach_errors_total's reasons,
        // build_info, the unlabelled ones); each must be listed exactly as scraped.
        let gathered = metrics.registry.gather();
        assert!(gathered.len() >= 4, "{}", gathered.len());
        for family in &gathered {
            let entry = listed
                .iter()
                .find(|f| f.name == family.name())
                .unwrap_or_else(|| panic!("{} is registered but not listed", family.name()));
            assert_eq!(entry.help, family.help());
            assert_eq!(
                entry.kind.as_str(),
                format!("{:?}", family.get_field_type()).to_lowercase()
            );
            for metric in family.get_metric() {
                let labels: Vec<&str> = metric.get_label().iter().map(|l| l.name()).collect();
                let mut listed_labels: Vec<&str> =
                    entry.labels.iter().map(String::as_str).collect();
                listed_labels.sort_unstable();
                let mut labels = labels;
                labels.sort_unstable();
                assert_eq!(labels, listed_labels, "{}", entry.name);
            }
        }
    }

    #[test]
    fn families_carry_type_and_labels() {
        let families = families().unwrap();
        let find = |name: &str| families.iter().find(|f| f.name == name).unwrap();
        let grow = find("mapwatch_slice_grow_total");
        assert_eq!(grow.kind, MetricKind::Counter);
        assert_eq!(
            grow.labels,
            [
                "namespace",
                "pod",
                "container",
                "binary",
                "go_version",
                "elem_type"
            ]
        );
        assert_eq!(
            find("mapwatch_stw_pause_seconds").kind,
            MetricKind::Histogram
        );
        let orphaned = find("mapwatch_events_orphaned_total");
        assert!(orphaned.labels.is_empty());
        assert_eq!(find("mapwatch_attached_processes").kind, MetricKind::Gauge);
        assert!(families.iter().all(|f| !f.help.is_empty()));
        let json = serde_json::to_value(grow).unwrap();
        assert_eq!(json["type"], "counter");
        assert_eq!(json["name"], "mapwatch_slice_grow_total");
    }
}
