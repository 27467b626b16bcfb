//! How the records of duty-cycled slots are weighted. The overhead budget attaches
//! some probes only part of the time; these are the messages that tell the aggregator
//! what each of their records stands for.

/// Nanoseconds on CLOCK_MONOTONIC: the clock of `bpf_ktime_get_ns`, which stamps the
/// records.
pub type Nanos = u64;

/// What the aggregator must do with the records of duty-cycled slots.
#[derive(Debug, Clone, PartialEq)]
pub enum ScaleUpdate {
    /// Records of `slots` stamped at or after `from` wait for the weight of their cycle;
    /// `planned_weight` applies if too many wait.
    Hold {
        slots: Vec<u32>,
        from: Nanos,
        planned_weight: f64,
    },
    /// A cycle ended at `until`: the waiting records of each slot stamped before it (and
    /// late ones) weigh `weight` (cycle length / time the slot was attached in it).
    Close {
        weights: Vec<(u32, f64)>,
        until: Nanos,
    },
    /// Records of `slots` stamped at or after `from` weigh 1 again (always on).
    Release { slots: Vec<u32>, from: Nanos },
}
