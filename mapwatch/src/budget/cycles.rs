//! Duty cycles: a cycle planned from the fraction of time a group may be attached
//! (random length and phase, long enough for the kernel's slow detaches), and the
//! weights of its records once it has ended.
use super::{MILLISECOND, SECOND, cost_scale::PerGroup};
use crate::aggregate::Nanos;

/// Shortest attached window to aim for: long against the time an attach takes, and
/// holding enough hits to measure the on-cost.
pub(super) const MIN_WINDOW: Nanos = 50 * MILLISECOND;
/// Cycle lengths (before the ±50% randomization). Detaching takes ~100 ms of
/// blocking-pool time per probe: cycles are seconds, not milliseconds.
pub(super) const MIN_CYCLE: Nanos = SECOND;
/// Long enough for ~10 cycling perf-event slots of one process at their spacing.
pub(super) const MAX_CYCLE: Nanos = 40 * SECOND;

/// How far apart detaches are kept: on the node, because the kernel serializes them,
/// the node's duty-cycled detaches together should need at most about half the time;
/// in one process, because while the link of a probe the process keeps hitting is
/// closed, the process runs slowed down (not for want of CPU: with no hits it does not
/// happen). One detach per duty-cycled group with uprobe_multi links, one per slot with
/// perf-event uprobes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct DetachSpacing {
    pub(super) node: Nanos,
    pub(super) process: Nanos,
}

/// Perf-event uprobes: ~115 ms per detach. One every 0.5–1 s raised the JSON service's
/// p99 2.5–6×, one every 4 s kept it near the runs without a probe (BENCHMARKS.md,
/// "What duty cycles do to tail latency").
pub(super) const PERF_EVENT_SPACING: DetachSpacing = DetachSpacing {
    node: 200 * MILLISECOND,
    process: 4 * SECOND,
};

/// uprobe_multi links: ~45 ms per detach, and no p99 cost measured at up to two
/// detaches a second (the same table); one a second leaves a margin.
pub(super) const MULTI_LINK_SPACING: DetachSpacing = DetachSpacing {
    node: 100 * MILLISECOND,
    process: SECOND,
};
/// No group is cycled below this fraction: it must still be seen to be measured.
pub const MIN_FRACTION: f64 = 0.001;

/// One cycle of a duty-cycled group: from `start` to `end`, attached from
/// `window_from` to `window_until`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Cycle {
    pub(super) start: Nanos,
    pub(super) end: Nanos,
    pub(super) window_from: Nanos,
    pub(super) window_until: Nanos,
    /// The window was opened (attach requested) / closed (detach requested).
    pub(super) opened: bool,
    pub(super) closed: bool,
    pub(super) planned_weight: f64,
    /// The process when the cycle started; None if it could not be read.
    pub(super) at_start: Option<Mark>,
    /// The reading at the opening of the window under way.
    pub(super) at_open: Option<Mark>,
    /// What happened while the window was open; None if a reading was missing.
    pub(super) in_window: Option<Mark>,
}

/// A process's CPU time and the believed cost of its probes' hits (all of them, and
/// those of the group whose cycle it marks), ns: at one moment, or added up over a
/// window. Kept apart until the cycle is weighed, with the per-hit cost learned by then
/// (`cost_scale.rs`): work = CPU time − scale × believed cost, group by group.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(super) struct Mark {
    pub(super) cpu: f64,
    pub(super) probes: PerGroup,
    pub(super) group: PerGroup,
}

impl Cycle {
    /// The cycle, its work counted from `mark` (the process when it starts; None:
    /// unread).
    pub(super) fn starting_with(mut self, mark: Option<Mark>) -> Cycle {
        self.at_start = mark;
        self.in_window = mark.map(|_| Mark::default());
        self
    }

    /// A window opened at `mark`.
    pub(super) fn open_window(&mut self, mark: Option<Mark>) {
        self.at_open = mark;
        if mark.is_none() {
            self.in_window = None;
        }
    }

    /// The window closed at `mark`: what happened in it is added up.
    pub(super) fn close_window(&mut self, mark: Option<Mark>) {
        self.in_window = match (self.in_window, self.at_open.take(), mark) {
            (Some(sum), Some(open), Some(close)) => Some(Mark {
                cpu: sum.cpu + (close.cpu - open.cpu).max(0.0),
                probes: sum.probes + close.probes.zip(open.probes, |c, o| (c - o).max(0.0)),
                group: sum.group + close.group.zip(open.group, |c, o| (c - o).max(0.0)),
            }),
            _ => None,
        };
    }
}

/// The planned on-fraction of a cycle.
pub(super) fn cycle_fraction(cycle: &Cycle) -> f64 {
    (cycle.window_until - cycle.window_from) as f64
        / cycle.end.saturating_sub(cycle.start).max(1) as f64
}

/// Detaches per cycle of the duty-cycled groups (one per group with uprobe_multi links,
/// one per slot with perf-event uprobes) on the node and in the group's process, and
/// how far apart the link kind needs them.
#[derive(Debug, Clone, Copy)]
pub(super) struct CyclingSlots {
    pub(super) node: usize,
    pub(super) process: usize,
    pub(super) spacing: DetachSpacing,
}

impl Default for CyclingSlots {
    fn default() -> CyclingSlots {
        CyclingSlots {
            node: 0,
            process: 0,
            spacing: PERF_EVENT_SPACING,
        }
    }
}

/// A cycle from `now` for a group that may be attached `fraction` of the time:
/// length random in [0.5, 1.5] × the base (longer at small fractions, so the window
/// stays ≥ MIN_WINDOW; longer with many cycling slots on the node, whose detaches the
/// kernel serializes, and in the process, which each detach slows down); the window at
/// a random phase (`window_first`: at the start, for a group that is attached already).
///
/// `overrun`: how much longer than planned the group's slots stayed attached in recent
/// cycles (the kernel closes a group's links one after the other, ~100 ms each): the
/// window is planned that much shorter, and the cycle long enough for that to fit.
pub(super) fn plan_cycle(
    rng: &mut fastrand::Rng,
    now: Nanos,
    fraction: f64,
    cycling: CyclingSlots,
    window_first: bool,
    overrun: Nanos,
) -> Cycle {
    let fraction = fraction.clamp(MIN_FRACTION, 1.0);
    let base = ((MIN_WINDOW.max(2 * overrun) as f64 / fraction) as Nanos)
        .max(cycling.node as Nanos * cycling.spacing.node)
        .max(cycling.process as Nanos * cycling.spacing.process)
        .clamp(MIN_CYCLE, MAX_CYCLE);
    let length = (base as f64 * (0.5 + rng.f64())) as Nanos;
    let on_time = (length as f64 * fraction) as Nanos;
    let window = on_time.saturating_sub(overrun).max(on_time / 4).max(1);
    let phase = if window_first {
        0
    } else {
        (rng.f64() * length.saturating_sub(window) as f64) as Nanos
    };
    Cycle {
        start: now,
        end: now + length,
        window_from: now + phase,
        window_until: now + phase + window,
        opened: false,
        closed: false,
        planned_weight: 1.0 / fraction,
        at_start: None,
        at_open: None,
        in_window: None,
    }
}

/// Less work than this in a window (1 ms of CPU) is too little to divide by: the
/// cycle is weighed by wall time instead.
const MIN_WINDOW_WORK: f64 = 1e6;

/// Above this share of the probes' estimated cost taken on top of its usual CPU use, a
/// process is taken to have had CPU to spare while attached (see
/// [`CycleWork::absorbed`]). Low because a process's first cycles are weighed with the
/// believed per-hit cost, before its own is learned (`cost_scale.rs`), and the belief
/// was up to twice the real cost: a Go process pacing itself with 1 ms sleeps took on
/// 0.56× it while attached (0.55–1.06 per cycle); a saturated process takes on ~0.
pub(super) const UNSATURATED: f64 = 0.3;

/// What a cycle that ended tells about the process, for its weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct CycleWork {
    /// Work over the whole cycle and in its window, ns.
    pub(super) total: f64,
    pub(super) window: f64,
    /// The share of the group's cost the process took on top of its usual CPU use
    /// while attached: ~1 when it had CPU to spare (the probes' cost came on top of
    /// its work), ~0 when saturated (it came out of its work). None when unknown.
    pub(super) absorbed: Option<f64>,
}

/// The work of `cycle`, which ended at `at_end`, attached for `on` of its `length`
/// (ns), a hit costing `scale` × its believed cost (per group). None when a reading is
/// missing or the window did too little work to divide by.
pub(super) fn cycle_work(
    cycle: &Cycle,
    at_end: Option<Mark>,
    on: Nanos,
    length: Nanos,
    scale: PerGroup,
) -> Option<CycleWork> {
    let in_window = cycle.in_window?;
    let (start, end) = (cycle.at_start?, at_end?);
    let window = in_window.cpu - in_window.probes.weighed(scale);
    let total = (end.cpu - start.cpu) - (end.probes.weighed(scale) - start.probes.weighed(scale));
    if window < MIN_WINDOW_WORK || total <= 0.0 || on == 0 {
        return None;
    }
    let off = length.saturating_sub(on);
    let group_cost = in_window.group.weighed(scale);
    let absorbed = (off > 0 && group_cost > 0.0).then(|| {
        let on_rate = window / on as f64;
        let off_rate = (total - window).max(0.0) / off as f64;
        let cost_rate = group_cost / on as f64;
        1.0 + (on_rate - off_rate) / cost_rate
    });
    Some(CycleWork {
        total,
        window,
        absorbed,
    })
}

/// The weight of a cycle's records: events follow the work a program does. A
/// saturated process that a probe slows down does fewer events per second of window
/// but as many per unit of work: weighed by wall time it came out at half its true
/// count (a closed-loop JSON service) — so its weight is work over the cycle / work in
/// the window. A process with CPU to spare does the same work attached or not, and
/// there wall time is the better measure: the work in a window is CPU time minus the
/// probes' estimated cost, and where the probes are most of the window's CPU, a few
/// percent of error in their per-hit cost became +28% in the count.
/// `absorbed`: the process's share taken on top, smoothed over its cycles. None: weigh
/// by wall time ([`close_weights`]).
pub(super) fn work_based_weight(work: Option<CycleWork>, absorbed: Option<f64>) -> Option<f64> {
    let work = work?;
    absorbed
        .is_some_and(|a| a < UNSATURATED)
        .then(|| (work.total / work.window).max(1.0))
}

/// The weights of a cycle from `start` to `end` that has ended, per slot given as
/// (slot, time attached in the cycle): cycle length / time attached.
pub(super) fn close_weights(
    slots: impl IntoIterator<Item = (u32, Nanos)>,
    start: Nanos,
    end: Nanos,
) -> Vec<(u32, f64)> {
    let length = end.saturating_sub(start) as f64;
    slots
        .into_iter()
        .map(|(slot, on_in_cycle)| {
            let weight = if on_in_cycle == 0 {
                1.0 // attached for no time: it recorded nothing to weigh
            } else {
                (length / on_in_cycle as f64).max(1.0)
            };
            (slot, weight)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_are_random_in_length_and_phase() {
        let mut rng = fastrand::Rng::with_seed(3);
        let cycles: Vec<Cycle> = (0..50)
            .map(|_| plan_cycle(&mut rng, 0, 0.1, CyclingSlots::default(), false, 0))
            .collect();
        let lengths: std::collections::BTreeSet<Nanos> = cycles.iter().map(|c| c.end).collect();
        let phases: std::collections::BTreeSet<Nanos> =
            cycles.iter().map(|c| c.window_from).collect();
        assert!(lengths.len() > 40 && phases.len() > 40);
        for c in &cycles {
            assert!(c.window_from >= c.start && c.window_until <= c.end, "{c:?}");
            let fraction = (c.window_until - c.window_from) as f64 / (c.end - c.start) as f64;
            assert!((fraction - 0.1).abs() < 1e-3);
            assert!(c.end >= MIN_CYCLE / 2 && c.end <= MAX_CYCLE * 3 / 2);
        }
        // Small fractions get longer cycles, so the window stays long enough.
        let small = plan_cycle(&mut rng, 0, 0.005, CyclingSlots::default(), false, 0);
        assert!(small.window_until - small.window_from >= MIN_WINDOW / 2);
    }

    #[test]
    fn a_process_with_many_cycling_slots_gets_longer_cycles() {
        // Each cycle detaches every slot once, and each detach of a busy probe slows
        // the process: its slots' detaches are spaced apart.
        let mut rng = fastrand::Rng::with_seed(5);
        for spacing in [PERF_EVENT_SPACING, MULTI_LINK_SPACING] {
            for slots in [1usize, 3, 7] {
                let cycling = CyclingSlots {
                    node: slots,
                    process: slots,
                    spacing,
                };
                let lengths: Vec<Nanos> = (0..50)
                    .map(|_| plan_cycle(&mut rng, 0, 0.2, cycling, false, 0).end)
                    .collect();
                let mean = lengths.iter().sum::<Nanos>() as f64 / lengths.len() as f64;
                let want = (slots as Nanos * spacing.process).clamp(MIN_CYCLE, MAX_CYCLE);
                assert!(
                    (mean / want as f64 - 1.0).abs() < 0.15,
                    "{slots} slots, {spacing:?}: mean cycle {mean:.0} ns, want about {want} ns"
                );
            }
        }
    }
}
