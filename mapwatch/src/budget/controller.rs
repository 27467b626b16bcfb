//! The controller: each control step turns kernel hit counts into on-costs and shares
//! the budget out again; between steps it says which attaches and detaches are due,
//! hears back when they happened, and closes the cycles whose weights the aggregator
//! waits for.
use std::collections::BTreeMap;

use steps::{advance_cycle, cycle_weights, ends};

use super::{
    cost_scale::PerGroup,
    cycles::{
        CyclingSlots, DetachSpacing, MULTI_LINK_SPACING, Mark, PERF_EVENT_SPACING, cycle_fraction,
        plan_cycle,
    },
    groups::{GroupSpec, Priority, SlotHits},
    shares::{BudgetConfig, group_fractions, process_budgets},
    state::{Group, Mode, Process, Reading},
};
use crate::{
    aggregate::{Nanos, ScaleUpdate},
    discover::cpu::CpuTime,
    metrics::WorkloadLabels,
};

/// Attach or detach the slots of one group of a process (the task does it and reports
/// the times back with [`Controller::attached`] / [`Controller::detached`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Attach {
        pid: u32,
        group: &'static str,
        slots: Vec<u32>,
    },
    Detach {
        pid: u32,
        group: &'static str,
        slots: Vec<u32>,
    },
}

/// What the controller reports per process (for the gauges and `attach`'s summary).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessReport {
    pub pid: u32,
    pub labels: WorkloadLabels,
    /// Estimated CPU of the probes over the last ~60 s, in cores.
    pub overhead: f64,
    /// Estimated CPU of the probes since they were attached, ns, and over how long.
    pub total_cost_ns: f64,
    pub elapsed_ns: Nanos,
    /// (group, on-fraction of its last cycle; 1 = always on).
    pub duty: Vec<(&'static str, f64)>,
    /// (group, estimated CPU while attached, in cores; None until measured).
    pub on_cost: Vec<(&'static str, Option<f64>)>,
    /// (group, duty cycles finished so far; 0 = never duty-cycled).
    pub windows: Vec<(&'static str, u64)>,
    /// (group, share of the process's work it was attached for in its last cycle).
    pub observed: Vec<(&'static str, f64)>,
    /// What a hit costs this process, learned from its system time, as a factor on the
    /// calibrated cost (`cost_scale.rs`), for each group its probes have hit.
    pub cost_scale: Vec<(&'static str, f64)>,
}

/// What a hot group is assumed to cost while attached when its workload has no history:
/// a whole core, as in a loop that does little else than call the probed function. The
/// first window measures the real cost; guessing high only shortens that window.
pub const UNKNOWN_HOT_ON_COST: f64 = 1.0;

/// Whether a new process's group starts detached, at a guessed duty cycle, rather than
/// attached until measured: hot groups, when the budget is enforced and does not cover
/// the cost assumed of an unknown one (a budget of a whole core lets them start on).
pub fn starts_detached(group: &GroupSpec, config: &BudgetConfig) -> bool {
    config.enforce && group.priority == Priority::Hot && config.per_process < UNKNOWN_HOT_ON_COST
}

/// The slots of `groups` that [`starts_detached`] leaves detached at first: what
/// `Probes::attach_process` is told not to attach yet.
pub fn slots_detached_at_start(groups: &[GroupSpec], config: &BudgetConfig) -> Vec<u32> {
    groups
        .iter()
        .filter(|g| starts_detached(g, config))
        .flat_map(|g| g.slots.iter().map(|s| s.slot))
        .collect()
}

/// Workloads are remembered by their labels (namespace, pod, container, binary, Go
/// version); a pod's name changes with each replica, so without the pod.
fn history_key(labels: &WorkloadLabels) -> Vec<String> {
    let [namespace, _pod, container, binary, go_version] = labels.values();
    [namespace, container, binary, go_version]
        .iter()
        .map(|v| v.to_string())
        .collect()
}

pub struct Controller {
    config: BudgetConfig,
    processes: BTreeMap<u32, Process>,
    rng: fastrand::Rng,
    scale_updates: Vec<ScaleUpdate>,
    /// The last measured on-cost of each group, per workload ([`history_key`]), for
    /// the first cycles of its next process. Bounded by the workloads a node runs.
    history: BTreeMap<Vec<String>, BTreeMap<&'static str, f64>>,
    /// A group is attached as one link (uprobe_multi): its detach is one kernel
    /// unregistration, and cycles are spaced per group rather than per slot.
    group_links: bool,
}

impl Controller {
    pub fn new(config: BudgetConfig, seed: u64) -> Controller {
        Controller {
            config,
            processes: BTreeMap::new(),
            rng: fastrand::Rng::with_seed(seed),
            scale_updates: Vec::new(),
            history: BTreeMap::new(),
            group_links: false,
        }
    }

    /// Cycles spaced per group (each group is one link), not per slot.
    pub fn with_group_links(mut self, group_links: bool) -> Controller {
        self.group_links = group_links;
        self
    }

    pub fn config(&self) -> BudgetConfig {
        self.config
    }

    /// A new process, its kernel hit counters starting from 0: the groups for which
    /// [`starts_detached`] holds were not attached — each starts duty-cycled at a
    /// guessed fraction, its first window at a random time of its first cycle — and
    /// the others were all attached at `now`.
    ///
    /// The guess: what the group cost while attached in the workload's last process
    /// (the same binary restarted, another replica), else [`UNKNOWN_HOT_ON_COST`].
    /// Attached first and measured after, a hot group cost a growth-heavy loop its
    /// whole on-cost until the first control step (1.21× CPU over its first 15 s).
    ///
    /// `cpu`: the process's CPU time at `now`, where the work of its first cycles is
    /// counted from (its probes have no hits yet).
    pub fn add_process(
        &mut self,
        pid: u32,
        labels: WorkloadLabels,
        groups: Vec<GroupSpec>,
        now: Nanos,
        cpu: Option<CpuTime>,
    ) {
        let detached: Vec<bool> = groups
            .iter()
            .map(|g| starts_detached(g, &self.config))
            .collect();
        let known = self.history.get(&history_key(&labels)).cloned();
        let mut process = Process::new(labels, groups, now, self.config.per_process);
        let reading = cpu.map(|cpu| Reading {
            at: now,
            cpu,
            hits: Vec::new(),
        });
        let at_start = reading.map(|r| process.take_reading(None, &r));
        let cycling = self.cycling_detaches();
        let spacing = self.spacing();
        let in_process = process
            .groups
            .iter()
            .zip(&detached)
            .filter(|(_, d)| **d)
            .map(|(g, _)| g.detaches(self.group_links))
            .sum();
        for (group, _) in process
            .groups
            .iter_mut()
            .zip(&detached)
            .filter(|(_, d)| **d)
        {
            let on_cost = known
                .as_ref()
                .and_then(|k| k.get(group.name).copied())
                .unwrap_or(UNKNOWN_HOT_ON_COST);
            let fraction = (self.config.per_process / on_cost).min(1.0);
            let cycle = plan_cycle(
                &mut self.rng,
                now,
                fraction,
                CyclingSlots {
                    node: cycling,
                    process: in_process,
                    spacing,
                },
                false,
                0,
            )
            .starting_with(at_start);
            for slot in &mut group.slots {
                slot.attached_since = None;
            }
            self.scale_updates.push(ScaleUpdate::Hold {
                slots: group.slot_numbers(),
                from: now,
                planned_weight: cycle.planned_weight,
            });
            group.fraction = fraction;
            group.duty = cycle_fraction(&cycle);
            group.mode = Mode::Cycling(cycle);
        }
        self.processes.insert(pid, process);
    }

    /// The process is gone (its probes are detached by the caller). Closes its open
    /// cycles at `now` so the aggregator can weigh their records (by wall time: a
    /// process that is gone cannot be read).
    pub fn remove_process(&mut self, pid: u32, now: Nanos) -> Option<ProcessReport> {
        self.close_open_cycles(pid, now, None);
        let report = self.report_of(pid);
        if let Some(process) = self.processes.remove(&pid) {
            let measured: BTreeMap<&'static str, f64> = process
                .groups
                .iter()
                .filter_map(|g| Some((g.name, g.on_cost?)))
                .collect();
            if !measured.is_empty() {
                self.history
                    .entry(history_key(&process.labels))
                    .or_default()
                    .extend(measured);
            }
        }
        report
    }

    /// Closes every open cycle of `pid` at `now` (the process exits, or mapwatch
    /// stops), weighed by work if `reading` (taken at `now`) is given.
    pub fn close_open_cycles(&mut self, pid: u32, now: Nanos, reading: Option<&Reading>) {
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        let at_end = reading.map(|r| process.take_reading(None, r));
        let scale = process.cost_scale.scale();
        let marks: Vec<Option<Mark>> = process
            .groups
            .iter()
            .map(|g| reading.map(|r| process.mark(Some(g.name), r)))
            .collect();
        for (group, mark) in process.groups.iter_mut().zip(marks) {
            let Mode::Cycling(mut cycle) = group.mode else {
                continue;
            };
            if group.attached() {
                cycle.close_window(mark);
            }
            for slot in &mut group.slots {
                if let Some(since) = slot.attached_since.take() {
                    slot.on_in_cycle += now.saturating_sub(since.max(cycle.start));
                }
            }
            let weights = cycle_weights(group, &cycle, now, at_end, scale);
            self.scale_updates.push(ScaleUpdate::Close {
                weights,
                until: now,
                spread: 0,
            });
            group.windows += 1;
            group.mode = Mode::AlwaysOn;
        }
    }

    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.processes.keys().copied()
    }

    /// Every slot of every process (the task reads their kernel counters).
    pub fn slots(&self) -> Vec<u32> {
        self.processes
            .values()
            .flat_map(|p| p.groups.iter().flat_map(|g| g.slot_numbers()))
            .collect()
    }

    /// The CPU time `pid` has used so far (ns, user + system, probes included), for the
    /// budget relative to it (`BudgetConfig::share_of_process`). Call before `update`.
    pub fn process_cpu(&mut self, pid: u32, now: Nanos, cpu: CpuTime) {
        if let Some(process) = self.processes.get_mut(&pid) {
            process.add_cpu_time(now, cpu);
        }
    }

    /// A control step: the kernel's hit totals per slot (`hits`), the on-costs they
    /// imply, a new allocation of the budget, and groups moved between always-on and
    /// duty-cycled. Call every second or so.
    pub fn update(&mut self, now: Nanos, hits: &dyn Fn(u32) -> Option<SlotHits>) {
        for process in self.processes.values_mut() {
            let scale = process.cost_scale.scale();
            let mut cost_ns = 0.0;
            for (index, group) in process.groups.iter_mut().enumerate() {
                for slot in &mut group.slots {
                    let Some(total) = hits(slot.cost.slot) else {
                        continue;
                    };
                    let delta = total.since(slot.last);
                    slot.last = total;
                    cost_ns += slot.cost.believed(delta) * scale.of(index);
                    // The on-cost is what the group costs while attached: its windows'
                    // hits only (paused traps come with opening and closing them).
                    slot.pending_hits += delta.recorded;
                    if let Some(since) = slot.attached_since {
                        slot.pending_on += now.saturating_sub(since);
                        slot.attached_since = Some(now);
                        // What was just moved into pending_on is attached time of the
                        // cycle too (the rest is added when the window closes).
                        if let Mode::Cycling(cycle) = group.mode {
                            slot.on_in_cycle += now.saturating_sub(since.max(cycle.start));
                        }
                    }
                }
                group.measure_on_cost(scale.of(index));
            }
            process.add_cost(now, cost_ns);
            let cpu_now = process.cpu_history.back().filter(|&&(t, _)| t == now);
            let reading = cpu_now.map(|&(at, cpu)| Reading {
                at,
                cpu,
                hits: process
                    .groups
                    .iter()
                    .flat_map(|g| &g.slots)
                    .map(|s| (s.cost.slot, s.last))
                    .collect(),
            });
            process.last_mark = reading.map(|r| process.take_reading(None, &r));
        }
        self.allocate();
        if self.config.enforce {
            self.start_cycles(now);
        }
    }

    /// Shares the budgets: node → processes → groups (rare first).
    fn allocate(&mut self) {
        let config = self.config;
        let demands: Vec<f64> = self.processes.values().map(Process::demand).collect();
        let limits: Vec<f64> = self.processes.values().map(|p| p.limit(&config)).collect();
        let budgets = process_budgets(config.node, &demands, &limits);
        for (process, budget) in self.processes.values_mut().zip(budgets) {
            process.budget = budget;
            let groups: Vec<_> = process
                .groups
                .iter()
                .map(|g| (g.priority, g.on_cost))
                .collect();
            let fractions = group_fractions(budget, &groups);
            for (group, fraction) in process.groups.iter_mut().zip(fractions) {
                group.fraction = fraction;
            }
        }
    }

    /// Moves over-budget always-on groups into duty cycles (their first window is now:
    /// they are attached already).
    fn start_cycles(&mut self, now: Nanos) {
        let cycling = self.cycling_detaches();
        let group_links = self.group_links;
        let spacing = self.spacing();
        let starts =
            |group: &Group| group.mode == Mode::AlwaysOn && group.fraction < 1.0 && !group.busy;
        for process in self.processes.values_mut() {
            // The groups that start cycling now count too: their detaches begin now.
            let in_process = process.cycling_detaches(group_links)
                + process
                    .groups
                    .iter()
                    .filter(|g| starts(g))
                    .map(|g| g.detaches(group_links))
                    .sum::<usize>();
            for (index, group) in process.groups.iter_mut().enumerate() {
                if !starts(group) {
                    continue;
                }
                let mut cycle = plan_cycle(
                    &mut self.rng,
                    now,
                    group.fraction,
                    CyclingSlots {
                        node: cycling,
                        process: in_process,
                        spacing,
                    },
                    true,
                    group.overrun,
                )
                .starting_with(process.last_mark);
                cycle.opened = true;
                let group_cost = group.cost_so_far();
                cycle.open_window(process.last_mark.map(|mark| Mark {
                    group: PerGroup::only(index, group_cost),
                    ..mark
                }));
                for slot in &mut group.slots {
                    slot.on_in_cycle = 0;
                    if slot.attached_since.is_some() {
                        slot.attached_since = Some(now);
                    }
                }
                self.scale_updates.push(ScaleUpdate::Hold {
                    slots: group.slot_numbers(),
                    from: now,
                    planned_weight: cycle.planned_weight,
                });
                group.duty = cycle_fraction(&cycle);
                group.mode = Mode::Cycling(cycle);
            }
        }
    }

    /// How far apart detaches are kept with this link kind.
    fn spacing(&self) -> DetachSpacing {
        if self.group_links {
            MULTI_LINK_SPACING
        } else {
            PERF_EVENT_SPACING
        }
    }

    fn cycling_detaches(&self) -> usize {
        self.processes
            .values()
            .map(|p| p.cycling_detaches(self.group_links))
            .sum()
    }

    /// The attaches and detaches due at `now`, and cycles that ended. `read` reads a
    /// process (pid, its slots) at `now`, for the weights by work of the cycles that end.
    pub fn due(
        &mut self,
        now: Nanos,
        read: &mut dyn FnMut(u32, &[u32]) -> Option<Reading>,
    ) -> Vec<Action> {
        let cycling = self.cycling_detaches();
        let group_links = self.group_links;
        let spacing = self.spacing();
        let mut actions = Vec::new();
        for (&pid, process) in &mut self.processes {
            let cycling = CyclingSlots {
                node: cycling,
                process: process.cycling_detaches(group_links),
                spacing,
            };
            let mark_now = if process.groups.iter().any(|g| ends(g, now)) {
                read(pid, &process.slot_numbers()).map(|r| process.take_reading(None, &r))
            } else {
                None
            };
            let scale = process.cost_scale.scale();
            for group in &mut process.groups {
                if group.busy {
                    continue;
                }
                let Mode::Cycling(cycle) = group.mode else {
                    continue;
                };
                let step = advance_cycle(
                    group,
                    cycle,
                    now,
                    (mark_now, scale),
                    cycling,
                    &mut self.rng,
                    &mut self.scale_updates,
                );
                if let Some(step) = step {
                    // Busy until the task reports the attach or detach back.
                    group.busy = true;
                    actions.push(step.action(pid, group));
                }
            }
        }
        actions
    }

    /// When [`Controller::due`] next has something to do (None: nothing planned).
    pub fn next_due(&self) -> Option<Nanos> {
        self.processes
            .values()
            .flat_map(|p| &p.groups)
            .filter(|g| !g.busy)
            .filter_map(|g| match g.mode {
                Mode::AlwaysOn => None,
                Mode::Cycling(c) if !c.opened => Some(c.window_from),
                Mode::Cycling(c) if !c.closed => Some(c.window_until),
                Mode::Cycling(c) => Some(c.end),
            })
            .min()
    }

    /// The task attached `slots` of a group; each entry: when that slot's probe may
    /// have started recording (right before the attach call), or None if it failed.
    /// `reading`: the process read then.
    pub fn attached(
        &mut self,
        pid: u32,
        group: &str,
        slots: &[(u32, Option<Nanos>)],
        reading: Option<&Reading>,
    ) {
        let mark = self.learn_and_mark(pid, group, reading);
        let Some(group) = self.group_mut(pid, group) else {
            return;
        };
        group.busy = false;
        for &(slot, at) in slots {
            if let Some(state) = group.slots.iter_mut().find(|s| s.cost.slot == slot) {
                state.attached_since = at;
            }
        }
        // An attach that came late (uprobe registration can wait for the kernel under
        // load) still gets its whole window: a window of a fraction of a millisecond
        // would give its records weights in the thousands.
        let started = slots.iter().filter_map(|&(_, at)| at).max();
        if let (Mode::Cycling(cycle), Some(started)) = (&mut group.mode, started) {
            let length = cycle.window_until - cycle.window_from;
            let late = (started + length).saturating_sub(cycle.window_until);
            cycle.window_until += late;
            cycle.end += late;
            cycle.open_window(mark);
        }
    }

    /// The task detached `slots` of a group; each entry: when that slot's probe
    /// stopped recording for sure (its link closed). `reading`: the process read then.
    pub fn detached(
        &mut self,
        pid: u32,
        group: &str,
        slots: &[(u32, Nanos)],
        reading: Option<&Reading>,
    ) {
        let mark = self.learn_and_mark(pid, group, reading);
        let Some(group) = self.group_mut(pid, group) else {
            return;
        };
        group.busy = false;
        let cycle_start = match &mut group.mode {
            Mode::Cycling(c) => {
                c.close_window(mark);
                c.start
            }
            Mode::AlwaysOn => 0,
        };
        for &(slot, at) in slots {
            if let Some(state) = group.slots.iter_mut().find(|s| s.cost.slot == slot)
                && let Some(since) = state.attached_since.take()
            {
                state.pending_on += at.saturating_sub(since);
                state.on_in_cycle += at.saturating_sub(since.max(cycle_start));
            }
        }
    }

    /// `group`'s window marked by `reading` (the per-hit cost learns from it too).
    fn learn_and_mark(&mut self, pid: u32, group: &str, reading: Option<&Reading>) -> Option<Mark> {
        Some(
            self.processes
                .get_mut(&pid)?
                .take_reading(Some(group), reading?),
        )
    }

    /// Every slot of `pid`: what a [`Reading`] of it reads the hits of.
    pub fn process_slots(&self, pid: u32) -> Vec<u32> {
        self.processes
            .get(&pid)
            .map(Process::slot_numbers)
            .unwrap_or_default()
    }

    fn group_mut(&mut self, pid: u32, name: &str) -> Option<&mut Group> {
        self.processes
            .get_mut(&pid)?
            .groups
            .iter_mut()
            .find(|g| g.name == name)
    }

    /// Updates for the aggregator since the last call.
    pub fn take_scale_updates(&mut self) -> Vec<ScaleUpdate> {
        std::mem::take(&mut self.scale_updates)
    }

    pub fn reports(&self, now: Nanos) -> Vec<ProcessReport> {
        self.processes
            .keys()
            .filter_map(|&pid| self.report_of(pid))
            .map(|mut r| {
                r.elapsed_ns = now.saturating_sub(self.processes[&r.pid].since);
                r
            })
            .collect()
    }

    fn report_of(&self, pid: u32) -> Option<ProcessReport> {
        let process = self.processes.get(&pid)?;
        let elapsed = process
            .cost_history
            .back()
            .map_or(0, |&(t, _)| t.saturating_sub(process.since));
        Some(ProcessReport {
            pid,
            labels: process.labels.clone(),
            overhead: process.overhead(),
            total_cost_ns: process.total_cost_ns,
            elapsed_ns: elapsed,
            duty: process.groups.iter().map(|g| (g.name, g.duty)).collect(),
            on_cost: process.groups.iter().map(|g| (g.name, g.on_cost)).collect(),
            windows: process.groups.iter().map(|g| (g.name, g.windows)).collect(),
            cost_scale: {
                let scale = process.cost_scale.scale();
                (process.groups.iter().enumerate())
                    .filter(|(_, g)| g.cost_so_far() > 0.0)
                    .map(|(index, g)| (g.name, scale.of(index)))
                    .collect()
            },
            observed: process
                .groups
                .iter()
                .map(|g| (g.name, g.observed))
                .collect(),
        })
    }
}

mod steps;
#[cfg(test)]
mod tests;
