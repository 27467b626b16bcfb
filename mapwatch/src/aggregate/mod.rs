//! Records in, metric updates out. One task owns all aggregation state, so the hot path
//! takes no locks; the registry's metric handles are atomics that scrapes read.
//!
//! This file is the task: its inputs, the slots that say what a record is about, and
//! the dispatch by probe kind. Each signal has a file: `slices.rs` (growslice, exact
//! mode's RET checks, growsliceBuf), `maps.rs` (map growth, makemap hints, mapassign
//! with the pure `map_assign.rs`), `runtime.rs` (STW pauses, GC cycles, mallocgc).
//!
//! State is kept by how long it lives: `workloads.rs` per workload, until its series
//! expire; `process.rs` per process, dropped in one piece when the process goes;
//! `children.rs`, the metric children both cache. `weighting.rs` holds the records of
//! duty-cycled probes until their cycle's weight is known. A record is applied with
//! `reps`, the number of events it stands for (1 unless its probe is duty-cycled):
//! every counter and histogram update it makes is made that many times over.
mod children;
pub mod map_assign;
mod maps;
pub mod observe;
mod process;
mod runtime;
mod slices;
mod weighting;
mod workloads;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use foldhash::{HashMap, HashMapExt as _};
use mapwatch_common::{Event, ProbeKind};
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tracing::debug;

use observe::{Observation, Observed, Observer};
use process::ProcessState;
pub use runtime::pearson;
use weighting::DutyCycledSlots;
pub use weighting::{Nanos, ScaleUpdate, monotonic_ns};

/// How often paced records of closed duty cycles are released.
const PACING_STEP: Duration = Duration::from_millis(250);
pub use workloads::LabelLimits;
use workloads::Workloads;

use crate::{
    goruntime::{RuntimeFacts, versions::RBX},
    metrics::{Metrics, WorkloadLabels},
    symbolize::Symbolizer,
};

/// What a probe slot belongs to; registered before the slot's probe is attached.
#[derive(Debug, Clone)]
pub struct SlotRegistration {
    pub slot: u32,
    /// The process the probe is attached to: records from another process carry a
    /// reused slot's number (written before its old probe was detached) and are dropped.
    pub pid: u32,
    pub kind: ProbeKind,
    pub workload: Arc<Workload>,
}

impl SlotRegistration {
    /// Registrations for the probes of `plan`, attached to `pid` at `slots` (in order).
    pub fn for_plan(
        pid: u32,
        plan: &crate::plan::ProbePlan,
        slots: &[u32],
        workload: &Arc<Workload>,
    ) -> Vec<SlotRegistration> {
        plan.probes
            .iter()
            .zip(slots)
            .map(|(probe, &slot)| SlotRegistration {
                slot,
                pid,
                kind: probe.kind,
                workload: Arc::clone(workload),
            })
            .collect()
    }
}

/// One profiled program (all processes running the same binary share the labels).
#[derive(Debug)]
pub struct Workload {
    pub labels: WorkloadLabels,
    pub facts: RuntimeFacts,
    /// RET probes are attached too: pair entries with them to check derived values.
    pub exact: bool,
}

/// The callers of each record of a batch, by position (None: the record has none).
pub type RecordStacks = Vec<Option<Box<[u64]>>>;

/// Messages to the aggregator, in order: registrations always precede the records of
/// the slots they describe because they are sent before the probe is attached.
pub enum Input {
    /// Names for a process's addresses; sent before its slots are registered.
    Symbolizer(u32, Box<Symbolizer>),
    Register(Vec<SlotRegistration>),
    /// The process exited or exec'd and its probes are detached: forget its state.
    ProcessGone(u32),
    Events(Vec<Event>),
    /// Records some of which carry their callers (a capture's `--stack-depth`): the
    /// stacks by position in the batch.
    StackedEvents(Vec<Event>, RecordStacks),
    /// The overhead budget duty-cycles probes: how their records are weighted.
    Scale(ScaleUpdate),
}

struct Slot {
    pid: u32,
    kind: ProbeKind,
    workload: Arc<Workload>,
    /// Key of the workload's state in [`Workloads`].
    state: u64,
    /// `events_received_total` for this probe.
    received: IntCounter,
}

pub struct Aggregator {
    metrics: Arc<Metrics>,
    slots: HashMap<u32, Slot>,
    processes: HashMap<u32, ProcessState>,
    workloads: Workloads,
    duty_cycled: DutyCycledSlots,
    /// A capture's channel (`mapwatch record`), and what waits to be sent on it.
    observer: Option<Observer>,
    observed: Vec<Observed>,
    /// The callers of the record being applied, for its observation.
    stack: Option<Box<[u64]>>,
}

impl Aggregator {
    pub fn new(metrics: Arc<Metrics>) -> Aggregator {
        Aggregator::with_limits(metrics, LabelLimits::default())
    }

    pub fn with_limits(metrics: Arc<Metrics>, limits: LabelLimits) -> Aggregator {
        Aggregator {
            metrics,
            slots: HashMap::new(),
            processes: HashMap::new(),
            workloads: Workloads::new(limits),
            duty_cycled: DutyCycledSlots::default(),
            observer: None,
            observed: Vec::new(),
            stack: None,
        }
    }

    /// Series of a workload whose last process is gone are removed after `expiry` (the
    /// node daemon: workloads come and go; `attach` watches one and keeps its series).
    pub fn with_series_expiry(mut self, expiry: Duration) -> Aggregator {
        self.workloads.set_series_expiry(expiry);
        self
    }

    /// Every record is also sent, decoded, to `observer` (a capture).
    pub fn with_observer(mut self, observer: Observer) -> Aggregator {
        self.observer = Some(observer);
        self
    }

    /// Keeps what a record says for the observer, if there is one.
    fn observe(&mut self, event: &Event, what: impl FnOnce() -> Observation) {
        if self.observer.is_some() {
            self.observed.push(Observed {
                pid: event.tgid,
                ktime_ns: event.ktime_ns,
                what: what(),
                stack: self.stack.take(),
            });
        }
    }

    fn send_observed(&mut self) {
        if let Some(observer) = &self.observer {
            observer.send(std::mem::take(&mut self.observed));
        }
    }

    /// Applies inputs until every sender is gone.
    pub async fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        let check_every = self
            .workloads
            .series_expiry()
            .map_or(Duration::from_secs(3600), |e| {
                (e / 4).max(Duration::from_millis(100))
            });
        let mut expiry_check = tokio::time::interval(check_every);
        let mut pacing = tokio::time::interval(PACING_STEP);
        pacing.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(input) => self.apply(input),
                    None => break,
                },
                _ = expiry_check.tick() => self.expire(Instant::now()),
                _ = pacing.tick() => self.release_paced(monotonic_ns()),
            }
        }
        for (event, reps) in self.duty_cycled.release_all() {
            self.record(&event, reps);
        }
        self.send_observed();
        debug!("aggregator: input closed");
    }

    /// Applies the weighed records of closed duty cycles that are due by `now`.
    pub fn release_paced(&mut self, now: Nanos) {
        for (event, reps) in self.duty_cycled.release(now) {
            self.record(&event, reps);
        }
        self.send_observed();
    }

    /// Forgets workloads gone for longer than the series expiry.
    pub fn expire(&mut self, now: Instant) {
        self.workloads.expire(now, &self.metrics);
    }

    pub fn apply(&mut self, input: Input) {
        match input {
            Input::Symbolizer(pid, symbolizer) => {
                self.processes.entry(pid).or_default().symbolizer = Some(symbolizer);
            }
            Input::Register(registrations) => self.register(registrations),
            Input::ProcessGone(pid) => self.forget_process(pid),
            Input::Events(events) => events.iter().for_each(|e| self.on_event(e)),
            Input::StackedEvents(events, stacks) => {
                for (event, stack) in events.iter().zip(stacks) {
                    // Only the observer uses stacks, and only records applied now: a
                    // capture keeps every probe on, so none waits for a duty cycle.
                    self.stack = stack;
                    self.on_event(event);
                    self.stack = None;
                }
            }
            Input::Scale(update) => {
                for (event, reps) in self.duty_cycled.update(update) {
                    self.record(&event, reps);
                }
            }
        }
        self.send_observed();
    }

    fn register(&mut self, registrations: Vec<SlotRegistration>) {
        for r in registrations {
            let state = self.workloads.add_process(&r.workload.labels, r.pid);
            let received = self
                .metrics
                .events_received_total
                .with_label_values(&[r.kind.label()]);
            self.slots.insert(
                r.slot,
                Slot {
                    pid: r.pid,
                    kind: r.kind,
                    workload: r.workload,
                    state,
                    received,
                },
            );
        }
    }

    fn forget_process(&mut self, pid: u32) {
        // Its records still waiting for their cycle's weight are applied first, while
        // its slots and state are there to apply them to.
        let slots: Vec<u32> = self
            .slots
            .iter()
            .filter(|(_, s)| s.pid == pid)
            .map(|(&n, _)| n)
            .collect();
        for (event, reps) in self.duty_cycled.forget(slots) {
            self.record(&event, reps);
        }
        self.workloads.remove_process(pid, Instant::now());
        self.processes.remove(&pid);
        self.slots.retain(|_, slot| slot.pid != pid);
    }

    fn on_event(&mut self, event: &Event) {
        let Some(slot) = self.slots.get(&event.slot).filter(|s| s.pid == event.tgid) else {
            // Written by a probe detached since (its process exited); the slot number
            // may already belong to another process.
            debug!(
                slot = event.slot,
                tgid = event.tgid,
                "record of a detached probe"
            );
            self.metrics.events_orphaned_total.inc();
            return;
        };
        slot.received.inc();
        let (kind, state) = (slot.kind, slot.state);
        let workload = Arc::clone(&slot.workload);
        if let Some(reps) = self.duty_cycled.weigh(event) {
            self.apply_record(event, reps, kind, &workload, state);
        }
    }

    /// A record that waited for its weight: counted as received when it arrived.
    fn record(&mut self, event: &Event, reps: u64) {
        let Some(slot) = self.slots.get(&event.slot).filter(|s| s.pid == event.tgid) else {
            return;
        };
        let (kind, state) = (slot.kind, slot.state);
        let workload = Arc::clone(&slot.workload);
        self.apply_record(event, reps, kind, &workload, state);
    }

    fn apply_record(
        &mut self,
        event: &Event,
        reps: u64,
        kind: ProbeKind,
        workload: &Workload,
        state: u64,
    ) {
        match kind {
            ProbeKind::GrowsliceEntry => self.on_growslice(event, workload, state, reps),
            ProbeKind::GrowsliceRet => self.on_growslice_ret(event),
            ProbeKind::GrowsliceBufEntry => self.on_growslice_buf(event),
            ProbeKind::HashGrow => self.on_hash_grow(event, workload, state, reps),
            ProbeKind::MapGrowToSmall
            | ProbeKind::MapGrowToTable
            | ProbeKind::MapTableGrow
            | ProbeKind::MapTableSplit => self.on_swiss_growth(kind, event, state, reps),
            ProbeKind::MakeMap => {
                self.on_make_map(event, event.regs[usize::from(RBX)], state, reps)
            }
            ProbeKind::MakeMapSmall => self.on_make_map(event, 0, state, reps),
            ProbeKind::MakeMapRet => self.observe(event, || Observation::MapMade {
                goroutine: event.goroutine,
                map: event.regs[usize::from(crate::goruntime::versions::RAX)],
            }),
            // Bookkeeping for the RET, done in the kernel (mapwatch-ebpf `map_assign`).
            ProbeKind::MapAssignEntry | ProbeKind::MapAssignHash => {}
            ProbeKind::MapAssignRet => self.on_map_assign(event, state, reps),
            ProbeKind::StartTheWorldEntry => self.on_start_the_world_entry(event, workload),
            ProbeKind::StopTheWorldEntry => self.on_stop_the_world_entry(event, workload),
            ProbeKind::StartTheWorldRet => {
                self.on_start_the_world_ret(event, workload, state, reps)
            }
            ProbeKind::GcMarkTermination => {
                self.observe(event, || Observation::GcCycle);
                self.on_gc_cycle(state, reps)
            }
            ProbeKind::Mallocgc => self.on_malloc(event, state, reps),
            ProbeKind::MallocgcSpecialized => self.on_malloc_specialized(event, state, reps),
            ProbeKind::None => {}
        }
    }

    /// A record counted without its sizes (a struct read failed, or the element type or
    /// the map's tables are unknown). The metric counts records, not the events they
    /// stand for.
    fn incomplete(&self, kind: ProbeKind) {
        self.metrics
            .events_incomplete_total
            .with_label_values(&[kind.label()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goruntime::versions::{GoVersion, RAX, StwAbi, facts_for, stw_reason_name};

    fn workload(binary: &str) -> Arc<Workload> {
        let version = GoVersion::parse("go1.22.10").unwrap();
        Arc::new(Workload {
            labels: WorkloadLabels {
                binary: binary.into(),
                go_version: "go1.22.10".into(),
                ..Default::default()
            },
            facts: facts_for(&version, "").unwrap(),
            exact: false,
        })
    }

    fn gc_cycle(slot: u32, tgid: u32) -> Event {
        Event {
            ktime_ns: 0,
            goroutine: 0,
            caller_pc: 0,
            regs: [0; 6],
            loads: [0; 4],
            tgid,
            tid: tgid,
            slot,
            kind: ProbeKind::GcMarkTermination as u16,
            load_failed: 0,
            derived: 0,
        }
    }

    fn register(aggregator: &mut Aggregator, slot: u32, pid: u32, workload: &Arc<Workload>) {
        aggregator.apply(Input::Register(vec![SlotRegistration {
            slot,
            pid,
            kind: ProbeKind::GcMarkTermination,
            workload: Arc::clone(workload),
        }]));
    }

    fn series_of(metrics: &Metrics, binary: &str) -> usize {
        metrics
            .render()
            .lines()
            .filter(|l| l.contains(&format!("binary=\"{binary}\"")))
            .count()
    }

    #[test]
    fn series_expire_only_when_the_last_process_of_a_workload_is_gone() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let expiry = Duration::from_secs(60);
        let mut aggregator = Aggregator::new(Arc::clone(&metrics)).with_series_expiry(expiry);
        let (api, batch) = (workload("api"), workload("batch"));
        register(&mut aggregator, 0, 100, &api);
        register(&mut aggregator, 1, 101, &api);
        register(&mut aggregator, 2, 200, &batch);
        aggregator.apply(Input::Events(vec![
            gc_cycle(0, 100),
            gc_cycle(1, 101),
            gc_cycle(2, 200),
        ]));
        assert!(series_of(&metrics, "api") > 0 && series_of(&metrics, "batch") > 0);

        aggregator.apply(Input::ProcessGone(100));
        let later = Instant::now() + expiry * 2;
        aggregator.expire(later);
        assert!(series_of(&metrics, "api") > 0, "pid 101 still runs api");

        aggregator.apply(Input::ProcessGone(101));
        aggregator.expire(Instant::now());
        assert!(series_of(&metrics, "api") > 0, "not expired yet");
        aggregator.expire(later);
        assert_eq!(series_of(&metrics, "api"), 0, "{}", metrics.render());
        assert!(series_of(&metrics, "batch") > 0);
    }

    #[test]
    fn growth_bytes_are_summed_per_gc_cycle() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let mut aggregator = Aggregator::new(Arc::clone(&metrics));
        let api = workload("api");
        register(&mut aggregator, 0, 100, &api);
        // The first cycle ends before any growth; the second after two growths.
        aggregator.apply(Input::Events(vec![gc_cycle(0, 100)]));
        let state = aggregator.slots[&0].state;
        aggregator.count_growth_bytes(state, 48);
        aggregator.count_growth_bytes(state, 4096);
        aggregator.apply(Input::Events(vec![gc_cycle(0, 100)]));
        let histogram = metrics
            .growth_bytes_per_gc_cycle
            .with_label_values(&api.labels.values());
        assert_eq!(histogram.get_sample_count(), 2);
        assert_eq!(histogram.get_sample_sum(), 4144.0);
        let total = metrics
            .slice_grow_bytes_total
            .with_label_values(&api.labels.values());
        assert_eq!(total.get(), 4144);
    }

    #[test]
    fn records_of_a_reused_slot_from_its_old_process_are_orphans() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let mut aggregator = Aggregator::new(Arc::clone(&metrics));
        let api = workload("api");
        register(&mut aggregator, 0, 100, &api);
        aggregator.apply(Input::ProcessGone(100));
        register(&mut aggregator, 0, 300, &workload("batch"));
        aggregator.apply(Input::Events(vec![gc_cycle(0, 100), gc_cycle(0, 300)]));
        assert_eq!(metrics.events_orphaned_total.get(), 1);
        assert_eq!(series_of(&metrics, "api"), 0);
        assert!(series_of(&metrics, "batch") > 0);
    }

    fn register_probe(
        aggregator: &mut Aggregator,
        slot: u32,
        pid: u32,
        kind: ProbeKind,
        workload: &Arc<Workload>,
    ) {
        aggregator.apply(Input::Register(vec![SlotRegistration {
            slot,
            pid,
            kind,
            workload: Arc::clone(workload),
        }]));
    }

    fn record_of(kind: ProbeKind, slot: u32, tgid: u32, ktime_ns: u64) -> Event {
        Event {
            ktime_ns,
            kind: kind as u16,
            ..gc_cycle(slot, tgid)
        }
    }

    #[test]
    fn a_pid_reused_after_its_process_is_gone_starts_afresh() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let mut aggregator = Aggregator::new(Arc::clone(&metrics));
        let api = workload("api");
        register_probe(&mut aggregator, 0, 100, ProbeKind::StartTheWorldEntry, &api);
        register_probe(&mut aggregator, 1, 100, ProbeKind::StartTheWorldRet, &api);
        let pause_begins = record_of(ProbeKind::StartTheWorldEntry, 0, 100, 10);
        aggregator.apply(Input::Events(vec![pause_begins]));
        aggregator.apply(Input::ProcessGone(100));
        register_probe(&mut aggregator, 0, 100, ProbeKind::StartTheWorldEntry, &api);
        register_probe(&mut aggregator, 1, 100, ProbeKind::StartTheWorldRet, &api);
        let mut pause_ends = record_of(ProbeKind::StartTheWorldRet, 1, 100, 20);
        pause_ends.regs[usize::from(crate::goruntime::versions::RAX)] = 20;
        aggregator.apply(Input::Events(vec![pause_ends]));
        assert!(
            !metrics.render().contains("stw_pause_seconds_count"),
            "a pause begun by the old process: {}",
            metrics.render()
        );
    }

    #[test]
    fn records_of_a_duty_cycled_probe_count_as_the_events_they_stand_for() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let mut aggregator = Aggregator::new(Arc::clone(&metrics));
        let api = workload("api");
        register_probe(&mut aggregator, 0, 100, ProbeKind::MakeMapSmall, &api);
        let hints = || {
            metrics
                .map_make_hint
                .with_label_values(&api.labels.values())
                .get_sample_count()
        };
        aggregator.apply(Input::Scale(ScaleUpdate::Hold {
            slots: vec![0],
            from: 5,
            planned_weight: 2.0,
        }));
        let records = [10, 20, 30].map(|t| record_of(ProbeKind::MakeMapSmall, 0, 100, t));
        aggregator.apply(Input::Events(records.to_vec()));
        assert_eq!(hints(), 0, "waiting for the cycle's weight");
        aggregator.apply(Input::Scale(ScaleUpdate::Close {
            weights: vec![(0, 2.5)],
            until: 25,
            spread: 0,
        }));
        assert_eq!(hints(), 2 + 3, "2.5 each, the fraction carried");
        aggregator.apply(Input::Scale(ScaleUpdate::Release {
            slots: vec![0],
            from: 26,
        }));
        assert_eq!(hints(), 5 + 1);
        let received = metrics
            .events_received_total
            .with_label_values(&[ProbeKind::MakeMapSmall.label()]);
        assert_eq!(received.get(), 3);
    }

    #[test]
    fn held_records_of_a_group_pair_up_in_the_order_they_happened() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let mut aggregator = Aggregator::new(Arc::clone(&metrics));
        let api = workload("api");
        let StwAbi::WorldStopArgument { reason, started } = api.facts.stw else {
            panic!("Go 1.22 passes the pause's start to startTheWorldWithSema");
        };
        register_probe(&mut aggregator, 0, 100, ProbeKind::StartTheWorldEntry, &api);
        register_probe(&mut aggregator, 1, 100, ProbeKind::StartTheWorldRet, &api);
        aggregator.apply(Input::Scale(ScaleUpdate::Hold {
            slots: vec![0, 1],
            from: 0,
            planned_weight: 1.0,
        }));
        let pause = |from: u64, to: u64| {
            let mut entry = record_of(ProbeKind::StartTheWorldEntry, 0, 100, from);
            entry.regs[usize::from(reason)] = 1;
            entry.regs[usize::from(started)] = from;
            let mut ret = record_of(ProbeKind::StartTheWorldRet, 1, 100, to);
            ret.regs[usize::from(RAX)] = to;
            [entry, ret]
        };
        let records = [pause(10, 20), pause(30, 45)].concat();
        aggregator.apply(Input::Events(records));
        aggregator.apply(Input::Scale(ScaleUpdate::Close {
            weights: vec![(0, 1.0), (1, 1.0)],
            until: 100,
            spread: 0,
        }));
        let [namespace, pod, container, binary, go_version] = api.labels.values();
        let pauses = metrics.stw_pause_seconds.with_label_values(&[
            namespace,
            pod,
            container,
            binary,
            go_version,
            stw_reason_name(1),
        ]);
        assert_eq!(pauses.get_sample_count(), 2);
        assert!((pauses.get_sample_sum() - 25e-9).abs() < 1e-15);
    }
}
