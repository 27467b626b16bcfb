//! The node-wide series budget: at most N series in a /metrics answer, whatever the
//! number of workloads (docs/metrics.md, "Series budget").
//!
//! Applied to the registry's contents at each scrape, not where records are counted:
//! the aggregator keeps counting every workload in full (up to the per-workload label
//! caps), and this module decides how much of it is *exported*. The least active
//! workloads first lose their site and element-type detail (folded into `other`),
//! then whole workloads fold into one aggregate workload whose labels are all
//! [`AGGREGATE`]; the most active keep their detail ([`tiers::plan`]).
//!
//! Counts are never lost and no exported counter goes down:
//! - Folding a series moves its count into the coarser series (`other`, or the
//!   aggregate), which steps up by that much; the fine series stops (Prometheus marks
//!   it stale), so at any scrape the sum over a counter's series is the unfolded total.
//! - A workload that gets busier climbs back: the coarse series keeps what it had
//!   (`carries`), and the fine series restarts from 0 — counting from a baseline, the
//!   value its source had then (`baselines`) — which Prometheus reads as a counter
//!   reset, i.e. correctly.
//! - When an aggregated workload's series expire, its counts stay in the aggregate.
mod tiers;
mod values;

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher as _, Hash},
    time::Instant,
};

use prometheus::proto::{self, MetricFamily, MetricType};

pub use tiers::Tier;
use tiers::{Candidate, plan};
use values::Value;

use super::WORKLOAD_LABELS;

/// The value of every workload label of the aggregate workload.
pub const AGGREGATE: &str = "other";

/// The counters whose increase is a workload's growth activity.
const ACTIVITY_FAMILIES: [&str; 2] = ["mapwatch_slice_grow_total", "mapwatch_map_grow_total"];

/// Activity decays by 1/e over this many seconds: "recent" is the last minute or so.
const ACTIVITY_SECONDS: f64 = 60.0;

type Labels = Vec<(String, String)>;
type Workload = [String; 5];

/// A series: its family's name and its labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    family: String,
    labels: Labels,
}

/// A per-workload series of the registry.
struct Source {
    key: Key,
    value: Value,
}

/// What one scrape exported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lines of samples in the answer (a histogram: buckets + 3).
    pub series: usize,
    /// Workloads per tier, in [`Tier::ALL`]'s order.
    pub workloads: [usize; 3],
}

#[derive(Default)]
struct Activity {
    total: f64,
    recent: f64,
}

/// The budget's state across scrapes.
#[derive(Default)]
pub struct SeriesBudget {
    budget: Option<usize>,
    tiers: HashMap<Workload, Tier>,
    activity: HashMap<Workload, Activity>,
    last: Option<Instant>,
    /// Sources that climbed a tier count from these values on.
    baselines: HashMap<Key, Value>,
    /// Counts of exported series whose sources now count elsewhere.
    carries: HashMap<Key, Value>,
    /// HELP and type of each family seen: a carried series may outlive its sources.
    meta: HashMap<String, (String, MetricType)>,
}

impl SeriesBudget {
    /// None: every series is exported (`mapwatch attach`).
    pub fn new(budget: Option<usize>) -> SeriesBudget {
        SeriesBudget {
            budget,
            ..SeriesBudget::default()
        }
    }

    pub fn budget(&self) -> Option<usize> {
        self.budget
    }

    /// The registry's families (`Registry::gather`) as they are to be exported at `now`.
    pub fn apply(
        &mut self,
        families: Vec<MetricFamily>,
        now: Instant,
    ) -> (Vec<MetricFamily>, Stats) {
        let (mut out, sources) = self.split(families);
        let mut by_workload: HashMap<Workload, Vec<Source>> = HashMap::new();
        for source in sources {
            if let Some(w) = workload_of(&source.key.labels) {
                by_workload.entry(w).or_default().push(source);
            }
        }
        self.update_activity(&by_workload, now);
        let fixed: usize = out.iter().map(family_series).sum();
        self.replan(&by_workload, fixed);

        let mut exported: HashMap<Key, Value> = HashMap::new();
        for (w, sources) in &by_workload {
            let tier = self.tier(w);
            for s in sources {
                if let Some(id) = identity(tier, &s.key, s.value.is_gauge()) {
                    add(&mut exported, id, &self.contribution(s));
                }
            }
        }
        for (key, value) in &self.carries {
            let id = match workload_of(&key.labels).and_then(|w| self.tiers.get(&w)) {
                Some(&tier) => identity(tier, key, false),
                None => Some(key.clone()),
            };
            if let Some(id) = id {
                add(&mut exported, id, value);
            }
        }
        out.extend(self.families(exported));
        out.sort_by(|a, b| a.name().cmp(b.name()));
        let mut stats = Stats {
            series: out.iter().map(family_series).sum(),
            ..Stats::default()
        };
        for w in by_workload.keys() {
            let tier = self.tier(w);
            stats.workloads[Tier::ALL.iter().position(|&t| t == tier).unwrap_or(0)] += 1;
        }
        (out, stats)
    }

    /// Whether [`SeriesBudget::retire`] needs the registry's values for `workload`.
    pub fn holds_in_aggregate(&self, workload: &[&str; 5]) -> bool {
        self.tiers.get(&workload.map(str::to_string)) == Some(&Tier::Aggregated)
    }

    /// The workload of `labels` is about to be removed from the registry (its series
    /// expire): the counts it has in the aggregate stay there; the rest goes with it.
    pub fn retire(&mut self, workload: &[&str; 5], families: Vec<MetricFamily>) {
        let w: Workload = workload.map(str::to_string);
        if self.tiers.get(&w) == Some(&Tier::Aggregated) {
            let (_, sources) = self.split(families);
            for s in sources {
                if s.value.is_gauge() || workload_of(&s.key.labels).as_ref() != Some(&w) {
                    continue;
                }
                let value = self.contribution(&s);
                if let Some(id) = identity(Tier::Aggregated, &s.key, false) {
                    add(&mut self.carries, id, &value);
                }
            }
        }
        let owned = |key: &Key| workload_of(&key.labels).as_ref() == Some(&w);
        self.carries.retain(|key, _| !owned(key));
        self.baselines.retain(|key, _| !owned(key));
        self.tiers.remove(&w);
        self.activity.remove(&w);
    }

    /// Families without workload labels, as they are; and every per-workload series.
    fn split(&mut self, families: Vec<MetricFamily>) -> (Vec<MetricFamily>, Vec<Source>) {
        let mut passed = Vec::new();
        let mut sources = Vec::new();
        for mut family in families {
            let kind = family.get_field_type();
            let name = family.name().to_string();
            self.meta
                .entry(name.clone())
                .or_insert_with(|| (family.help().to_string(), kind));
            let per_workload = family
                .get_metric()
                .first()
                .is_some_and(|m| workload_of(&labels_of(m)).is_some());
            if !per_workload {
                passed.push(family);
                continue;
            }
            for metric in family.take_metric() {
                if let Some(value) = Value::of(kind, &metric) {
                    let key = Key {
                        family: name.clone(),
                        labels: labels_of(&metric),
                    };
                    sources.push(Source { key, value });
                }
            }
        }
        (passed, sources)
    }

    fn tier(&self, w: &Workload) -> Tier {
        self.tiers.get(w).copied().unwrap_or(Tier::Detail)
    }

    /// What a source adds to its exported series: its value since its baseline.
    fn contribution(&self, s: &Source) -> Value {
        match self.baselines.get(&s.key) {
            Some(base) => s.value.minus(base),
            None => s.value.clone(),
        }
    }

    fn update_activity(&mut self, by_workload: &HashMap<Workload, Vec<Source>>, now: Instant) {
        let decay = self.last.map_or(1.0, |last| {
            (-now.duration_since(last).as_secs_f64() / ACTIVITY_SECONDS).exp()
        });
        self.last = Some(now);
        self.activity.retain(|w, _| by_workload.contains_key(w));
        for (w, sources) in by_workload {
            let total: f64 = sources
                .iter()
                .filter(|s| ACTIVITY_FAMILIES.contains(&s.key.family.as_str()))
                .map(|s| match s.value {
                    Value::Counter(v) => v,
                    _ => 0.0,
                })
                .sum();
            let a = self.activity.entry(w.clone()).or_default();
            a.recent = a.recent * decay + (total - a.total).max(0.0);
            a.total = total;
        }
    }

    /// New tiers for the workloads, and the carries and baselines their changes make.
    fn replan(&mut self, by_workload: &HashMap<Workload, Vec<Source>>, fixed: usize) {
        let mut workloads: Vec<&Workload> = by_workload.keys().collect();
        workloads.sort();
        let Some(budget) = self.budget else {
            return;
        };
        let hasher = foldhash::fast::FixedState::with_seed(0);
        // The aggregate's carried series are exported whatever the plan.
        let mut shared = HashSet::new();
        let mut fixed = fixed;
        for (key, value) in &self.carries {
            if workload_of(&key.labels).is_none_or(|w| !by_workload.contains_key(&w)) {
                shared.insert(hasher.hash_one(key));
                fixed += value.series();
            }
        }
        let candidates: Vec<Candidate> = workloads
            .iter()
            .map(|w| {
                let count = |tier: Tier| -> HashMap<Key, usize> {
                    let mut ids = HashMap::new();
                    for s in &by_workload[*w] {
                        if let Some(id) = identity(tier, &s.key, s.value.is_gauge()) {
                            ids.insert(id, s.value.series());
                        }
                    }
                    for (key, value) in &self.carries {
                        if workload_of(&key.labels).as_ref() == Some(*w)
                            && let Some(id) = identity(tier, key, false)
                        {
                            ids.insert(id, value.series());
                        }
                    }
                    ids
                };
                Candidate {
                    activity: self.activity.get(*w).map_or(0.0, |a| a.recent),
                    current: self.tiers.get(*w).copied(),
                    detail: count(Tier::Detail).values().sum(),
                    folded: count(Tier::Folded).values().sum(),
                    aggregated: count(Tier::Aggregated)
                        .into_iter()
                        .map(|(id, n)| (hasher.hash_one(&id), n))
                        .collect(),
                }
            })
            .collect();
        let tiers = plan(&candidates, fixed, shared, budget);
        for (w, new) in workloads.into_iter().zip(tiers) {
            let old = self.tier(w);
            if new < old {
                self.fold(w, new);
            } else if new > old {
                self.unfold(old, &by_workload[w]);
            }
            self.tiers.insert(w.clone(), new);
        }
    }

    /// `w` goes down to `tier`: its carried counts move with it into the coarser series
    /// (its sources follow by themselves: they are mapped at each scrape).
    fn fold(&mut self, w: &Workload, tier: Tier) {
        let owned: Vec<Key> = self
            .carries
            .keys()
            .filter(|key| workload_of(&key.labels).as_ref() == Some(w))
            .cloned()
            .collect();
        for key in owned {
            let Some(id) = identity(tier, &key, false) else {
                continue;
            };
            if id != key
                && let Some(value) = self.carries.remove(&key)
            {
                add(&mut self.carries, id, &value);
            }
        }
    }

    /// `w` climbs from `old`: the coarse series keep what its sources gave them, and the
    /// fine ones start from what the sources hold now.
    fn unfold(&mut self, old: Tier, sources: &[Source]) {
        for s in sources.iter().filter(|s| !s.value.is_gauge()) {
            let value = self.contribution(s);
            if let Some(id) = identity(old, &s.key, false) {
                add(&mut self.carries, id, &value);
            }
            self.baselines.insert(s.key.clone(), s.value.clone());
        }
    }

    /// The exported per-workload series as families.
    fn families(&self, exported: HashMap<Key, Value>) -> Vec<MetricFamily> {
        let mut by_family: HashMap<String, Vec<(Labels, Value)>> = HashMap::new();
        for (key, value) in exported {
            by_family
                .entry(key.family)
                .or_default()
                .push((key.labels, value));
        }
        by_family
            .into_iter()
            .filter_map(|(name, mut series)| {
                let (help, kind) = self.meta.get(&name)?.clone();
                series.sort_by(|a, b| a.0.cmp(&b.0));
                let mut family = MetricFamily::default();
                family.set_name(name);
                family.set_help(help);
                family.set_field_type(kind);
                family.set_metric(
                    series
                        .into_iter()
                        .map(|(labels, value)| {
                            let mut metric = proto::Metric::from_label(
                                labels
                                    .into_iter()
                                    .map(|(name, value)| {
                                        let mut pair = proto::LabelPair::default();
                                        pair.set_name(name);
                                        pair.set_value(value);
                                        pair
                                    })
                                    .collect(),
                            );
                            value.write(&mut metric);
                            metric
                        })
                        .collect(),
                );
                Some(family)
            })
            .collect()
    }
}

fn add(values: &mut HashMap<Key, Value>, key: Key, value: &Value) {
    match values.get_mut(&key) {
        Some(v) => v.add(value),
        None => {
            values.insert(key, value.clone());
        }
    }
}

fn labels_of(metric: &proto::Metric) -> Labels {
    metric
        .get_label()
        .iter()
        .map(|p| (p.name().to_string(), p.value().to_string()))
        .collect()
}

/// The workload labels' values, if the series has all of them.
fn workload_of(labels: &Labels) -> Option<Workload> {
    let value = |name: &str| {
        labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let [a, b, c, d, e] = WORKLOAD_LABELS.map(value);
    Some([a?, b?, c?, d?, e?])
}

/// The series a source's counts are exported under in `tier`; None: not exported (a
/// gauge of an aggregated workload: gauges cannot be added up).
fn identity(tier: Tier, key: &Key, gauge: bool) -> Option<Key> {
    if tier == Tier::Detail {
        return Some(key.clone());
    }
    if tier == Tier::Aggregated && gauge {
        return None;
    }
    let labels = key
        .labels
        .iter()
        .map(|(name, value)| {
            let folded = match name.as_str() {
                "elem_type" if value != "unknown" => "other",
                "function" | "file" => "other",
                "line" => "0",
                n if tier == Tier::Aggregated && WORKLOAD_LABELS.contains(&n) => AGGREGATE,
                _ => value,
            };
            (name.clone(), folded.to_string())
        })
        .collect();
    Some(Key {
        family: key.family.clone(),
        labels,
    })
}

/// Sample lines of a family in the text format.
fn family_series(family: &MetricFamily) -> usize {
    let histogram = family.get_field_type() == MetricType::HISTOGRAM;
    family
        .get_metric()
        .iter()
        .map(|m| {
            if histogram {
                m.get_histogram().get_bucket().len() + 3
            } else {
                1
            }
        })
        .sum()
}

#[cfg(test)]
mod tests;
