//! A series' value as the budget adds, subtracts and writes it back into a scrape.
use prometheus::proto::{self, MetricType};

/// One series' value: what a counter, gauge or histogram child holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Counter(f64),
    Gauge(f64),
    /// Cumulative count per upper bound (the +Inf bucket is `count`), sum, count.
    Histogram {
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
    },
}

impl Value {
    /// The value of `metric` of a family of type `kind`; None for types mapwatch does not
    /// register (summaries, untyped).
    pub fn of(kind: MetricType, metric: &proto::Metric) -> Option<Value> {
        match kind {
            MetricType::COUNTER => Some(Value::Counter(metric.get_counter().get_value())),
            MetricType::GAUGE => Some(Value::Gauge(metric.get_gauge().get_value())),
            MetricType::HISTOGRAM => {
                let h = metric.get_histogram();
                Some(Value::Histogram {
                    buckets: h
                        .get_bucket()
                        .iter()
                        .map(|b| (b.upper_bound(), b.cumulative_count()))
                        .collect(),
                    sum: h.get_sample_sum(),
                    count: h.get_sample_count(),
                })
            }
            _ => None,
        }
    }

    /// Lines of the text format this series takes: a histogram has one per bucket, the
    /// +Inf bucket, `_sum` and `_count`.
    pub fn series(&self) -> usize {
        match self {
            Value::Histogram { buckets, .. } => buckets.len() + 3,
            _ => 1,
        }
    }

    pub fn is_gauge(&self) -> bool {
        matches!(self, Value::Gauge(_))
    }

    /// Adds `other` (a series of the same family) to this one.
    pub fn add(&mut self, other: &Value) {
        match (self, other) {
            (Value::Counter(a), Value::Counter(b)) | (Value::Gauge(a), Value::Gauge(b)) => *a += b,
            (
                Value::Histogram {
                    buckets,
                    sum,
                    count,
                },
                Value::Histogram {
                    buckets: more,
                    sum: more_sum,
                    count: more_count,
                },
            ) => {
                if buckets.len() < more.len() {
                    buckets.resize(more.len(), (f64::INFINITY, 0));
                    for (i, (bound, _)) in more.iter().enumerate() {
                        buckets[i].0 = *bound;
                    }
                }
                for (mine, (_, theirs)) in buckets.iter_mut().zip(more) {
                    mine.1 += theirs;
                }
                *sum += more_sum;
                *count += more_count;
            }
            _ => {}
        }
    }

    /// This value less `base` (an earlier value of the same series: counters and
    /// histograms only grow, so nothing goes below 0).
    pub fn minus(&self, base: &Value) -> Value {
        match (self, base) {
            (Value::Counter(a), Value::Counter(b)) => Value::Counter((a - b).max(0.0)),
            (
                Value::Histogram {
                    buckets,
                    sum,
                    count,
                },
                Value::Histogram {
                    buckets: before,
                    sum: sum_before,
                    count: count_before,
                },
            ) => Value::Histogram {
                buckets: buckets
                    .iter()
                    .enumerate()
                    .map(|(i, &(bound, n))| {
                        (bound, n.saturating_sub(before.get(i).map_or(0, |b| b.1)))
                    })
                    .collect(),
                sum: (sum - sum_before).max(0.0),
                count: count.saturating_sub(*count_before),
            },
            _ => self.clone(),
        }
    }

    /// Sets `metric`'s value to this one.
    pub fn write(&self, metric: &mut proto::Metric) {
        match self {
            Value::Counter(v) => {
                let mut counter = proto::Counter::default();
                counter.set_value(*v);
                metric.set_counter(counter);
            }
            Value::Gauge(v) => {
                let mut gauge = proto::Gauge::default();
                gauge.set_value(*v);
                metric.set_gauge(gauge);
            }
            Value::Histogram {
                buckets,
                sum,
                count,
            } => {
                let mut histogram = proto::Histogram::default();
                histogram.set_sample_sum(*sum);
                histogram.set_sample_count(*count);
                histogram.set_bucket(
                    buckets
                        .iter()
                        .map(|&(bound, n)| {
                            let mut bucket = proto::Bucket::default();
                            bucket.set_upper_bound(bound);
                            bucket.set_cumulative_count(n);
                            bucket
                        })
                        .collect(),
                );
                metric.set_histogram(histogram);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(counts: [u64; 2], sum: f64) -> Value {
        Value::Histogram {
            buckets: vec![(1.0, counts[0]), (4.0, counts[1])],
            sum,
            count: counts[1] + 1,
        }
    }

    #[test]
    fn histograms_add_and_subtract_bucket_by_bucket() {
        let mut total = histogram([1, 2], 10.0);
        total.add(&histogram([3, 5], 20.0));
        assert_eq!(total, histogram([4, 7], 30.0).with_count(9));
        assert_eq!(
            total.minus(&histogram([1, 2], 10.0)),
            histogram([3, 5], 20.0).with_count(6)
        );
        assert_eq!(total.series(), 5);
        assert_eq!(
            Value::Counter(3.0).minus(&Value::Counter(5.0)),
            Value::Counter(0.0)
        );
    }

    impl Value {
        fn with_count(mut self, n: u64) -> Value {
            if let Value::Histogram { count, .. } = &mut self {
                *count = n;
            }
            self
        }
    }
}
