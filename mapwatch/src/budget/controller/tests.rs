//! The controller driven against simulated processes: duty cycles, their weights, and
//! the shares of the budget as they come out over minutes of simulated time.
use super::*;
use crate::budget::{
    MILLISECOND, SECOND,
    groups::{Priority, SlotCost},
};

const PID: u32 = 42;

/// Hits a slot counted and recorded, none while paused.
fn unpaused(hits: u64) -> SlotHits {
    SlotHits {
        recorded: hits,
        paused: 0,
    }
}

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
        slots: vec![SlotCost {
            slot,
            per_hit_ns,
            paused_ns: per_hit_ns,
        }],
    }
}

fn rare_group(slot: u32, per_hit_ns: f64) -> GroupSpec {
    GroupSpec {
        name: "map_growth",
        priority: Priority::Rare,
        slots: vec![SlotCost {
            slot,
            per_hit_ns,
            paused_ns: per_hit_ns,
        }],
    }
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
    /// The process's CPU time so far, ns (from `process_cores`).
    cpu_ns: f64,
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
                attached.insert(slot.slot, !starts_detached(group, &config));
            }
        }
        controller.add_process(
            PID,
            labels(),
            groups.into_iter().map(|(g, _)| g).collect(),
            0,
            None,
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
            cpu_ns: 0.0,
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
                        let times: Vec<_> = slots.iter().map(|&s| (s, Some(self.now))).collect();
                        self.controller.attached(pid, group, &times, None);
                    }
                    Action::Detach { pid, group, slots } => {
                        // The kernel closed the links one after the other.
                        let times: Vec<_> = slots
                            .iter()
                            .enumerate()
                            .map(|(i, &s)| (s, started + i as Nanos * self.close_stagger))
                            .collect();
                        self.controller.detached(pid, group, &times, None);
                    }
                }
            }
            for (&slot, &at) in &self.stops {
                if at <= self.now {
                    self.attached.insert(slot, false);
                }
            }
            self.stops.retain(|_, at| *at > self.now);
            if let Some(cores) = self.process_cores {
                self.cpu_ns += cores * MILLISECOND as f64;
            }
            if self.now.is_multiple_of(SECOND) {
                if self.process_cores.is_some() {
                    let cpu = CpuTime {
                        total_ns: self.cpu_ns as u64,
                        system_ns: 0,
                    };
                    self.controller.process_cpu(PID, self.now, cpu);
                }
                let hits = self.hits.clone();
                self.controller.update(self.now, &|slot| {
                    hits.get(&slot).map(|h| unpaused(*h as u64))
                });
            }
            for action in self.controller.due(self.now, &mut |_, _| None) {
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
                        self.controller.detached(pid, group, &times, None);
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
                ScaleUpdate::Close { weights, until, .. } => {
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
    // The first cycle runs at the guessed fraction (a new process's hot group starts
    // detached); the later ones at the measured ~0.2.
    assert!(
        weights.iter().skip(1).all(|&w| w < 10.0),
        "weights {weights:?} for a fraction of ~0.2"
    );
}

#[test]
fn a_new_process_starts_its_hot_groups_detached_at_a_guess_from_its_workload() {
    let config = enforced(0.01);
    assert!(starts_detached(&hot_group(0, 1000.0), &config));
    assert!(!starts_detached(&rare_group(1, 1000.0), &config));
    let not_enforced = BudgetConfig {
        enforce: false,
        ..config
    };
    assert!(!starts_detached(&hot_group(0, 1000.0), &not_enforced));
    // A budget of a whole core covers the cost assumed of an unknown hot group.
    assert!(!starts_detached(&hot_group(0, 1000.0), &enforced(1.0)));
    let mut controller = Controller::new(config, 3);
    let groups = || vec![hot_group(1, 1000.0), rare_group(2, 1000.0)];
    // No history: the guess is a whole core while attached.
    controller.add_process(1, labels(), groups(), 0, None);
    let first = &controller.processes[&1].groups;
    assert!(matches!(first[0].mode, Mode::Cycling(_)) && !first[0].attached());
    assert!((first[0].fraction - 0.01 / UNKNOWN_HOT_ON_COST).abs() < 1e-12);
    assert!(first[1].mode == Mode::AlwaysOn && first[1].attached());
    // Measured at 0.2 cores while attached; the workload's next process starts there.
    controller.processes.get_mut(&1).unwrap().groups[0].on_cost = Some(0.2);
    controller.remove_process(1, SECOND);
    controller.add_process(2, labels(), groups(), 2 * SECOND, None);
    let next = &controller.processes[&2].groups[0];
    assert!(
        (next.fraction - 0.01 / 0.2).abs() < 1e-12,
        "{}",
        next.fraction
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
        slots: (0..4)
            .map(|slot| SlotCost {
                slot,
                per_hit_ns,
                paused_ns: per_hit_ns,
            })
            .collect(),
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
fn a_group_that_is_one_link_is_spaced_as_one_detach() {
    // The same 4-slot group over budget: as four perf-event uprobes its cycles are
    // spaced for four detaches per cycle, as one uprobe_multi link for one.
    let cycles = |group_links: bool| {
        let mut sim = Simulation::new(enforced(0.005), vec![(four_slot_group(1000.0), 5_000.0)]);
        sim.controller.group_links = group_links;
        sim.run(240 * SECOND);
        sim.updates
            .iter()
            .filter(|u| matches!(u, ScaleUpdate::Close { .. }))
            .count()
    };
    let (per_slot, per_group) = (cycles(false), cycles(true));
    assert!(
        per_group as f64 > 2.5 * per_slot as f64,
        "{per_group} cycles with group links vs {per_slot} with one link per slot"
    );
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
fn a_process_that_goes_idle_gets_its_probes_back_always_on() {
    // Budget: 1% of the process's own CPU, which is 0 once it idles.
    let config = BudgetConfig {
        share_of_process: Some(0.01),
        ..enforced(0.01)
    };
    let mut sim = Simulation::new(config, vec![(hot_group(0, 1000.0), 500_000.0)]);
    sim.process_cores = Some(1.0);
    sim.run(30 * SECOND);
    assert!(sim.report().duty[0].1 < 1.0, "{:?}", sim.report());
    sim.process_cores = Some(0.0);
    sim.rates.insert(0, 10.0);
    sim.run(180 * SECOND);
    assert_eq!(sim.report().duty[0].1, 1.0, "{:?}", sim.report());
    assert!(sim.attached[&0]);
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
fn traps_while_paused_are_charged_as_probe_cost() {
    let mut controller = Controller::new(
        BudgetConfig {
            per_process: 0.01,
            share_of_process: None,
            node: None,
            enforce: false,
        },
        1,
    );
    let group = GroupSpec {
        name: "map_growth",
        priority: Priority::Hot,
        slots: vec![SlotCost {
            slot: 0,
            per_hit_ns: 1500.0,
            paused_ns: 1000.0,
        }],
    };
    controller.add_process(PID, labels(), vec![group], 0, None);
    let hits = SlotHits {
        recorded: 1000,
        paused: 500,
    };
    controller.update(SECOND, &|_| Some(hits));
    let report = &controller.reports(SECOND)[0];
    // 1000 × 1.5 µs recorded + 500 × 1 µs paused (the belief: nothing learned yet).
    assert!((report.total_cost_ns - 2e6).abs() < 1.0, "{report:?}");
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
        controller.add_process(pid, labels(), vec![hot_group(pid, 1000.0)], 0, None);
        // Their first windows open at once (new hot groups start detached).
        controller.attached(pid, "growslice", &[(pid, Some(0))], None);
    }
    // pid 1: 1% of a core; pids 2 and 3: 50% each.
    let rates: BTreeMap<u32, u64> = [(1, 10_000), (2, 500_000), (3, 500_000)].into();
    controller.update(SECOND, &|slot| rates.get(&slot).copied().map(unpaused));
    let budgets: Vec<f64> = controller.processes.values().map(|p| p.budget).collect();
    assert!((budgets[0] - 0.01).abs() < 1e-9, "{budgets:?}");
    assert!((budgets[1] - 0.015).abs() < 1e-9, "{budgets:?}");
    assert!((budgets[1] - budgets[2]).abs() < 1e-12);
    assert!(budgets.iter().sum::<f64>() <= 0.04 + 1e-9);
}

mod by_work;
