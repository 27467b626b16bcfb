//! Duty cycles: a cycle planned from the fraction of time a group may be attached
//! (random length and phase, long enough for the kernel's slow detaches), and the
//! weights of its records once it has ended.
use super::{MILLISECOND, SECOND};
use crate::aggregate::Nanos;

/// Shortest attached window to aim for: long against the time an attach takes, and
/// holding enough hits to measure the on-cost.
pub(super) const MIN_WINDOW: Nanos = 50 * MILLISECOND;
/// Cycle lengths (before the ±50% randomization). Detaching takes ~100 ms of
/// blocking-pool time per probe: cycles are seconds, not milliseconds.
pub(super) const MIN_CYCLE: Nanos = SECOND;
/// Long enough for ~10 cycling slots of one process at PROCESS_DETACH_SPACING.
pub(super) const MAX_CYCLE: Nanos = 40 * SECOND;
/// The kernel serializes uprobe detaches (~100 ms each; measured: BENCHMARKS.md, "Where
/// the cost goes"): the node's duty-cycled slots together should not need more than
/// about half of that time.
pub(super) const DETACH_SPACING: Nanos = 200 * MILLISECOND;
/// While the link of a probe that the process keeps hitting is closed (~100 ms),
/// the process runs slowed down — not for want of CPU: with no hits it does not
/// happen. One such detach every 0.5–1 s raised the JSON service's p99; one every
/// 2–4 s kept it within the spread of runs without a probe (measured: BENCHMARKS.md,
/// "What duty cycles do to tail latency"). So a process's detaches (one per
/// duty-cycled group with uprobe_multi links, one per slot with perf-event uprobes) are
/// spaced this far apart. Measured with perf-event detaches (~100 ms); a multi link
/// closes in ~45 ms, so a shorter spacing may do — not measured yet.
pub(super) const PROCESS_DETACH_SPACING: Nanos = 4 * SECOND;
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
}

/// The planned on-fraction of a cycle.
pub(super) fn cycle_fraction(cycle: &Cycle) -> f64 {
    (cycle.window_until - cycle.window_from) as f64
        / cycle.end.saturating_sub(cycle.start).max(1) as f64
}

/// Detaches per cycle of the duty-cycled groups (one per group with uprobe_multi links,
/// one per slot with perf-event uprobes) on the node and in the group's process.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CyclingSlots {
    pub(super) node: usize,
    pub(super) process: usize,
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
        .max(cycling.node as Nanos * DETACH_SPACING)
        .max(cycling.process as Nanos * PROCESS_DETACH_SPACING)
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
    }
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
        // the process: its slots' detaches are spaced PROCESS_DETACH_SPACING apart.
        let mut rng = fastrand::Rng::with_seed(5);
        for slots in [1usize, 3, 7] {
            let cycling = CyclingSlots {
                node: slots,
                process: slots,
            };
            let lengths: Vec<Nanos> = (0..50)
                .map(|_| plan_cycle(&mut rng, 0, 0.2, cycling, false, 0).end)
                .collect();
            let mean = lengths.iter().sum::<Nanos>() as f64 / lengths.len() as f64;
            let want = (slots as Nanos * PROCESS_DETACH_SPACING).min(MAX_CYCLE);
            assert!(
                (mean / want as f64 - 1.0).abs() < 0.15,
                "{slots} slots: mean cycle {mean:.0} ns, want about {want} ns"
            );
        }
    }
}
