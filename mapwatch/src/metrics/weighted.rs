//! A histogram that takes a weighted observation in one step.
//!
//! A duty-cycled probe's record stands for many events (its weight, ~1/duty cycle), and
//! `prometheus::Histogram` can only add them one at a time: four atomic operations each.
//! The daemon's work then grew with the target's true event rate instead of what the
//! probes saw — a loop growing ~30 M slices a second, observed 0.3% of the time, cost
//! it seconds per duty cycle, stalled the budget task behind a full channel and made
//! SIGTERM take over 20 s. Written here because the prometheus crate has no weighted
//! observe; it plugs into the crate's own `MetricVec` (label handling, removal,
//! collection) and only the per-series state is ours.
use std::sync::{Arc, Mutex};

use prometheus::{
    HistogramOpts,
    core::{Describer as _, Metric, MetricVec, MetricVecBuilder},
    proto::{self, LabelPair, MetricType},
};

/// One series: bucket counts (not cumulative), sum and count.
#[derive(Clone, Debug)]
pub struct Histogram {
    core: Arc<Core>,
}

#[derive(Debug)]
struct Core {
    label_pairs: Vec<LabelPair>,
    upper_bounds: Vec<f64>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&self, value: f64) {
        self.observe_n(value, 1);
    }

    /// `value` observed `times` times.
    pub fn observe_n(&self, value: f64, times: u64) {
        if times == 0 {
            return;
        }
        let bucket = self.core.upper_bounds.iter().position(|&b| value <= b);
        let mut state = self.state();
        if let Some(i) = bucket {
            state.buckets[i] += times;
        }
        state.sum += value * times as f64;
        state.count += times;
    }

    pub fn get_sample_count(&self) -> u64 {
        self.state().count
    }

    pub fn get_sample_sum(&self) -> f64 {
        self.state().sum
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.core.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Metric for Histogram {
    fn metric(&self) -> proto::Metric {
        let (counts, sum, count) = {
            let state = self.state();
            (state.buckets.clone(), state.sum, state.count)
        };
        let mut cumulative = 0;
        let buckets = self
            .core
            .upper_bounds
            .iter()
            .zip(counts)
            .map(|(&upper_bound, n)| {
                cumulative += n;
                let mut bucket = proto::Bucket::default();
                bucket.set_cumulative_count(cumulative);
                bucket.set_upper_bound(upper_bound);
                bucket
            })
            .collect();
        let mut histogram = proto::Histogram::default();
        histogram.set_sample_sum(sum);
        histogram.set_sample_count(count);
        histogram.set_bucket(buckets);
        let mut metric = proto::Metric::from_label(self.core.label_pairs.clone());
        metric.set_histogram(histogram);
        metric
    }
}

/// Holds the buckets checked once, for every series of its vec.
#[derive(Clone, Debug)]
pub struct HistogramBuilder {
    upper_bounds: Vec<f64>,
}

impl MetricVecBuilder for HistogramBuilder {
    type M = Histogram;
    type P = HistogramOpts;

    fn build<V: AsRef<str>>(
        &self,
        opts: &HistogramOpts,
        values: &[V],
    ) -> prometheus::Result<Histogram> {
        let desc = opts.describe()?;
        if desc.variable_labels.len() != values.len() {
            return Err(prometheus::Error::InconsistentCardinality {
                expect: desc.variable_labels.len(),
                got: values.len(),
            });
        }
        let mut label_pairs: Vec<LabelPair> = desc
            .variable_labels
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.clone());
                pair.set_value(value.as_ref().to_owned());
                pair
            })
            .chain(desc.const_label_pairs.iter().cloned())
            .collect();
        // As the prometheus crate orders them: the text format prints them so.
        label_pairs.sort();
        let upper_bounds = self.upper_bounds.clone();
        Ok(Histogram {
            core: Arc::new(Core {
                label_pairs,
                state: Mutex::new(State {
                    buckets: vec![0; upper_bounds.len()],
                    ..State::default()
                }),
                upper_bounds,
            }),
        })
    }
}

/// The buckets' upper bounds without a trailing +Inf (implicit), strictly increasing.
fn upper_bounds(buckets: &[f64]) -> prometheus::Result<Vec<f64>> {
    if let Some(pair) = buckets.windows(2).find(|w| w[0] >= w[1]) {
        return Err(prometheus::Error::Msg(format!(
            "histogram buckets must be in increasing order: {} >= {}",
            pair[0], pair[1]
        )));
    }
    let mut bounds = buckets.to_vec();
    if bounds.last() == Some(&f64::INFINITY) {
        bounds.pop();
    }
    Ok(bounds)
}

pub type HistogramVec = MetricVec<HistogramBuilder>;

pub fn histogram_vec(opts: HistogramOpts, labels: &[&str]) -> prometheus::Result<HistogramVec> {
    let builder = HistogramBuilder {
        upper_bounds: upper_bounds(&opts.buckets)?,
    };
    let opts = opts.variable_labels(labels.iter().map(|l| l.to_string()).collect());
    MetricVec::create(MetricType::HISTOGRAM, builder, opts)
}

#[cfg(test)]
mod tests {
    use prometheus::{Registry, TextEncoder};

    use super::*;

    fn render(make: impl FnOnce(&Registry)) -> String {
        let registry = Registry::new();
        make(&registry);
        TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encode")
    }

    /// The text a weighted observation exports is what as many single observations
    /// export through the prometheus crate's own histogram.
    #[test]
    fn observe_n_exports_what_n_observations_do() {
        let buckets = vec![1.0, 8.0, 64.0];
        let observations = [(0.5, 3), (8.0, 1000), (9.0, 7), (1e9, 2), (64.0, 0)];
        let ours = render(|r| {
            let vec = histogram_vec(
                HistogramOpts::new("h", "help").buckets(buckets.clone()),
                &["b", "a"],
            )
            .expect("vec");
            r.register(Box::new(vec.clone())).expect("register");
            for (value, times) in observations {
                vec.with_label_values(&["x", "y"]).observe_n(value, times);
            }
        });
        let theirs = render(|r| {
            let vec = prometheus::HistogramVec::new(
                HistogramOpts::new("h", "help").buckets(buckets.clone()),
                &["b", "a"],
            )
            .expect("vec");
            r.register(Box::new(vec.clone())).expect("register");
            for (value, times) in observations {
                for _ in 0..times {
                    vec.with_label_values(&["x", "y"]).observe(value);
                }
            }
        });
        assert_eq!(ours, theirs);
        assert!(
            ours.contains("h_bucket{a=\"y\",b=\"x\",le=\"8\"} 1003"),
            "{ours}"
        );
    }

    #[test]
    fn removed_series_are_gone_and_bad_buckets_refused() {
        let vec =
            histogram_vec(HistogramOpts::new("h", "help").buckets(vec![1.0]), &["l"]).expect("vec");
        vec.with_label_values(&["a"]).observe(2.0);
        vec.remove_label_values(&["a"]).expect("remove");
        assert!(
            prometheus::core::Collector::collect(&vec)[0]
                .get_metric()
                .is_empty()
        );
        assert!(
            histogram_vec(HistogramOpts::new("h", "help").buckets(vec![2.0, 1.0]), &[]).is_err()
        );
    }
}
