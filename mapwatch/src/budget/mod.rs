//! The overhead budget: kernel hit counts → estimated CPU cost of the probes → which
//! probe groups are attached when (duty cycles) → the weights that scale their records.
//!
//! Pure: no clock, no kernel. [`task`] reads the counters, attaches and detaches, and
//! passes the times it measured back in; every time here is CLOCK_MONOTONIC in
//! nanoseconds, the clock of `bpf_ktime_get_ns` that stamps the records.
//!
//! How it works, per process:
//! - Each probe group (all slots of one signal: growslice entry + its RETs, the STW pair,
//!   …) has an *on-cost*: the CPU its probes cost per second while attached, measured as
//!   kernel hits × the per-hit cost of the probed instruction (calibrated at start-up)
//!   over the time the group was attached.
//! - The process budget (the smaller of a share of one core and a share of the
//!   process's own CPU use) goes first to the rare groups (map growth, make(map), STW,
//!   GC), then to the hot ones (growslice, mapassign, mallocgc), shared by
//!   water-filling: a group that needs less than an equal share keeps all it needs.
//!   When the rare groups alone need more than the budget, all groups share it alike.
//!   With the node-wide budget set, processes share it the same way first.
//! - A group whose share is below its on-cost is duty-cycled: attached for a window of
//!   `fraction × cycle`, detached for the rest. Cycle length and window phase are random,
//!   so work that repeats with a period is not aliased. The kernel closes a group's
//!   links one by one (~100 ms each), so slots stay attached past the window: that
//!   overrun is measured per cycle and the next windows are planned shorter by it.
//! - Records of a duty-cycled slot weigh cycle length / the time the slot really was
//!   attached in that cycle (measured from the attach and detach calls, not planned):
//!   [`ScaleUpdate`] tells the aggregator, which holds the records of an open cycle until
//!   its weight is known.
pub mod task;

use std::collections::{BTreeMap, VecDeque};

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use mapwatch_common::ProbeKind;

use crate::{
    aggregate::{Nanos, ScaleUpdate},
    metrics::WorkloadLabels,
    plan::ProbePlan,
};

const SECOND: Nanos = 1_000_000_000;
const MILLISECOND: Nanos = 1_000_000;

/// How the kernel runs the probed instruction, which sets most of a hit's cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteClass {
    /// The kernel emulates it (PUSH, as Go's first instruction after the stack check
    /// usually is): the trap and the BPF program only.
    Emulated,
    /// Copied out and single-stepped (RET, SUB, MOV, …): a second trap, ~4× the cost.
    SingleStepped,
}

/// The class of the instruction `bytes` (the probed instruction, as the plan saw it).
/// Only PUSH counts as emulated: it is the one emulated instruction the calibration
/// measures, and taking anything unknown as single-stepped errs on the safe side
/// (a cost overestimated means more duty-cycling, never a budget exceeded).
pub fn site_class(bytes: &[u8]) -> SiteClass {
    let mut decoder = Decoder::new(64, bytes, DecoderOptions::NONE);
    let instruction = decoder.decode();
    if !instruction.is_invalid() && instruction.mnemonic() == Mnemonic::Push {
        SiteClass::Emulated
    } else {
        SiteClass::SingleStepped
    }
}

/// CPU per probe hit, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HitCost {
    pub emulated_ns: f64,
    pub single_stepped_ns: f64,
    /// Each struct field the probe reads from the target's memory (hardened usercopy
    /// checks make a read ~100 ns here).
    pub per_read_ns: f64,
}

impl HitCost {
    /// Used when the calibration could not run: mapwatch's probe measured in a Go loop
    /// on a 2-vCPU VM (~1.7–2.6 µs after the stack check; a RET adds ~4 µs of single
    /// step), rounded up.
    pub const FALLBACK: HitCost = HitCost {
        emulated_ns: 2500.0,
        single_stepped_ns: 7000.0,
        per_read_ns: 200.0,
    };

    /// What a hit costs a real Go program beyond what the calibration sees: the
    /// calibration calls an empty function in a loop, while Go code between two hits
    /// has its caches and TLB to refill after each trap. Measured on a 2-vCPU VM
    /// (tests/budget.rs, growslice in a Go loop vs /proc/PID/stat): the Go program's
    /// extra CPU was 1.5–1.7× the calibrated cost (2.2–2.5 µs vs 1.47 µs per hit).
    /// An estimate, not a law: tests/budget.rs reports the ratio it finds.
    pub const INDIRECT_FACTOR: f64 = 1.55;

    /// From the calibration (`attach::calibration`): ns per hit of mapwatch's program
    /// in mapwatch's own code, scaled by [`HitCost::INDIRECT_FACTOR`].
    pub fn measured(emulated_ns: f64, single_stepped_ns: f64, per_read_ns: f64) -> HitCost {
        HitCost {
            emulated_ns: emulated_ns * Self::INDIRECT_FACTOR,
            single_stepped_ns: single_stepped_ns * Self::INDIRECT_FACTOR,
            per_read_ns: per_read_ns * Self::INDIRECT_FACTOR,
        }
    }

    /// A hit at an instruction of `class` by a probe that reads `reads` struct fields.
    pub fn of(&self, class: SiteClass, reads: usize) -> f64 {
        let trap = match class {
            SiteClass::Emulated => self.emulated_ns,
            SiteClass::SingleStepped => self.single_stepped_ns,
        };
        trap + reads as f64 * self.per_read_ns
    }
}

/// Which share of the budget a group draws from first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Rare signals (map growth, make(map), STW, GC): served first, so they stay always
    /// on unless they alone exceed the budget.
    Rare,
    /// Functions hot code calls millions of times a second.
    Hot,
}

/// The group a probe belongs to (the `probe` label of `mapwatch_probe_duty_cycle_ratio`)
/// and its priority. Slots that work together (an entry and its RETs, growsliceBuf that
/// names growslice's call site, the STW pair) are attached and detached together.
pub fn group_of(kind: ProbeKind) -> (&'static str, Priority) {
    match kind {
        ProbeKind::GrowsliceEntry | ProbeKind::GrowsliceRet | ProbeKind::GrowsliceBufEntry => {
            ("growslice", Priority::Hot)
        }
        ProbeKind::MapAssignEntry | ProbeKind::MapAssignHash | ProbeKind::MapAssignRet => {
            ("mapassign_fast64", Priority::Hot)
        }
        ProbeKind::Mallocgc | ProbeKind::MallocgcSpecialized => ("mallocgc", Priority::Hot),
        ProbeKind::HashGrow
        | ProbeKind::MapGrowToSmall
        | ProbeKind::MapGrowToTable
        | ProbeKind::MapTableGrow
        | ProbeKind::MapTableSplit => ("map_growth", Priority::Rare),
        ProbeKind::MakeMap | ProbeKind::MakeMapSmall => ("makemap", Priority::Rare),
        ProbeKind::StartTheWorldEntry
        | ProbeKind::StartTheWorldRet
        | ProbeKind::StopTheWorldEntry => ("stw", Priority::Rare),
        ProbeKind::GcMarkTermination => ("gc", Priority::Rare),
        ProbeKind::None => ("none", Priority::Rare),
    }
}

/// One slot of a group and what each of its hits costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlotCost {
    pub slot: u32,
    pub per_hit_ns: f64,
}

/// The probes of one process, grouped.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    pub name: &'static str,
    pub priority: Priority,
    pub slots: Vec<SlotCost>,
}

/// Groups for the probes of `plan` attached at `slots` (in order).
pub fn groups_for_plan(plan: &ProbePlan, slots: &[u32], cost: HitCost) -> Vec<GroupSpec> {
    groups_for(
        plan.probes.iter().zip(slots).map(|(probe, &slot)| {
            // The spec's field reads. Not counted: the walks whose length depends on the
            // map (a Swiss directory at table growth, a mapassign group's slots).
            let reads = probe.spec.loads.iter().filter(|l| l.is_enabled()).count();
            (slot, probe.kind, probe.expected_bytes.as_slice(), reads)
        }),
        cost,
    )
}

/// Groups for probes given as (slot, kind, probed instruction bytes, struct fields
/// read), in first-seen order.
pub fn groups_for<'a>(
    probes: impl IntoIterator<Item = (u32, ProbeKind, &'a [u8], usize)>,
    cost: HitCost,
) -> Vec<GroupSpec> {
    let mut groups: Vec<GroupSpec> = Vec::new();
    for (slot, kind, bytes, reads) in probes {
        let (name, priority) = group_of(kind);
        let slot = SlotCost {
            slot,
            per_hit_ns: cost.of(site_class(bytes), reads),
        };
        match groups.iter_mut().find(|g| g.name == name) {
            Some(group) => group.slots.push(slot),
            None => groups.push(GroupSpec {
                name,
                priority,
                slots: vec![slot],
            }),
        }
    }
    groups
}

/// Shares `budget` among `demands` by water-filling: every demand gets at most an equal
/// share; what small demands leave is shared again among the others.
pub fn water_fill(budget: f64, demands: &[f64]) -> Vec<f64> {
    let mut given = vec![0.0; demands.len()];
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by(|&a, &b| demands[a].total_cmp(&demands[b]));
    let mut left = budget.max(0.0);
    for (served, &i) in order.iter().enumerate() {
        let share = left / (order.len() - served) as f64;
        given[i] = demands[i].max(0.0).min(share);
        left -= given[i];
    }
    given
}

/// The controller's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// CPU the probes of one process may cost, in cores (0.01 = 1% of one core).
    pub per_process: f64,
    /// And at most this share of the process's own CPU use (0.01 = 1%): a service
    /// that keeps half a core busy gets half of `per_process`. None: no such limit.
    pub share_of_process: Option<f64>,
    /// CPU the probes of all processes may cost together, in cores.
    pub node: Option<f64>,
    /// false: every probe stays attached (`attach --exact`, or `attach` without
    /// `--overhead-budget`); costs are still measured and reported.
    pub enforce: bool,
}

/// Tuning of duty cycles.
mod tuning {
    use super::{MILLISECOND, Nanos, SECOND};
    /// Shortest attached window to aim for: attaching takes 1–10 ms here, and the
    /// window must hold enough hits to measure the on-cost.
    pub const MIN_WINDOW: Nanos = 50 * MILLISECOND;
    /// Cycle lengths (before the ±50% randomization). Detaching takes ~100 ms of
    /// blocking-pool time per probe: cycles are seconds, not milliseconds.
    pub const MIN_CYCLE: Nanos = SECOND;
    /// Long enough for ~10 cycling slots of one process at PROCESS_DETACH_SPACING.
    pub const MAX_CYCLE: Nanos = 40 * SECOND;
    /// The kernel serializes uprobe detaches (~100 ms each, measured): the node's
    /// duty-cycled slots together should not need more than about half of that time.
    pub const DETACH_SPACING: Nanos = 200 * MILLISECOND;
    /// While the link of a probe that the process keeps hitting is closed (~100 ms),
    /// the process runs slowed down — not for want of CPU: with no hits it does not
    /// happen. Measured (BENCHMARKS.md, "What duty cycles do to tail latency", 3
    /// rounds): the JSON service's p99 was ~7.2 ms with one such detach every 0.5 s and
    /// ~3.3 ms every 1 s; every 2 s and 4 s it stayed within the spread of runs without a
    /// probe (1.0–4.4 ms in that noisy run; a quieter hand run of 3 rounds: 1.1–1.3 ms
    /// without a probe, 1.3–1.9 ms every 2 s, 1.0–1.1 ms every 4 s). So a process's
    /// duty-cycled slots are spaced this far apart.
    pub const PROCESS_DETACH_SPACING: Nanos = 4 * SECOND;
    /// No group is cycled below this fraction: it must still be seen to be measured.
    pub const MIN_FRACTION: f64 = 0.001;
    /// Attached time needed before a measurement of the on-cost counts.
    pub const MIN_MEASURED_ON: Nanos = 20 * MILLISECOND;
    /// A lower on-cost measurement moves the estimate this far towards it (a higher one
    /// replaces it at once: over budget is corrected fast, recovery is gradual).
    pub const DECAY: f64 = 0.3;
    /// Span of the exported overhead estimate: a sliding average that holds at least
    /// one whole cycle (up to MAX_CYCLE × 1.5), or it would swing with each window.
    pub const OVERHEAD_SPAN: Nanos = 60 * SECOND;
    /// Span over which a process's own CPU use is measured (for `--overhead-share`).
    pub const CPU_SPAN: Nanos = 20 * SECOND;
}
pub use tuning::MIN_FRACTION;

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

#[derive(Debug, Clone)]
struct SlotState {
    cost: SlotCost,
    last_hits: u64,
    /// When its probe (re)started recording; None while detached.
    attached_since: Option<Nanos>,
    /// Attached time and hits not yet turned into an on-cost measurement.
    pending_on: Nanos,
    pending_hits: u64,
    /// Attached time within the current cycle.
    on_in_cycle: Nanos,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Cycle {
    start: Nanos,
    end: Nanos,
    window_from: Nanos,
    window_until: Nanos,
    /// The window was opened (attach requested) / closed (detach requested).
    opened: bool,
    closed: bool,
    planned_weight: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    AlwaysOn,
    Cycling(Cycle),
}

#[derive(Debug, Clone)]
struct Group {
    name: &'static str,
    priority: Priority,
    slots: Vec<SlotState>,
    /// CPU (cores) the group costs while attached; None until measured.
    on_cost: Option<f64>,
    /// The fraction of time it may be attached, from the last allocation.
    fraction: f64,
    mode: Mode,
    /// An attach or detach of this group is under way.
    busy: bool,
    /// On-fraction of the last finished cycle (1 while always on; the planned fraction
    /// until the first cycle ends, which can take a minute: cycles are long).
    duty: f64,
    /// Cycles finished so far.
    windows: u64,
    /// Attached time per slot beyond the planned window, averaged over recent cycles.
    overrun: Nanos,
}

impl Group {
    fn slot_numbers(&self) -> Vec<u32> {
        self.slots.iter().map(|s| s.cost.slot).collect()
    }

    fn attached(&self) -> bool {
        self.slots.iter().any(|s| s.attached_since.is_some())
    }
}

#[derive(Debug, Clone)]
struct Process {
    labels: WorkloadLabels,
    groups: Vec<Group>,
    /// (time, cumulative estimated CPU ns of all probes), oldest first.
    cost_history: VecDeque<(Nanos, f64)>,
    total_cost_ns: f64,
    since: Nanos,
    budget: f64,
    /// (time, the process's CPU time in ns), oldest first, over ~CPU_SPAN.
    cpu_history: VecDeque<(Nanos, u64)>,
}

impl Process {
    fn cycling_slots(&self) -> usize {
        self.groups
            .iter()
            .filter(|g| matches!(g.mode, Mode::Cycling(_)))
            .map(|g| g.slots.len())
            .sum()
    }

    /// The process's CPU use over the last ~20 s, in cores; None until measured twice.
    fn cpu_rate(&self) -> Option<f64> {
        match (self.cpu_history.front(), self.cpu_history.back()) {
            (Some(&(t0, c0)), Some(&(t1, c1))) if t1 > t0 => {
                Some(c1.saturating_sub(c0) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        }
    }

    /// What the probes of this process may cost, in cores.
    fn limit(&self, config: &BudgetConfig) -> f64 {
        match (config.share_of_process, self.cpu_rate()) {
            (Some(share), Some(rate)) => config.per_process.min(share * rate),
            _ => config.per_process,
        }
    }

    fn overhead(&self) -> f64 {
        match (self.cost_history.front(), self.cost_history.back()) {
            (Some(&(t0, c0)), Some(&(t1, c1))) if t1 > t0 => (c1 - c0) / (t1 - t0) as f64,
            _ => 0.0,
        }
    }
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
}

pub struct Controller {
    config: BudgetConfig,
    processes: BTreeMap<u32, Process>,
    rng: fastrand::Rng,
    scale_updates: Vec<ScaleUpdate>,
}

impl Controller {
    pub fn new(config: BudgetConfig, seed: u64) -> Controller {
        Controller {
            config,
            processes: BTreeMap::new(),
            rng: fastrand::Rng::with_seed(seed),
            scale_updates: Vec::new(),
        }
    }

    pub fn config(&self) -> BudgetConfig {
        self.config
    }

    /// A process whose probes were all attached at `now`, with its kernel hit counters at
    /// `hits(slot)` (0 for new slots).
    pub fn add_process(
        &mut self,
        pid: u32,
        labels: WorkloadLabels,
        groups: Vec<GroupSpec>,
        now: Nanos,
    ) {
        let groups = groups
            .into_iter()
            .map(|spec| Group {
                name: spec.name,
                priority: spec.priority,
                slots: spec
                    .slots
                    .into_iter()
                    .map(|cost| SlotState {
                        cost,
                        last_hits: 0,
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
            })
            .collect();
        self.processes.insert(
            pid,
            Process {
                labels,
                groups,
                cost_history: VecDeque::from([(now, 0.0)]),
                total_cost_ns: 0.0,
                since: now,
                budget: self.config.per_process,
                cpu_history: VecDeque::new(),
            },
        );
    }

    /// The process is gone (its probes are detached by the caller). Closes its open
    /// cycles at `now` so the aggregator can weigh their records.
    pub fn remove_process(&mut self, pid: u32, now: Nanos) -> Option<ProcessReport> {
        self.close_open_cycles(pid, now);
        let report = self.report_of(pid);
        self.processes.remove(&pid);
        report
    }

    /// Closes every open cycle of `pid` at `now` (the process exits, or mapwatch stops).
    pub fn close_open_cycles(&mut self, pid: u32, now: Nanos) {
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        for group in &mut process.groups {
            let Mode::Cycling(cycle) = group.mode else {
                continue;
            };
            for slot in &mut group.slots {
                if let Some(since) = slot.attached_since.take() {
                    slot.on_in_cycle += now.saturating_sub(since.max(cycle.start));
                }
            }
            let weights = close_weights(group, cycle.start, now);
            self.scale_updates.push(ScaleUpdate::Close {
                weights,
                until: now,
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
    pub fn process_cpu(&mut self, pid: u32, now: Nanos, cpu_ns: u64) {
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        process.cpu_history.push_back((now, cpu_ns));
        while process.cpu_history.len() > 2 && process.cpu_history[1].0 + tuning::CPU_SPAN <= now {
            process.cpu_history.pop_front();
        }
    }

    /// A control step: the kernel's hit totals per slot (`hits`), the on-costs they
    /// imply, a new allocation of the budget, and groups moved between always-on and
    /// duty-cycled. Call every second or so.
    pub fn update(&mut self, now: Nanos, hits: &dyn Fn(u32) -> Option<u64>) {
        for process in self.processes.values_mut() {
            let mut cost_ns = 0.0;
            for group in &mut process.groups {
                for slot in &mut group.slots {
                    let Some(total) = hits(slot.cost.slot) else {
                        continue;
                    };
                    let delta = total.saturating_sub(slot.last_hits);
                    slot.last_hits = total;
                    cost_ns += delta as f64 * slot.cost.per_hit_ns;
                    slot.pending_hits += delta;
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
                measure_on_cost(group);
            }
            process.total_cost_ns += cost_ns;
            process.cost_history.push_back((now, process.total_cost_ns));
            while process.cost_history.len() > 2
                && process.cost_history[1].0 + tuning::OVERHEAD_SPAN <= now
            {
                process.cost_history.pop_front();
            }
        }
        self.allocate();
        if self.config.enforce {
            self.start_cycles(now);
        }
    }

    /// Shares the budgets: node → processes → groups (rare first).
    fn allocate(&mut self) {
        let demand = |p: &Process| -> f64 { p.groups.iter().filter_map(|g| g.on_cost).sum() };
        let config = self.config;
        let limits: Vec<f64> = self.processes.values().map(|p| p.limit(&config)).collect();
        let budgets: Vec<f64> = match self.config.node {
            Some(node) => {
                let demands: Vec<f64> = self
                    .processes
                    .values()
                    .zip(&limits)
                    .map(|(p, &limit)| demand(p).min(limit))
                    .collect();
                let shares = water_fill(node, &demands);
                // A process under its share may use up to the per-process budget: its
                // demand may grow before the next step.
                let spare = node - shares.iter().sum::<f64>();
                shares
                    .iter()
                    .zip(&demands)
                    .zip(&limits)
                    .map(|((&share, &d), &limit)| {
                        if share >= d {
                            (share + spare / demands.len().max(1) as f64).min(limit)
                        } else {
                            share
                        }
                    })
                    .collect()
            }
            None => limits,
        };
        for (process, budget) in self.processes.values_mut().zip(budgets) {
            process.budget = budget;
            let mut left = budget;
            // Rare groups are served first only while they are rare: when they alone
            // exceed the budget (map growth in a service that builds maps per request),
            // every group shares it alike, so slice growth is still seen.
            let rare_demand: f64 = process
                .groups
                .iter()
                .filter(|g| g.priority == Priority::Rare)
                .filter_map(|g| g.on_cost)
                .sum();
            let passes: &[&[Priority]] = if rare_demand <= budget {
                &[&[Priority::Rare], &[Priority::Hot]]
            } else {
                &[&[Priority::Rare, Priority::Hot]]
            };
            for priorities in passes {
                let members: Vec<usize> = (0..process.groups.len())
                    .filter(|&i| priorities.contains(&process.groups[i].priority))
                    .collect();
                let demands: Vec<f64> = members
                    .iter()
                    .map(|&i| process.groups[i].on_cost.unwrap_or(0.0))
                    .collect();
                let shares = water_fill(left, &demands);
                left -= shares.iter().sum::<f64>();
                for ((&i, share), demand) in members.iter().zip(shares).zip(demands) {
                    process.groups[i].fraction = if demand <= 0.0 || share >= demand {
                        1.0
                    } else {
                        (share / demand).max(MIN_FRACTION)
                    };
                }
            }
        }
    }

    /// Moves over-budget always-on groups into duty cycles (their first window is now:
    /// they are attached already).
    fn start_cycles(&mut self, now: Nanos) {
        let cycling = self.cycling_slots();
        let starts =
            |group: &Group| group.mode == Mode::AlwaysOn && group.fraction < 1.0 && !group.busy;
        for process in self.processes.values_mut() {
            // The groups that start cycling now count too: their detaches begin now.
            let in_process = process.cycling_slots()
                + process
                    .groups
                    .iter()
                    .filter(|g| starts(g))
                    .map(|g| g.slots.len())
                    .sum::<usize>();
            for group in &mut process.groups {
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
                    },
                    true,
                    group.overrun,
                );
                cycle.opened = true;
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

    fn cycling_slots(&self) -> usize {
        self.processes.values().map(Process::cycling_slots).sum()
    }

    /// The attaches and detaches due at `now`, and cycles that ended.
    pub fn due(&mut self, now: Nanos) -> Vec<Action> {
        let cycling = self.cycling_slots();
        let mut actions = Vec::new();
        for (&pid, process) in &mut self.processes {
            let in_process = process.cycling_slots();
            for group in &mut process.groups {
                if group.busy {
                    continue;
                }
                let Mode::Cycling(mut cycle) = group.mode else {
                    continue;
                };
                let attached = group.attached();
                if !cycle.opened && now >= cycle.window_from {
                    cycle.opened = true;
                    group.mode = Mode::Cycling(cycle);
                    group.busy = true;
                    actions.push(Action::Attach {
                        pid,
                        group: group.name,
                        slots: group.slot_numbers(),
                    });
                } else if cycle.opened && !cycle.closed && now >= cycle.window_until {
                    cycle.closed = true;
                    group.mode = Mode::Cycling(cycle);
                    if attached {
                        group.busy = true;
                        actions.push(Action::Detach {
                            pid,
                            group: group.name,
                            slots: group.slot_numbers(),
                        });
                    }
                } else if cycle.closed && !attached && now >= cycle.end {
                    // A detach that finished late stretches the cycle to its end: the
                    // cycle always contains its window.
                    let weights = close_weights(group, cycle.start, now);
                    let attached_ns: Nanos = group.slots.iter().map(|s| s.on_in_cycle).sum();
                    let per_slot = attached_ns / group.slots.len().max(1) as Nanos;
                    group.duty = per_slot as f64 / now.saturating_sub(cycle.start).max(1) as f64;
                    let planned = cycle.window_until - cycle.window_from;
                    group.overrun = (group.overrun + per_slot.saturating_sub(planned)) / 2;
                    self.scale_updates.push(ScaleUpdate::Close {
                        weights,
                        until: now,
                    });
                    group.windows += 1;
                    for slot in &mut group.slots {
                        slot.on_in_cycle = 0;
                    }
                    if group.fraction >= 1.0 {
                        group.mode = Mode::AlwaysOn;
                        group.duty = 1.0;
                        group.busy = true;
                        self.scale_updates.push(ScaleUpdate::Release {
                            slots: group.slot_numbers(),
                            from: now,
                        });
                        actions.push(Action::Attach {
                            pid,
                            group: group.name,
                            slots: group.slot_numbers(),
                        });
                    } else {
                        let next = plan_cycle(
                            &mut self.rng,
                            now,
                            group.fraction,
                            CyclingSlots {
                                node: cycling,
                                process: in_process,
                            },
                            false,
                            group.overrun,
                        );
                        group.mode = Mode::Cycling(next);
                        if now >= next.window_from {
                            // Degenerate plan (no off time before the window): open now.
                            let mut next = next;
                            next.opened = true;
                            group.mode = Mode::Cycling(next);
                            group.busy = true;
                            actions.push(Action::Attach {
                                pid,
                                group: group.name,
                                slots: group.slot_numbers(),
                            });
                        }
                    }
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

    /// The task attached `slots` of a group; each entry: when that slot's probe started
    /// recording (the attach call returned), or None if it failed.
    pub fn attached(&mut self, pid: u32, group: &str, slots: &[(u32, Option<Nanos>)]) {
        let Some(group) = self.group_mut(pid, group) else {
            return;
        };
        group.busy = false;
        for &(slot, at) in slots {
            if let Some(state) = group.slots.iter_mut().find(|s| s.cost.slot == slot) {
                state.attached_since = at;
            }
        }
        // An attach that came late (uprobe registration can wait ~1 s for the kernel
        // under load, measured) still gets its whole window: a window of a fraction of
        // a millisecond would give its records weights in the thousands.
        let started = slots.iter().filter_map(|&(_, at)| at).max();
        if let (Mode::Cycling(cycle), Some(started)) = (&mut group.mode, started) {
            let length = cycle.window_until - cycle.window_from;
            let late = (started + length).saturating_sub(cycle.window_until);
            cycle.window_until += late;
            cycle.end += late;
        }
    }

    /// The task detached `slots` of a group; each entry: when that slot's probe stopped
    /// recording (right before its link was closed).
    pub fn detached(&mut self, pid: u32, group: &str, slots: &[(u32, Nanos)]) {
        let Some(group) = self.group_mut(pid, group) else {
            return;
        };
        group.busy = false;
        let cycle_start = match group.mode {
            Mode::Cycling(c) => c.start,
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
        })
    }
}

/// Turns a group's pending hits and attached time into an on-cost measurement once
/// enough time was attached.
fn measure_on_cost(group: &mut Group) {
    let on = group.slots.iter().map(|s| s.pending_on).max().unwrap_or(0);
    if on < tuning::MIN_MEASURED_ON {
        return;
    }
    let measured: f64 = group
        .slots
        .iter()
        .filter(|s| s.pending_on > 0)
        .map(|s| s.pending_hits as f64 * s.cost.per_hit_ns / s.pending_on as f64)
        .sum();
    group.on_cost = Some(match group.on_cost {
        Some(old) if measured < old => old + tuning::DECAY * (measured - old),
        _ => measured,
    });
    for slot in &mut group.slots {
        slot.pending_on = 0;
        slot.pending_hits = 0;
    }
}

/// Per slot: cycle length / time attached in the cycle.
fn close_weights(group: &Group, start: Nanos, end: Nanos) -> Vec<(u32, f64)> {
    let length = end.saturating_sub(start) as f64;
    group
        .slots
        .iter()
        .map(|s| {
            let weight = if s.on_in_cycle == 0 {
                1.0 // attached for no time: it recorded nothing to weigh
            } else {
                (length / s.on_in_cycle as f64).max(1.0)
            };
            (s.cost.slot, weight)
        })
        .collect()
}

/// The planned on-fraction of a cycle.
fn cycle_fraction(cycle: &Cycle) -> f64 {
    (cycle.window_until - cycle.window_from) as f64
        / cycle.end.saturating_sub(cycle.start).max(1) as f64
}

/// Duty-cycled slots (each detached once per cycle) on the node and in the group's
/// process.
#[derive(Debug, Clone, Copy, Default)]
struct CyclingSlots {
    node: usize,
    process: usize,
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
fn plan_cycle(
    rng: &mut fastrand::Rng,
    now: Nanos,
    fraction: f64,
    cycling: CyclingSlots,
    window_first: bool,
    overrun: Nanos,
) -> Cycle {
    let fraction = fraction.clamp(MIN_FRACTION, 1.0);
    let base = ((tuning::MIN_WINDOW.max(2 * overrun) as f64 / fraction) as Nanos)
        .max(cycling.node as Nanos * tuning::DETACH_SPACING)
        .max(cycling.process as Nanos * tuning::PROCESS_DETACH_SPACING)
        .clamp(tuning::MIN_CYCLE, tuning::MAX_CYCLE);
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

#[cfg(test)]
mod tests {
    use super::*;

    const PID: u32 = 42;

    fn labels() -> WorkloadLabels {
        WorkloadLabels {
            binary: "loop".into(),
            ..Default::default()
        }
    }

    fn hot_group(slot: u32, per_hit_ns: f64) -> GroupSpec {
        GroupSpec {
            name: "growslice",
            priority: Priority::Hot,
            slots: vec![SlotCost { slot, per_hit_ns }],
        }
    }

    fn rare_group(slot: u32, per_hit_ns: f64) -> GroupSpec {
        GroupSpec {
            name: "map_growth",
            priority: Priority::Rare,
            slots: vec![SlotCost { slot, per_hit_ns }],
        }
    }

    #[test]
    fn site_classes_follow_the_probed_instruction() {
        assert_eq!(site_class(&[0x55]), SiteClass::Emulated); // push rbp
        assert_eq!(site_class(&[0x41, 0x57]), SiteClass::Emulated); // push r15
        assert_eq!(site_class(&[0xc3]), SiteClass::SingleStepped); // ret
        assert_eq!(
            site_class(&[0x48, 0x83, 0xec, 0x58]), // sub rsp, 0x58 (Go 1.19 growslice)
            SiteClass::SingleStepped
        );
        assert_eq!(site_class(&[]), SiteClass::SingleStepped);
    }

    #[test]
    fn probes_are_grouped_by_signal_with_their_costs() {
        let cost = HitCost {
            emulated_ns: 1000.0,
            single_stepped_ns: 4000.0,
            per_read_ns: 100.0,
        };
        let groups = groups_for(
            [
                (0, ProbeKind::GrowsliceEntry, &[0x55u8][..], 0),
                (1, ProbeKind::HashGrow, &[0x55u8][..], 4),
                (2, ProbeKind::GrowsliceRet, &[0xc3u8][..], 0),
            ],
            cost,
        );
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].name, "growslice");
        assert_eq!(
            groups[0].slots,
            [
                SlotCost {
                    slot: 0,
                    per_hit_ns: 1000.0
                },
                SlotCost {
                    slot: 2,
                    per_hit_ns: 4000.0
                }
            ]
        );
        assert_eq!(groups[1].priority, Priority::Rare);
        assert_eq!(groups[1].slots[0].per_hit_ns, 1400.0);
    }

    #[test]
    fn water_filling_gives_small_demands_all_they_need() {
        let shares = water_fill(0.01, &[0.001, 0.5, 0.02]);
        assert!((shares[0] - 0.001).abs() < 1e-12);
        assert!((shares[1] - 0.0045).abs() < 1e-12);
        assert!((shares[2] - 0.0045).abs() < 1e-12);
        assert_eq!(water_fill(1.0, &[0.1, 0.2]), [0.1, 0.2]);
        assert!(water_fill(1.0, &[]).is_empty());
    }

    /// Drives a controller against a simulated process whose probes cost `on_cost`
    /// cores while attached (hits at `rate` per second of attached time), attach and
    /// detach taking `latency`; returns (controller, hits recorded, updates).
    struct Simulation {
        controller: Controller,
        now: Nanos,
        hits: BTreeMap<u32, f64>,
        rates: BTreeMap<u32, f64>,
        /// Slots attached (recording).
        attached: BTreeMap<u32, bool>,
        updates: Vec<ScaleUpdate>,
        /// (slot, time) of every recorded hit, to check the weights.
        records: Vec<(u32, Nanos)>,
        latency: Nanos,
        record_every: Nanos,
        /// The process's own CPU use, in cores (for `share_of_process`).
        process_cores: Option<f64>,
        /// A detach closes the group's links this far apart (0: all at once).
        close_stagger: Nanos,
        /// When slots of a detach under way stop recording.
        stops: BTreeMap<u32, Nanos>,
        /// Attaches and detaches under way: (when they finish, what).
        pending: Vec<(Nanos, Action)>,
        detach_started: BTreeMap<&'static str, Nanos>,
    }

    impl Simulation {
        fn new(config: BudgetConfig, groups: Vec<(GroupSpec, f64)>) -> Simulation {
            let mut controller = Controller::new(config, 7);
            let mut rates = BTreeMap::new();
            let mut attached = BTreeMap::new();
            for (group, rate) in &groups {
                for slot in &group.slots {
                    rates.insert(slot.slot, *rate);
                    attached.insert(slot.slot, true);
                }
            }
            controller.add_process(
                PID,
                labels(),
                groups.into_iter().map(|(g, _)| g).collect(),
                0,
            );
            Simulation {
                controller,
                now: 0,
                hits: BTreeMap::new(),
                rates,
                attached,
                updates: Vec::new(),
                records: Vec::new(),
                latency: 5 * MILLISECOND,
                record_every: 10 * MILLISECOND,
                process_cores: None,
                close_stagger: 0,
                stops: BTreeMap::new(),
                pending: Vec::new(),
                detach_started: BTreeMap::new(),
            }
        }

        /// Advances in 1 ms steps for `duration`, ticking every second.
        fn run(&mut self, duration: Nanos) {
            let end = self.now + duration;
            let mut pending = std::mem::take(&mut self.pending);
            while self.now < end {
                self.now += MILLISECOND;
                for (&slot, &on) in &self.attached {
                    if on {
                        let rate = self.rates[&slot];
                        *self.hits.entry(slot).or_default() += rate / 1000.0;
                        if self.now.is_multiple_of(self.record_every) {
                            self.records.push((slot, self.now));
                        }
                    }
                }
                // Finish actions whose latency passed.
                let (done, waiting): (Vec<_>, Vec<_>) =
                    pending.into_iter().partition(|(at, _)| *at <= self.now);
                pending = waiting;
                for (_, action) in done {
                    let started = match &action {
                        Action::Detach { group, .. } => self.detach_started[group],
                        Action::Attach { .. } => self.now,
                    };
                    match action {
                        Action::Attach { pid, group, slots } => {
                            for &s in &slots {
                                self.attached.insert(s, true);
                            }
                            let times: Vec<_> =
                                slots.iter().map(|&s| (s, Some(self.now))).collect();
                            self.controller.attached(pid, group, &times);
                        }
                        Action::Detach { pid, group, slots } => {
                            // The kernel closed the links one after the other.
                            let times: Vec<_> = slots
                                .iter()
                                .enumerate()
                                .map(|(i, &s)| (s, started + i as Nanos * self.close_stagger))
                                .collect();
                            self.controller.detached(pid, group, &times);
                        }
                    }
                }
                for (&slot, &at) in &self.stops {
                    if at <= self.now {
                        self.attached.insert(slot, false);
                    }
                }
                self.stops.retain(|_, at| *at > self.now);
                if self.now.is_multiple_of(SECOND) {
                    if let Some(cores) = self.process_cores {
                        let cpu = (self.now as f64 * cores) as u64;
                        self.controller.process_cpu(PID, self.now, cpu);
                    }
                    let hits = self.hits.clone();
                    self.controller
                        .update(self.now, &|slot| hits.get(&slot).map(|h| *h as u64));
                }
                for action in self.controller.due(self.now) {
                    match action {
                        Action::Attach { .. } => pending.push((self.now + self.latency, action)),
                        Action::Detach { pid, group, slots } if self.close_stagger > 0 => {
                            // Slot i stops recording when its link is closed, i links
                            // after the first; the controller hears when all are.
                            for (i, &s) in slots.iter().enumerate() {
                                self.stops
                                    .insert(s, self.now + i as Nanos * self.close_stagger);
                            }
                            let last = self.now + (slots.len() as Nanos - 1) * self.close_stagger;
                            pending.push((last, Action::Detach { pid, group, slots }));
                            self.detach_started.insert(group, self.now);
                        }
                        Action::Detach { pid, group, slots } => {
                            // Recording stops when the detach begins; the call itself
                            // takes long but does not matter to the weights.
                            for &s in &slots {
                                self.attached.insert(s, false);
                            }
                            let times: Vec<_> = slots.iter().map(|&s| (s, self.now)).collect();
                            self.controller.detached(pid, group, &times);
                        }
                    }
                }
                self.updates.extend(self.controller.take_scale_updates());
            }
            self.pending = pending;
        }

        fn report(&self) -> ProcessReport {
            self.controller.reports(self.now).remove(0)
        }

        /// Sum of record weights per slot, as the aggregator would compute them.
        fn weighted_records(&self, slot: u32) -> f64 {
            let mut held_from = None;
            let mut closes: Vec<(Nanos, Nanos, f64)> = Vec::new(); // (from, until, weight)
            let mut releases: Vec<Nanos> = Vec::new();
            let mut last_until = 0;
            for update in &self.updates {
                match update {
                    ScaleUpdate::Hold { slots, from, .. } if slots.contains(&slot) => {
                        held_from.get_or_insert(*from);
                        last_until = *from;
                    }
                    ScaleUpdate::Close { weights, until } => {
                        if let Some(&(_, w)) = weights.iter().find(|(s, _)| *s == slot) {
                            closes.push((last_until, *until, w));
                            last_until = *until;
                        }
                    }
                    ScaleUpdate::Release { slots, from } if slots.contains(&slot) => {
                        releases.push(*from);
                    }
                    _ => {}
                }
            }
            self.records
                .iter()
                .filter(|(s, _)| *s == slot)
                .map(|&(_, t)| {
                    match closes
                        .iter()
                        .find(|(from, until, _)| t >= *from && t < *until)
                    {
                        Some(&(_, _, w)) => w,
                        None if held_from.is_none_or(|h| t < h) => 1.0,
                        None if releases.iter().any(|&r| t >= r) => 1.0,
                        None => 0.0, // still held: not counted yet
                    }
                })
                .sum()
        }
    }

    fn enforced(per_process: f64) -> BudgetConfig {
        BudgetConfig {
            per_process,
            share_of_process: None,
            node: None,
            enforce: true,
        }
    }

    #[test]
    fn a_probe_far_above_budget_is_duty_cycled_down_to_it() {
        // 500k hits/s at 1 µs: half a core while attached, budget 1%.
        let mut sim = Simulation::new(enforced(0.01), vec![(hot_group(0, 1000.0), 500_000.0)]);
        sim.run(120 * SECOND);
        let report = sim.report();
        let duty = report.duty[0].1;
        assert!(
            (0.015..0.025).contains(&duty),
            "duty cycle {duty}: want about 1% / 50% = 2%"
        );
        assert!(
            (0.007..=0.0125).contains(&report.overhead),
            "estimated overhead {} with a 1% budget",
            report.overhead
        );
        assert!(
            sim.updates
                .iter()
                .filter(|u| matches!(u, ScaleUpdate::Close { .. }))
                .count()
                >= 10
        );
    }

    #[test]
    fn weighted_records_estimate_the_full_count() {
        // A record every 10 ms of attached time; cycled at ~20%.
        let mut sim = Simulation::new(enforced(0.1), vec![(hot_group(0, 1000.0), 500_000.0)]);
        sim.run(60 * SECOND);
        let last_close = sim
            .updates
            .iter()
            .filter_map(|u| match u {
                ScaleUpdate::Close { until, .. } => Some(*until),
                _ => None,
            })
            .next_back()
            .expect("cycles closed");
        let estimate = sim.weighted_records(0);
        // Every 10 ms up to the last closed cycle, had the probe always been on.
        let truth = (last_close / (10 * MILLISECOND)) as f64;
        let error = (estimate - truth).abs() / truth;
        assert!(
            error < 0.05,
            "estimate {estimate} vs {truth} ({:.1}% off)",
            error * 100.0
        );
        let duty = sim.report().duty[0].1;
        assert!((0.15..0.25).contains(&duty), "duty {duty}");
    }

    #[test]
    fn a_late_attach_still_gets_its_whole_window() {
        // Windows of ~100–200 ms; every attach takes 300 ms.
        let mut sim = Simulation::new(enforced(0.1), vec![(hot_group(0, 1000.0), 500_000.0)]);
        sim.latency = 300 * MILLISECOND;
        sim.run(60 * SECOND);
        let weights: Vec<f64> = sim
            .updates
            .iter()
            .filter_map(|u| match u {
                ScaleUpdate::Close { weights, .. } => Some(weights[0].1),
                _ => None,
            })
            .collect();
        assert!(weights.len() >= 10, "{weights:?}");
        assert!(
            weights.iter().all(|&w| w < 10.0),
            "weights {weights:?} for a fraction of ~0.2"
        );
    }

    #[test]
    fn rare_probes_stay_on_while_hot_ones_are_cycled() {
        let mut sim = Simulation::new(
            enforced(0.01),
            vec![
                (hot_group(0, 1000.0), 500_000.0),
                (rare_group(1, 1000.0), 2_000.0), // 0.2% of a core
            ],
        );
        sim.run(30 * SECOND);
        let report = sim.report();
        assert_eq!(report.duty[1], ("map_growth", 1.0));
        assert!(report.duty[0].1 < 0.02, "{report:?}");
        assert!(sim.attached[&1]);
    }

    #[test]
    fn the_budget_is_also_a_share_of_the_process_own_cpu() {
        // 1% of a core, and 1% of what the process uses: a process using half a core
        // gets 0.5% of a core. The probe costs 2% of a core while attached.
        let config = BudgetConfig {
            share_of_process: Some(0.01),
            ..enforced(0.01)
        };
        let mut sim = Simulation::new(config, vec![(rare_group(1, 1000.0), 20_000.0)]);
        sim.process_cores = Some(0.5);
        sim.run(60 * SECOND);
        let report = sim.report();
        assert!((0.15..0.35).contains(&report.duty[0].1), "{report:?}");
        assert!(report.overhead < 0.0065, "{report:?}");

        // Without the share, 1% of a core: about half the time.
        let mut sim = Simulation::new(enforced(0.01), vec![(rare_group(1, 1000.0), 20_000.0)]);
        sim.process_cores = Some(0.5);
        sim.run(60 * SECOND);
        assert!(
            (0.4..0.6).contains(&sim.report().duty[0].1),
            "{:?}",
            sim.report()
        );
    }

    /// A group of four slots whose links the kernel closes 100 ms apart.
    fn four_slot_group(per_hit_ns: f64) -> GroupSpec {
        GroupSpec {
            name: "map_growth",
            priority: Priority::Rare,
            slots: (0..4).map(|slot| SlotCost { slot, per_hit_ns }).collect(),
        }
    }

    #[test]
    fn windows_are_shortened_by_the_time_the_kernel_takes_to_close_links() {
        // 4 slots × 5k hits/s × 1 µs = 2% of a core while attached; budget 0.5%.
        let mut sim = Simulation::new(enforced(0.005), vec![(four_slot_group(1000.0), 5_000.0)]);
        sim.close_stagger = 100 * MILLISECOND;
        sim.run(60 * SECOND);
        let before = sim.report().total_cost_ns;
        sim.run(120 * SECOND);
        let overhead = (sim.report().total_cost_ns - before) / (120 * SECOND) as f64;
        // Without the correction, the 300 ms close tail more than doubles a ~0.5 s window.
        assert!(overhead < 0.006, "overhead {overhead}: {:?}", sim.report());
        assert!(overhead > 0.003, "overhead {overhead}: {:?}", sim.report());
    }

    #[test]
    fn when_rare_groups_exceed_the_budget_hot_ones_still_get_a_share() {
        let mut sim = Simulation::new(
            enforced(0.01),
            vec![
                (hot_group(0, 1000.0), 500_000.0), // 50% of a core
                (rare_group(1, 1000.0), 50_000.0), // 5%
            ],
        );
        sim.run(60 * SECOND);
        let report = sim.report();
        // Each gets about half the budget: 0.5% / 50% and 0.5% / 5%.
        assert!((0.005..0.02).contains(&report.duty[0].1), "{report:?}");
        assert!((0.05..0.2).contains(&report.duty[1].1), "{report:?}");
    }

    #[test]
    fn a_rare_probe_over_budget_is_cycled_too() {
        let mut sim = Simulation::new(enforced(0.01), vec![(rare_group(1, 1000.0), 100_000.0)]);
        sim.run(30 * SECOND);
        let duty = sim.report().duty[0].1;
        assert!(duty < 0.2, "duty {duty}");
    }

    #[test]
    fn a_probe_that_calms_down_goes_back_to_always_on() {
        let mut sim = Simulation::new(enforced(0.01), vec![(hot_group(0, 1000.0), 500_000.0)]);
        sim.run(30 * SECOND);
        assert!(sim.report().duty[0].1 < 1.0);
        sim.rates.insert(0, 1_000.0); // 0.1% of a core
        sim.run(120 * SECOND);
        assert_eq!(sim.report().duty[0].1, 1.0);
        assert!(sim.attached[&0]);
        assert!(
            sim.updates
                .iter()
                .any(|u| matches!(u, ScaleUpdate::Release { .. }))
        );
    }

    #[test]
    fn without_enforcement_everything_stays_on_and_the_cost_is_reported() {
        let mut sim = Simulation::new(
            BudgetConfig {
                per_process: 0.01,
                share_of_process: None,
                node: None,
                enforce: false,
            },
            vec![(hot_group(0, 1000.0), 500_000.0)],
        );
        sim.run(10 * SECOND);
        let report = sim.report();
        assert_eq!(report.duty[0].1, 1.0);
        assert!((report.overhead - 0.5).abs() < 0.01, "{report:?}");
        assert!((report.total_cost_ns - 5e9).abs() < 1e8, "{report:?}");
        assert!(sim.updates.is_empty());
    }

    #[test]
    fn the_node_budget_is_shared_between_processes() {
        let mut controller = Controller::new(
            BudgetConfig {
                per_process: 0.05,
                share_of_process: None,
                node: Some(0.04),
                enforce: true,
            },
            1,
        );
        for pid in [1, 2, 3] {
            controller.add_process(pid, labels(), vec![hot_group(pid, 1000.0)], 0);
        }
        // pid 1: 1% of a core; pids 2 and 3: 50% each.
        let rates: BTreeMap<u32, u64> = [(1, 10_000), (2, 500_000), (3, 500_000)].into();
        controller.update(SECOND, &|slot| rates.get(&slot).copied());
        let budgets: Vec<f64> = controller.processes.values().map(|p| p.budget).collect();
        assert!((budgets[0] - 0.01).abs() < 1e-9, "{budgets:?}");
        assert!((budgets[1] - 0.015).abs() < 1e-9, "{budgets:?}");
        assert!((budgets[1] - budgets[2]).abs() < 1e-12);
        assert!(budgets.iter().sum::<f64>() <= 0.04 + 1e-9);
    }

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
            assert!(c.end >= tuning::MIN_CYCLE / 2 && c.end <= tuning::MAX_CYCLE * 3 / 2);
        }
        // Small fractions get longer cycles, so the window stays long enough.
        let small = plan_cycle(&mut rng, 0, 0.005, CyclingSlots::default(), false, 0);
        assert!(small.window_until - small.window_from >= tuning::MIN_WINDOW / 2);
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
            let want = (slots as Nanos * tuning::PROCESS_DETACH_SPACING).min(tuning::MAX_CYCLE);
            assert!(
                (mean / want as f64 - 1.0).abs() < 0.15,
                "{slots} slots: mean cycle {mean:.0} ns, want about {want} ns"
            );
        }
    }
}
