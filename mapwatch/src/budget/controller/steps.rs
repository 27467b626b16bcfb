//! A duty-cycled group's steps: opening its window, closing it, and ending its cycle
//! with the weights of its records.
use tracing::debug;

use super::Action;
use crate::{
    aggregate::{Nanos, ScaleUpdate},
    budget::{
        cost_scale::PerGroup,
        cycles::{
            Cycle, CyclingSlots, Mark, close_weights, cycle_work, plan_cycle, work_based_weight,
        },
        state::{Group, Mode},
    },
};

/// What a duty-cycled group needs from the task next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Attach,
    Detach,
}

impl Step {
    pub(super) fn action(self, pid: u32, group: &Group) -> Action {
        let (name, slots) = (group.name, group.slot_numbers());
        match self {
            Step::Attach => Action::Attach {
                pid,
                group: name,
                slots,
            },
            Step::Detach => Action::Detach {
                pid,
                group: name,
                slots,
            },
        }
    }
}

/// Whether `group`'s cycle ends at `now` ([`advance_cycle`] closes it).
pub(super) fn ends(group: &Group, now: Nanos) -> bool {
    matches!(group.mode, Mode::Cycling(c) if c.closed && now >= c.end)
        && !group.busy
        && !group.attached()
}

/// How fast the smoothed share of the probes' cost a process absorbs follows a new
/// cycle's (one cycle's reading is noisy: a GC in the window, a burst of requests).
const ABSORBED_SMOOTHING: f64 = 0.3;

/// The weights of `group`'s records in `cycle`, which ends at `now`, the process then
/// at `at_end`, a hit costing `scale` × its believed cost: by work for a saturated
/// process, else by wall time (see [`work_based_weight`]). Also notes the share of the
/// work the group observed.
pub(super) fn cycle_weights(
    group: &mut Group,
    cycle: &Cycle,
    now: Nanos,
    at_end: Option<Mark>,
    scale: PerGroup,
) -> Vec<(u32, f64)> {
    let length = now.saturating_sub(cycle.start);
    let on = group.slots.iter().map(|s| s.on_in_cycle).max().unwrap_or(0);
    let work = cycle_work(cycle, at_end, on, length, scale);
    if let Some(absorbed) = work.and_then(|w| w.absorbed) {
        group.absorbed = Some(match group.absorbed {
            Some(old) => old + ABSORBED_SMOOTHING * (absorbed - old),
            None => absorbed,
        });
    }
    if let Some(work) = work {
        group.observed = (work.window / work.total).min(1.0);
    }
    debug!(
        group = group.name,
        length,
        on,
        ?work,
        ?scale,
        absorbed = ?group.absorbed,
        in_window = ?cycle.in_window,
        "duty cycle ended"
    );
    match work_based_weight(work, group.absorbed) {
        Some(weight) => group
            .slot_numbers()
            .into_iter()
            .map(|s| (s, weight))
            .collect(),
        None => {
            let weights = close_weights(group.on_in_cycle(), cycle.start, now);
            if work.is_none() {
                group.observed = weights.first().map_or(1.0, |&(_, w)| 1.0 / w);
            }
            weights
        }
    }
}

/// Moves `group`, in `cycle`, along at `now`: opens its window, closes it, or ends the
/// cycle (its weights to `scale_updates`) and starts the next one or goes back to
/// always on. `at_now`: the process now, if read, and the per-hit cost's scale.
/// Returns the attach or detach that needs, if any.
pub(super) fn advance_cycle(
    group: &mut Group,
    mut cycle: Cycle,
    now: Nanos,
    (mark_now, scale): (Option<Mark>, PerGroup),
    cycling: CyclingSlots,
    rng: &mut fastrand::Rng,
    scale_updates: &mut Vec<ScaleUpdate>,
) -> Option<Step> {
    let attached = group.attached();
    if !cycle.opened && now >= cycle.window_from {
        cycle.opened = true;
        group.mode = Mode::Cycling(cycle);
        Some(Step::Attach)
    } else if cycle.opened && !cycle.closed && now >= cycle.window_until {
        cycle.closed = true;
        group.mode = Mode::Cycling(cycle);
        attached.then_some(Step::Detach)
    } else if cycle.closed && !attached && now >= cycle.end {
        // A detach that finished late stretches the cycle to its end: the
        // cycle always contains its window.
        let weights = cycle_weights(group, &cycle, now, mark_now, scale);
        let attached_ns: Nanos = group.slots.iter().map(|s| s.on_in_cycle).sum();
        let per_slot = attached_ns / group.slots.len().max(1) as Nanos;
        group.duty = per_slot as f64 / now.saturating_sub(cycle.start).max(1) as f64;
        let planned = cycle.window_until - cycle.window_from;
        group.overrun = (group.overrun + per_slot.saturating_sub(planned)) / 2;
        scale_updates.push(ScaleUpdate::Close {
            weights,
            until: now,
            spread: now.saturating_sub(cycle.start),
        });
        group.windows += 1;
        for slot in &mut group.slots {
            slot.on_in_cycle = 0;
        }
        if group.fraction >= 1.0 {
            group.mode = Mode::AlwaysOn;
            group.duty = 1.0;
            group.observed = 1.0;
            scale_updates.push(ScaleUpdate::Release {
                slots: group.slot_numbers(),
                from: now,
            });
            Some(Step::Attach)
        } else {
            let mut next = plan_cycle(rng, now, group.fraction, cycling, false, group.overrun)
                .starting_with(mark_now);
            // Degenerate plan (no off time before the window): open now.
            next.opened = now >= next.window_from;
            group.mode = Mode::Cycling(next);
            next.opened.then_some(Step::Attach)
        }
    } else {
        None
    }
}
