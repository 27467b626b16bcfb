//! What the controller tracks per process, group and slot: hits and attached time not
//! yet measured, each group's measured on-cost and duty-cycle mode, and the histories
//! behind a process's overhead estimate and CPU use.
use std::collections::VecDeque;

use super::{
    MILLISECOND, SECOND,
    cost_scale::{CostSample, CostScale, MAX_GROUPS, PerGroup},
    cycles::{Cycle, Mark},
    groups::{GroupSpec, Priority, SlotCost, SlotHits},
    shares::BudgetConfig,
};
use crate::{aggregate::Nanos, discover::cpu::CpuTime, metrics::WorkloadLabels};

/// Attached time needed before a measurement of the on-cost counts.
const MIN_MEASURED_ON: Nanos = 20 * MILLISECOND;
/// A lower on-cost measurement moves the estimate this far towards it (a higher one
/// replaces it at once: over budget is corrected fast, recovery is gradual).
const DECAY: f64 = 0.3;

/// The least a process's share of its own CPU allows its probes, in cores. An idle
/// process's share is 0: without a floor, a group duty-cycled while the process was
/// busy would stay cycled through every quiet spell, however few hits it takes then.
/// 0.01% of a core: ~100 hits/s at ~1 µs each.
pub(super) const SHARE_FLOOR: f64 = 0.0001;
/// Span of the exported overhead estimate: a sliding average that holds at least
/// one whole cycle (up to MAX_CYCLE × 1.5), or it would swing with each window.
const OVERHEAD_SPAN: Nanos = 60 * SECOND;
/// Span over which a process's own CPU use is measured (for `--overhead-share`).
const CPU_SPAN: Nanos = 20 * SECOND;

#[derive(Debug, Clone)]
pub(super) struct SlotState {
    pub(super) cost: SlotCost,
    pub(super) last: SlotHits,
    /// When its probe (re)started recording; None while detached.
    pub(super) attached_since: Option<Nanos>,
    /// Attached time and hits not yet turned into an on-cost measurement.
    pub(super) pending_on: Nanos,
    pub(super) pending_hits: u64,
    /// Attached time within the current cycle.
    pub(super) on_in_cycle: Nanos,
}

// A cycle holds its marks per group (~0.5 KiB); a process has at most 8 groups, and
// the mode is copied out and back as a cycle moves along: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Mode {
    AlwaysOn,
    Cycling(Cycle),
}

#[derive(Debug, Clone)]
pub(super) struct Group {
    pub(super) name: &'static str,
    pub(super) priority: Priority,
    pub(super) slots: Vec<SlotState>,
    /// CPU (cores) the group costs while attached; None until measured.
    pub(super) on_cost: Option<f64>,
    /// The fraction of time it may be attached, from the last allocation.
    pub(super) fraction: f64,
    pub(super) mode: Mode,
    /// An attach or detach of this group is under way.
    pub(super) busy: bool,
    /// On-fraction of the last finished cycle (1 while always on; the planned fraction
    /// until the first cycle ends, which can take a minute: cycles are long).
    pub(super) duty: f64,
    /// Cycles finished so far.
    pub(super) windows: u64,
    /// Attached time per slot beyond the planned window, averaged over recent cycles.
    pub(super) overrun: Nanos,
    /// Share of the process's work done while the group was attached, in the last
    /// cycle (1 while always on): how much of what happened its records saw.
    pub(super) observed: f64,
    /// The share of the group's cost the process takes on top of its usual CPU use
    /// while it is attached (`cycles::CycleWork::absorbed`), smoothed over cycles.
    pub(super) absorbed: Option<f64>,
}

impl Group {
    /// A group whose probes were all attached at `now`: always on, cost unmeasured.
    fn new(spec: GroupSpec, now: Nanos) -> Group {
        Group {
            name: spec.name,
            priority: spec.priority,
            slots: spec
                .slots
                .into_iter()
                .map(|cost| SlotState {
                    cost,
                    last: SlotHits::default(),
                    attached_since: Some(now),
                    pending_on: 0,
                    pending_hits: 0,
                    on_in_cycle: 0,
                })
                .collect(),
            on_cost: None,
            fraction: 1.0,
            mode: Mode::AlwaysOn,
            busy: false,
            duty: 1.0,
            windows: 0,
            overrun: 0,
            observed: 1.0,
            absorbed: None,
        }
    }

    /// What the group's probes have cost so far (ns), by the hit totals of the last
    /// control step.
    pub(super) fn cost_so_far(&self) -> f64 {
        self.slots.iter().map(|s| s.cost.believed(s.last)).sum()
    }

    /// Detaches one detach of this group costs (see [`Process::cycling_detaches`]).
    pub(super) fn detaches(&self, group_links: bool) -> usize {
        if group_links { 1 } else { self.slots.len() }
    }

    pub(super) fn slot_numbers(&self) -> Vec<u32> {
        self.slots.iter().map(|s| s.cost.slot).collect()
    }

    pub(super) fn attached(&self) -> bool {
        self.slots.iter().any(|s| s.attached_since.is_some())
    }

    /// (slot, attached time within the current cycle) of each slot.
    pub(super) fn on_in_cycle(&self) -> impl Iterator<Item = (u32, Nanos)> + '_ {
        self.slots.iter().map(|s| (s.cost.slot, s.on_in_cycle))
    }

    /// Turns the pending hits and attached time into an on-cost measurement once
    /// enough time was attached; `scale`: what a hit really costs, as a factor on the
    /// believed cost.
    pub(super) fn measure_on_cost(&mut self, scale: f64) {
        let on = self.slots.iter().map(|s| s.pending_on).max().unwrap_or(0);
        if on < MIN_MEASURED_ON {
            return;
        }
        let measured: f64 = self
            .slots
            .iter()
            .filter(|s| s.pending_on > 0)
            .map(|s| s.pending_hits as f64 * s.cost.per_hit_ns / s.pending_on as f64)
            .sum::<f64>()
            * scale;
        self.on_cost = Some(match self.on_cost {
            Some(old) if measured < old => old + DECAY * (measured - old),
            _ => measured,
        });
        for slot in &mut self.slots {
            slot.pending_on = 0;
            slot.pending_hits = 0;
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Process {
    pub(super) labels: WorkloadLabels,
    pub(super) groups: Vec<Group>,
    /// (time, cumulative estimated CPU ns of all probes), oldest first, over
    /// ~OVERHEAD_SPAN.
    pub(super) cost_history: VecDeque<(Nanos, f64)>,
    pub(super) total_cost_ns: f64,
    pub(super) since: Nanos,
    pub(super) budget: f64,
    /// (time, the process's CPU time), oldest first, over ~CPU_SPAN.
    pub(super) cpu_history: VecDeque<(Nanos, CpuTime)>,
    /// The process at the last control step, when its CPU time was read.
    pub(super) last_mark: Option<Mark>,
    /// What its probes' hits really cost it, as factors on the believed cost (one per
    /// group, indexed as `groups`).
    pub(super) cost_scale: CostScale,
}

/// What the task read of a process at one moment (`at`): its CPU time (all threads,
/// probes included) and the hit totals of its probes' slots.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub at: Nanos,
    pub cpu: CpuTime,
    pub hits: Vec<(u32, SlotHits)>,
}

impl Process {
    /// A process whose probes were all attached at `now`.
    pub(super) fn new(
        labels: WorkloadLabels,
        groups: Vec<GroupSpec>,
        now: Nanos,
        budget: f64,
    ) -> Process {
        debug_assert!(
            groups.len() <= MAX_GROUPS,
            "more groups than the cost fit has room for"
        );
        Process {
            labels,
            groups: groups
                .into_iter()
                .map(|spec| Group::new(spec, now))
                .collect(),
            cost_history: VecDeque::from([(now, 0.0)]),
            total_cost_ns: 0.0,
            since: now,
            budget,
            cpu_history: VecDeque::new(),
            last_mark: None,
            cost_scale: CostScale::default(),
        }
    }

    /// The believed cost (hits × per-hit cost, ns, per group) of the hits in `hits` of
    /// the slots `of` accepts.
    fn believed_cost(&self, hits: &[(u32, SlotHits)], of: impl Fn(u32) -> bool) -> PerGroup {
        hits.iter()
            .filter(|&&(slot, _)| of(slot))
            .filter_map(|&(slot, hits)| {
                let (group, cost) = self.slot_cost(slot)?;
                Some(PerGroup::only(group, cost.believed(hits)))
            })
            .fold(PerGroup::default(), |sum, cost| sum + cost)
    }

    /// The process at `reading`, for the weights of `group`'s cycles (None: of no
    /// group, for the marks where a cycle starts or ends).
    pub(super) fn mark(&self, group: Option<&str>, reading: &Reading) -> Mark {
        let slots: Vec<u32> = self
            .groups
            .iter()
            .filter(|g| Some(g.name) == group)
            .flat_map(|g| g.slot_numbers())
            .collect();
        Mark {
            cpu: reading.cpu.total_ns as f64,
            probes: self.believed_cost(&reading.hits, |_| true),
            group: self.believed_cost(&reading.hits, |slot| slots.contains(&slot)),
        }
    }

    /// The process at `reading` (see [`Process::mark`]), which the per-hit cost is also
    /// learned from.
    pub(super) fn take_reading(&mut self, group: Option<&str>, reading: &Reading) -> Mark {
        let mark = self.mark(group, reading);
        self.cost_scale.observe(CostSample {
            at: reading.at,
            cpu_ns: reading.cpu.total_ns,
            system_ns: reading.cpu.system_ns,
            believed_ns: mark.probes,
        });
        mark
    }

    /// The index of the group of `slot`, and the believed cost of its hits.
    fn slot_cost(&self, slot: u32) -> Option<(usize, SlotCost)> {
        self.groups.iter().enumerate().find_map(|(index, g)| {
            let slot = g.slots.iter().find(|s| s.cost.slot == slot)?;
            Some((index, slot.cost))
        })
    }

    /// Every slot of the process (what a [`Reading`] reads the hits of).
    pub(super) fn slot_numbers(&self) -> Vec<u32> {
        self.groups.iter().flat_map(|g| g.slot_numbers()).collect()
    }

    /// Detaches one cycle of its duty-cycled groups costs: one per group when a group
    /// is one link (uprobe_multi), one per slot when each slot is a perf event the
    /// kernel unregisters in turn.
    pub(super) fn cycling_detaches(&self, group_links: bool) -> usize {
        self.groups
            .iter()
            .filter(|g| matches!(g.mode, Mode::Cycling(_)))
            .map(|g| g.detaches(group_links))
            .sum()
    }

    /// What its groups cost while attached, in cores, as far as measured.
    pub(super) fn demand(&self) -> f64 {
        self.groups.iter().filter_map(|g| g.on_cost).sum()
    }

    /// The process's CPU time at `now`; keeps ~CPU_SPAN of them.
    pub(super) fn add_cpu_time(&mut self, now: Nanos, cpu: CpuTime) {
        self.cpu_history.push_back((now, cpu));
        while self.cpu_history.len() > 2 && self.cpu_history[1].0 + CPU_SPAN <= now {
            self.cpu_history.pop_front();
        }
    }

    /// The process's CPU use over the last ~20 s, in cores; None until measured twice.
    fn cpu_rate(&self) -> Option<f64> {
        match (self.cpu_history.front(), self.cpu_history.back()) {
            (Some(&(t0, c0)), Some(&(t1, c1))) if t1 > t0 => {
                Some(c1.total_ns.saturating_sub(c0.total_ns) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        }
    }

    /// What the probes of this process may cost, in cores.
    pub(super) fn limit(&self, config: &BudgetConfig) -> f64 {
        match (config.share_of_process, self.cpu_rate()) {
            (Some(share), Some(rate)) => config.per_process.min((share * rate).max(SHARE_FLOOR)),
            _ => config.per_process,
        }
    }

    /// `cost_ns` more estimated CPU of the probes, up to `now`; keeps ~OVERHEAD_SPAN of
    /// the running total.
    pub(super) fn add_cost(&mut self, now: Nanos, cost_ns: f64) {
        self.total_cost_ns += cost_ns;
        self.cost_history.push_back((now, self.total_cost_ns));
        while self.cost_history.len() > 2 && self.cost_history[1].0 + OVERHEAD_SPAN <= now {
            self.cost_history.pop_front();
        }
    }

    /// Estimated CPU of the probes over the last ~OVERHEAD_SPAN, in cores.
    pub(super) fn overhead(&self) -> f64 {
        match (self.cost_history.front(), self.cost_history.back()) {
            (Some(&(t0, c0)), Some(&(t1, c1))) if t1 > t0 => (c1 - c0) / (t1 - t0) as f64,
            _ => 0.0,
        }
    }
}
