//! The Go runtime's side: stop-the-world pauses, GC cycles and mallocgc. A GC cycle
//! closes a per-workload window, so that growth bytes per cycle can be set against
//! the STW time of the same cycles.
use std::collections::VecDeque;

use foldhash::HashMap;
use mapwatch_common::Event;

use super::{Aggregator, Workload, children::child, observe::Observation};
use crate::{
    goruntime::functions::MALLOCGC,
    goruntime::versions::{RAX, StwAbi, stw_reason_name},
};

/// Per process: STW pauses begun, until the RET of startTheWorldWithSema ends them.
/// Each is (reason, start on CLOCK_MONOTONIC).
#[derive(Default)]
pub(super) struct PauseStarts {
    /// Go 1.22+: from startTheWorldWithSema's entry, by goroutine (its RET is on the
    /// same goroutine).
    by_goroutine: HashMap<u64, (u64, u64)>,
    /// Go ≤1.21: from stopTheWorldWithSema's entry. The runtime holds worldsema, so a
    /// process has one at a time.
    stop: Option<(u64, u64)>,
}

/// What happened in a workload since its last GC cycle, and the recent cycles.
#[derive(Default)]
pub(super) struct GcCycle {
    pub growth_bytes: u64,
    pub stw_ns: u64,
    /// (growth bytes, STW seconds) of the last cycles, oldest first.
    history: VecDeque<(f64, f64)>,
}

/// Cycles in the rolling correlation window.
const CORRELATION_WINDOW: usize = 16;

/// Pearson correlation of the pairs; 0 when undefined (fewer than 3, or no variance).
pub fn pearson(pairs: &VecDeque<(f64, f64)>) -> f64 {
    let n = pairs.len() as f64;
    if pairs.len() < 3 {
        return 0.0;
    }
    let (mean_x, mean_y) = pairs
        .iter()
        .fold((0.0, 0.0), |(x, y), (a, b)| (x + a / n, y + b / n));
    let (mut cov, mut var_x, mut var_y) = (0.0, 0.0, 0.0);
    for (x, y) in pairs {
        cov += (x - mean_x) * (y - mean_y);
        var_x += (x - mean_x).powi(2);
        var_y += (y - mean_y).powi(2);
    }
    if var_x == 0.0 || var_y == 0.0 {
        return 0.0;
    }
    cov / (var_x.sqrt() * var_y.sqrt())
}

impl Aggregator {
    pub(super) fn on_start_the_world_entry(&mut self, event: &Event, workload: &Workload) {
        if let StwAbi::WorldStopArgument { reason, started } = workload.facts.stw {
            let reg = |r: u8| event.regs[usize::from(r)];
            // stwReason is a uint8 in the low byte of its register.
            let begun = (reg(reason) & 0xff, reg(started));
            let process = self.processes.entry(event.tgid).or_default();
            process.pauses.by_goroutine.insert(event.goroutine, begun);
        }
    }

    pub(super) fn on_stop_the_world_entry(&mut self, event: &Event, workload: &Workload) {
        if let StwAbi::StopThenStart { reason } = workload.facts.stw {
            let reason = reason.map_or(0, |r| event.regs[usize::from(r)] & 0xff);
            // Go's nanotime and bpf_ktime_get_ns read the same CLOCK_MONOTONIC.
            let process = self.processes.entry(event.tgid).or_default();
            process.pauses.stop = Some((reason, event.ktime_ns));
        }
    }

    /// The RET of startTheWorldWithSema: RAX = `now`, the end of the pause.
    pub(super) fn on_start_the_world_ret(
        &mut self,
        event: &Event,
        workload: &Workload,
        state: u64,
        reps: u64,
    ) {
        let now = event.regs[usize::from(RAX)];
        let pauses = self.processes.get_mut(&event.tgid).map(|p| &mut p.pauses);
        let begun = pauses.and_then(|pauses| match workload.facts.stw {
            StwAbi::WorldStopArgument { .. } => pauses.by_goroutine.remove(&event.goroutine),
            StwAbi::StopThenStart { .. } => pauses.stop.take(),
        });
        let Some((reason, started)) = begun else {
            return; // attached mid-pause
        };
        let pause_ns = now.saturating_sub(started);
        self.observe(event, || Observation::StwPause {
            started_ns: started,
            duration_ns: pause_ns,
            reason: stw_reason_name(reason),
        });
        let Some(w) = self.workloads.get_mut(state) else {
            return;
        };
        let [namespace, pod, container, binary, go_version] = w.labels.values();
        let pauses = self.metrics.stw_pause_seconds.with_label_values(&[
            namespace,
            pod,
            container,
            binary,
            go_version,
            stw_reason_name(reason),
        ]);
        pauses.observe_n(pause_ns as f64 / 1e9, reps);
        w.cycle.stw_ns += pause_ns;
    }

    /// gcMarkTermination: a GC cycle ends, and with it the workload's window.
    pub(super) fn on_gc_cycle(&mut self, state: u64, reps: u64) {
        let Some(w) = self.workloads.get_mut(state) else {
            return;
        };
        let labels = w.labels.values();
        self.metrics
            .gc_cycles_total
            .with_label_values(&labels)
            .inc_by(reps);
        let cycle = &mut w.cycle;
        self.metrics
            .growth_bytes_per_gc_cycle
            .with_label_values(&labels)
            .observe(cycle.growth_bytes as f64);
        if cycle.history.len() == CORRELATION_WINDOW {
            cycle.history.pop_front();
        }
        cycle
            .history
            .push_back((cycle.growth_bytes as f64, cycle.stw_ns as f64 / 1e9));
        cycle.growth_bytes = 0;
        cycle.stw_ns = 0;
        self.metrics
            .stw_growth_correlation
            .with_label_values(&labels)
            .set(pearson(&cycle.history));
    }

    /// mallocgc(size, typ, needzero): size in RAX (src/runtime/malloc.go).
    pub(super) fn on_malloc(&mut self, event: &Event, state: u64, reps: u64) {
        let Some(w) = self.workloads.get(state) else {
            return;
        };
        let (m, c) = (&self.metrics, &w.children);
        child(&c.malloc_total, &m.malloc_total, &w.labels).inc_by(reps);
        child(&c.malloc_bytes_total, &m.malloc_bytes_total, &w.labels)
            .inc_by(event.regs[usize::from(RAX)] * reps);
    }

    /// A Go 1.27 `mallocgc*SC*` entry. mallocgc calls them too, and that allocation
    /// was counted at mallocgc's entry: count only direct calls.
    pub(super) fn on_malloc_specialized(&mut self, event: &Event, state: u64, reps: u64) {
        let process = self.processes.entry(event.tgid).or_default();
        process.children.bound();
        let symbolizer = &mut process.symbolizer;
        let via_mallocgc = *process
            .children
            .called_by_mallocgc
            .entry(event.caller_pc)
            .or_insert_with(|| {
                symbolizer.as_mut().is_some_and(|names| {
                    names
                        .call_site(event.caller_pc)
                        .is_some_and(|site| site.function == MALLOCGC)
                })
            });
        if !via_mallocgc {
            self.on_malloc(event, state, reps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_correlation() {
        let line: VecDeque<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 2.0 * f64::from(i) + 1.0))
            .collect();
        assert!((pearson(&line) - 1.0).abs() < 1e-12);
        let inverse: VecDeque<(f64, f64)> =
            (0..10).map(|i| (f64::from(i), -f64::from(i))).collect();
        assert!((pearson(&inverse) + 1.0).abs() < 1e-12);
        let flat: VecDeque<(f64, f64)> = (0..10).map(|i| (f64::from(i), 3.0)).collect();
        assert_eq!(pearson(&flat), 0.0);
        assert_eq!(pearson(&VecDeque::from([(1.0, 2.0), (2.0, 3.0)])), 0.0);
    }
}
