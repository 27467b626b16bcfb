//! The one task that owns all aggregation state: records in, metric updates out.
//! No locks on the hot path: only this task touches the state below; the registry's
//! metric handles are atomics that scrapes read.
mod children;
pub mod map_assign;
mod weighting;

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use foldhash::{HashMap, HashMapExt as _};

use children::{ProcessChildren, SiteChild, WorkloadState, child};
use mapwatch_common::{DERIVED_UNKNOWN, Event, ProbeKind};
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tracing::debug;

pub use weighting::{Nanos, ScaleUpdate};

use crate::{
    goruntime::{
        RuntimeFacts,
        functions::{GROWSLICE_BUF, MALLOCGC},
        slice_growth::grown_capacity,
        versions::{GROWSLICE_RESULT_CAP, RAX, RBX, RDI, StwAbi, stw_reason_name},
    },
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

/// Messages to the aggregator, in order: registrations always precede the records of
/// the slots they describe because they are sent before the probe is attached.
pub enum Input {
    /// Names for a process's addresses; sent before its slots are registered.
    Symbolizer(u32, Box<Symbolizer>),
    Register(Vec<SlotRegistration>),
    /// The process exited or exec'd and its probes are detached: forget its state.
    ProcessGone(u32),
    Events(Vec<Event>),
    /// The overhead budget duty-cycles probes: how their records are weighted.
    Scale(ScaleUpdate),
}

/// Cardinality caps per workload (DESIGN.md: top-K + `other`).
#[derive(Debug, Clone, Copy)]
pub struct LabelLimits {
    pub elem_types: usize,
    pub sites: usize,
}

impl Default for LabelLimits {
    fn default() -> LabelLimits {
        LabelLimits {
            elem_types: 20,
            sites: 50,
        }
    }
}

struct Slot {
    pid: u32,
    kind: ProbeKind,
    workload: Arc<Workload>,
    /// Key of the workload's [`WorkloadState`].
    state: u64,
    /// `events_received_total` for this probe.
    received: IntCounter,
}

/// A growslice entry waiting for its RET (exact mode), keyed by (tgid, goroutine).
struct PendingGrowth {
    derived_cap: u64,
}

pub struct Aggregator {
    metrics: Arc<Metrics>,
    slots: HashMap<u32, Slot>,
    pending: HashMap<(u32, u64), PendingGrowth>,
    /// Go 1.22+: (reason, stopping started) from startTheWorldWithSema's entry, until its
    /// RET gives `now`; keyed by (tgid, goroutine).
    pending_start: HashMap<(u32, u64), (u64, u64)>,
    /// Go ≤1.21: (reason, ktime) of stopTheWorldWithSema's entry; one STW per process
    /// at a time (the runtime holds worldsema), so keyed by tgid.
    pending_stop: HashMap<u32, (u64, u64)>,
    /// Per workload: label caps, GC cycle, metric children. Keyed by a number that
    /// slots carry, so records find it without hashing label strings.
    workloads: HashMap<u64, WorkloadState>,
    workload_keys: HashMap<WorkloadLabels, u64>,
    next_workload_key: u64,
    limits: LabelLimits,
    symbolizers: HashMap<u32, Box<Symbolizer>>,
    /// Per process: metric children by element type and caller address.
    process_children: HashMap<u32, ProcessChildren>,
    /// Processes per workload, to tell when a workload is gone.
    processes: HashMap<WorkloadLabels, HashSet<u32>>,
    /// Workloads without processes, since when; their series expire after
    /// `series_expiry`.
    gone_since: HashMap<WorkloadLabels, Instant>,
    series_expiry: Option<Duration>,
    /// Go 1.26+: the append site of the latest growsliceBuf call per (tgid, goroutine),
    /// for the growslice it calls (whose own caller is growsliceBuf).
    buf_callers: HashMap<(u32, u64), u64>,
    /// Duty-cycled slots (see [`ScaleUpdate`]).
    sampled: HashMap<u32, Sampled>,
    /// How many events the record being applied stands for (1 unless duty-cycled):
    /// every counter and histogram update is made this many times over.
    reps: u64,
}

/// Records of a duty-cycled slot. The weight of a record (cycle length / time the probe
/// was attached in that cycle) is known only when its cycle ends, so records wait here
/// until then; late records of a closed cycle take its weight.
struct Sampled {
    /// Records stamped before this are from before duty-cycling: weight 1.
    held_from: Nanos,
    /// Records stamped before this (and after `held_from`) belong to closed cycles.
    closed_until: Nanos,
    weight: f64,
    /// Always on again from this time.
    released_from: Option<Nanos>,
    /// For records that overflow `held`.
    planned_weight: f64,
    /// The fraction left over by rounding weights to whole events, carried to the next
    /// record so that the counts stay integers and their sum stays unbiased.
    carry: f64,
    held: Vec<Event>,
}

impl Sampled {
    fn reps(&mut self, weight: f64) -> u64 {
        let total = weight + self.carry;
        let whole = total.floor();
        self.carry = total - whole;
        whole as u64
    }
}

/// Records one duty-cycled slot may hold (a 1% budget allows ~7k hits/s for at most a
/// 30 s cycle: ~200k; each is 112 bytes).
const MAX_HELD: usize = 1 << 18;

/// Observes `value` `times` times: a weighted record stands for that many events.
/// (The prometheus crate has no weighted observe; the loop costs ~10 ns per estimated
/// event, what the events would have cost had each been recorded.)
fn observe_n(histogram: &prometheus::Histogram, value: f64, times: u64) {
    for _ in 0..times {
        histogram.observe(value);
    }
}

/// Cycles in the rolling correlation window.
const CORRELATION_WINDOW: usize = 16;

/// Pearson correlation of the pairs; 0 when undefined (fewer than 3, or no variance).
pub fn pearson(pairs: &std::collections::VecDeque<(f64, f64)>) -> f64 {
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

/// Bound on entries waiting for a RET: a goroutine that panicked inside growslice
/// leaves its entry behind; this keeps such leftovers from accumulating.
const MAX_PENDING: usize = 65536;

#[derive(Clone, Copy)]
enum CheckResult {
    Match,
    Mismatch,
    Unpaired,
}

impl Aggregator {
    pub fn new(metrics: Arc<Metrics>) -> Aggregator {
        Aggregator::with_limits(metrics, LabelLimits::default())
    }

    pub fn with_limits(metrics: Arc<Metrics>, limits: LabelLimits) -> Aggregator {
        Aggregator {
            limits,
            symbolizers: HashMap::new(),
            processes: HashMap::new(),
            gone_since: HashMap::new(),
            series_expiry: None,
            metrics,
            slots: HashMap::new(),
            pending: HashMap::new(),
            pending_start: HashMap::new(),
            pending_stop: HashMap::new(),
            workloads: HashMap::new(),
            workload_keys: HashMap::new(),
            next_workload_key: 0,
            process_children: HashMap::new(),
            buf_callers: HashMap::new(),
            sampled: HashMap::new(),
            reps: 1,
        }
    }

    /// Applies inputs until every sender is gone.
    /// Series of a workload whose last process is gone are removed after `expiry` (the
    /// node daemon: workloads come and go; `attach` watches one and keeps its series).
    pub fn with_series_expiry(mut self, expiry: Duration) -> Aggregator {
        self.series_expiry = Some(expiry);
        self
    }

    /// Applies inputs until every sender is gone.
    pub async fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        let check_every = self.series_expiry.map_or(Duration::from_secs(3600), |e| {
            (e / 4).max(Duration::from_millis(100))
        });
        let mut expiry_check = tokio::time::interval(check_every);
        loop {
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(input) => self.apply(input),
                    None => break,
                },
                _ = expiry_check.tick() => self.expire(Instant::now()),
            }
        }
        debug!("aggregator: input closed");
    }

    /// Forgets workloads gone for longer than the series expiry.
    pub fn expire(&mut self, now: Instant) {
        let Some(expiry) = self.series_expiry else {
            return;
        };
        let expired: Vec<WorkloadLabels> = self
            .gone_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= expiry)
            .map(|(labels, _)| labels.clone())
            .collect();
        for labels in expired {
            debug!(?labels, "workload gone: its series expire");
            self.metrics.forget_workload(&labels);
            self.gone_since.remove(&labels);
            self.processes.remove(&labels);
            if let Some(key) = self.workload_keys.remove(&labels) {
                self.workloads.remove(&key);
            }
        }
    }

    pub fn apply(&mut self, input: Input) {
        match input {
            Input::Symbolizer(pid, symbolizer) => {
                self.symbolizers.insert(pid, symbolizer);
            }
            Input::Register(registrations) => {
                for r in &registrations {
                    self.gone_since.remove(&r.workload.labels);
                    self.processes
                        .entry(r.workload.labels.clone())
                        .or_default()
                        .insert(r.pid);
                }
                for r in registrations {
                    let state = self.workload_key(&r.workload.labels);
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
            Input::ProcessGone(pid) => {
                // Records still waiting for their cycle's weight: the last one known.
                let slots: Vec<u32> = self
                    .slots
                    .iter()
                    .filter(|(_, s)| s.pid == pid)
                    .map(|(&n, _)| n)
                    .collect();
                for slot in slots {
                    if let Some(mut sampled) = self.sampled.remove(&slot) {
                        let weight = sampled.weight;
                        for event in std::mem::take(&mut sampled.held) {
                            let reps = sampled.reps(weight);
                            self.record(&event, reps);
                        }
                    }
                }
                for (labels, pids) in &mut self.processes {
                    if pids.remove(&pid) && pids.is_empty() {
                        self.gone_since.insert(labels.clone(), Instant::now());
                    }
                }
                self.symbolizers.remove(&pid);
                self.process_children.remove(&pid);
                self.slots.retain(|_, slot| slot.pid != pid);
                self.pending.retain(|(tgid, _), _| *tgid != pid);
                self.pending_start.retain(|(tgid, _), _| *tgid != pid);
                self.pending_stop.remove(&pid);
                self.buf_callers.retain(|(tgid, _), _| *tgid != pid);
            }
            Input::Events(events) => events.iter().for_each(|e| self.on_event(e)),
            Input::Scale(update) => self.on_scale(update),
        }
    }

    /// The key of `labels`' state, made on first use.
    fn workload_key(&mut self, labels: &WorkloadLabels) -> u64 {
        if let Some(&key) = self.workload_keys.get(labels) {
            return key;
        }
        let key = self.next_workload_key;
        self.next_workload_key += 1;
        self.workload_keys.insert(labels.clone(), key);
        self.workloads
            .insert(key, WorkloadState::new(labels.clone(), self.limits));
        key
    }

    fn on_scale(&mut self, update: ScaleUpdate) {
        match update {
            ScaleUpdate::Hold {
                slots,
                from,
                planned_weight,
            } => {
                for slot in slots {
                    let fresh = Sampled {
                        held_from: from,
                        closed_until: from,
                        weight: planned_weight,
                        released_from: None,
                        planned_weight,
                        carry: 0.0,
                        held: Vec::new(),
                    };
                    if let Some(mut old) = self.sampled.insert(slot, fresh) {
                        let weight = old.weight;
                        for event in std::mem::take(&mut old.held) {
                            let reps = old.reps(weight);
                            self.record(&event, reps);
                        }
                    }
                }
            }
            ScaleUpdate::Close { weights, until } => {
                for (slot, weight) in weights {
                    let Some(sampled) = self.sampled.get_mut(&slot) else {
                        continue;
                    };
                    sampled.weight = weight;
                    sampled.closed_until = sampled.closed_until.max(until);
                    let (due, waiting): (Vec<Event>, Vec<Event>) =
                        std::mem::take(&mut sampled.held)
                            .into_iter()
                            .partition(|e| e.ktime_ns < until);
                    sampled.held = waiting;
                    let reps: Vec<u64> = due.iter().map(|_| sampled.reps(weight)).collect();
                    for (event, reps) in due.iter().zip(reps) {
                        self.record(event, reps);
                    }
                }
            }
            ScaleUpdate::Release { slots, from } => {
                for slot in slots {
                    let Some(sampled) = self.sampled.get_mut(&slot) else {
                        continue;
                    };
                    sampled.released_from = Some(from);
                    let (now_on, waiting): (Vec<Event>, Vec<Event>) =
                        std::mem::take(&mut sampled.held)
                            .into_iter()
                            .partition(|e| e.ktime_ns >= from);
                    sampled.held = waiting;
                    for event in now_on {
                        self.record(&event, 1);
                    }
                }
            }
        }
    }

    /// How many events `event` stands for now, or None if it must wait for its cycle.
    fn sampling_weight(&mut self, event: &Event) -> Option<u64> {
        let Some(sampled) = self.sampled.get_mut(&event.slot) else {
            return Some(1);
        };
        let t = event.ktime_ns;
        if t < sampled.held_from || sampled.released_from.is_some_and(|from| t >= from) {
            return Some(1);
        }
        if t < sampled.closed_until {
            let weight = sampled.weight;
            return Some(sampled.reps(weight));
        }
        if sampled.held.len() >= MAX_HELD {
            let weight = sampled.planned_weight;
            return Some(sampled.reps(weight));
        }
        sampled.held.push(*event);
        None
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
        if let Some(reps) = self.sampling_weight(event) {
            self.apply_record(event, reps, kind, &workload, state);
        }
    }

    /// Applies a record standing for `reps` events (1 unless its probe is duty-cycled).
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
        self.reps = reps;
        match kind {
            ProbeKind::GrowsliceEntry => self.on_growslice(event, workload, state),
            ProbeKind::GrowsliceRet => self.on_growslice_ret(event),
            ProbeKind::HashGrow => self.on_hash_grow(event, workload, state),
            ProbeKind::MapGrowToSmall
            | ProbeKind::MapGrowToTable
            | ProbeKind::MapTableGrow
            | ProbeKind::MapTableSplit => self.on_swiss_growth(kind, event, state),
            ProbeKind::MakeMap => self.on_make_map(event.regs[usize::from(RBX)], state),
            ProbeKind::MakeMapSmall => self.on_make_map(0, state),
            ProbeKind::StartTheWorldEntry => self.on_start_the_world_entry(event, workload),
            ProbeKind::StopTheWorldEntry => self.on_stop_the_world_entry(event, workload),
            ProbeKind::StartTheWorldRet => self.on_start_the_world_ret(event, workload, state),
            ProbeKind::GcMarkTermination => self.on_gc_cycle(state),
            ProbeKind::GrowsliceBufEntry => {
                if self.buf_callers.len() >= MAX_PENDING {
                    self.buf_callers.clear();
                }
                self.buf_callers
                    .insert((event.tgid, event.goroutine), event.caller_pc);
            }
            // Bookkeeping for the RET, done in the kernel (mapwatch-ebpf `map_assign`).
            ProbeKind::MapAssignEntry | ProbeKind::MapAssignHash => {}
            ProbeKind::MapAssignRet => self.on_map_assign(event, state),
            ProbeKind::Mallocgc => self.on_malloc(event, state),
            ProbeKind::MallocgcSpecialized => {
                // Called by mallocgc too (Go 1.27): count only direct calls.
                let cache = self.process_children.entry(event.tgid).or_default();
                cache.bound();
                let symbolizers = &mut self.symbolizers;
                let via_mallocgc = *cache
                    .called_by_mallocgc
                    .entry(event.caller_pc)
                    .or_insert_with(|| {
                        symbolizers.get_mut(&event.tgid).is_some_and(|names| {
                            names
                                .call_site(event.caller_pc)
                                .is_some_and(|site| site.function == MALLOCGC)
                        })
                    });
                if !via_mallocgc {
                    self.on_malloc(event, state);
                }
            }
            ProbeKind::None => {}
        }
    }

    /// A mapassign_fast64 RET: the kernel located the slot (or says why not).
    fn on_map_assign(&mut self, event: &Event, state: u64) {
        let slot = (event.load_failed == 0)
            .then(|| map_assign::assigned_slot(event.loads))
            .flatten();
        let Some(slot) = slot else {
            debug!(
                failed = event.load_failed,
                loads = ?event.loads,
                "mapassign_fast64 slot not located"
            );
            return self.incomplete(ProbeKind::MapAssignRet);
        };
        let Some(w) = self.workloads.get(&state) else {
            return;
        };
        let (m, c) = (&self.metrics, &w.children);
        let position = child(
            &c.map_assign_bucket_position,
            &m.map_assign_bucket_position,
            &w.labels,
        );
        observe_n(position, slot.position, self.reps);
        let probe_length = child(&c.map_probe_length, &m.map_probe_length, &w.labels);
        observe_n(probe_length, slot.probe_length as f64, self.reps);
    }

    /// mallocgc(size, typ, needzero): size in RAX (src/runtime/malloc.go).
    fn on_malloc(&mut self, event: &Event, state: u64) {
        let Some(w) = self.workloads.get(&state) else {
            return;
        };
        let (m, c) = (&self.metrics, &w.children);
        child(&c.malloc_total, &m.malloc_total, &w.labels).inc_by(self.reps);
        child(&c.malloc_bytes_total, &m.malloc_bytes_total, &w.labels)
            .inc_by(event.regs[usize::from(RAX)] * self.reps);
    }

    fn on_growslice(&mut self, event: &Event, workload: &Workload, state: u64) {
        let abi = workload.facts.growslice;
        let elem_type = event.regs[usize::from(abi.elem_type)];
        self.name_growth(event, state, elem_type);
        let layout = self
            .symbolizers
            .get_mut(&event.tgid)
            .and_then(|s| s.elem_layout(elem_type));
        let Some(layout) = layout else {
            return self.incomplete(ProbeKind::GrowsliceEntry);
        };
        let reg = |r: u8| event.regs[usize::from(r)];
        let (elem_size, ptr_bytes) = (layout.size, layout.ptr_bytes);
        let growth = grown_capacity(
            workload.facts.slice_growth,
            reg(abi.old_cap),
            reg(abi.new_len),
            elem_size,
            ptr_bytes == 0,
        );
        self.count_growth_bytes(state, growth.new_bytes * self.reps);
        if let Some(w) = self.workloads.get(&state) {
            let new_cap = child(
                &w.children.slice_grow_new_cap,
                &self.metrics.slice_grow_new_cap,
                &w.labels,
            );
            observe_n(new_cap, growth.new_cap as f64, self.reps);
        }
        if !workload.exact {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.clear();
        }
        self.pending.insert(
            (event.tgid, event.goroutine),
            PendingGrowth {
                derived_cap: growth.new_cap,
            },
        );
    }

    /// Bytes of new backing arrays: the running total and the current GC cycle's.
    fn count_growth_bytes(&mut self, state: u64, bytes: u64) {
        let Some(w) = self.workloads.get_mut(&state) else {
            return;
        };
        child(
            &w.children.slice_grow_bytes_total,
            &self.metrics.slice_grow_bytes_total,
            &w.labels,
        )
        .inc_by(bytes);
        w.cycle.growth_bytes += bytes;
    }

    /// hashGrow at entry: count, B, noverflow, flags (loads 0–3). It doubles when the
    /// map is over its load factor, else grows in place (src/runtime/map.go hashGrow).
    fn on_hash_grow(&mut self, event: &Event, workload: &Workload, state: u64) {
        let [count, b, noverflow, _flags] = event.loads;
        let b = b as u8;
        let doubles = workload.facts.classic_load_factor.over(count + 1, b);
        let kind = if doubles { "double" } else { "same_size" };
        self.count_map_growth(state, kind);
        if event.load_failed != 0 {
            return self.incomplete(ProbeKind::HashGrow);
        }
        let Some(w) = self.workloads.get(&state) else {
            return;
        };
        let (m, c, labels, reps) = (&self.metrics, &w.children, &w.labels, self.reps);
        let size = child(&c.map_size_at_grow, &m.map_size_at_grow, labels);
        observe_n(size, count as f64, reps);
        let buckets_log2 = child(&c.map_buckets_log2, &m.map_buckets_log2, labels);
        observe_n(
            buckets_log2,
            f64::from(b) + f64::from(u8::from(doubles)),
            reps,
        );
        let slots = 8.0 * 2f64.powi(i32::from(b));
        let load_factor = child(
            &c.map_load_factor_at_grow,
            &m.map_load_factor_at_grow,
            labels,
        );
        observe_n(load_factor, count as f64 / slots, reps);
        let overflow = child(
            &c.map_overflow_buckets_at_grow,
            &m.map_overflow_buckets_at_grow,
            labels,
        );
        observe_n(overflow, noverflow as f64, reps);
    }

    /// Swiss growth at entry. Loads per kind (see plan::plan_swiss_growth):
    /// growToSmall/growToTable: m.used, m.dirLen; grow: m.used, m.dirLen, t.capacity,
    /// t.used (+ newCapacity in RDI); split: m.used, m.dirLen, t.localDepth,
    /// m.globalDepth.
    fn on_swiss_growth(&mut self, kind: ProbeKind, event: &Event, state: u64) {
        let label = match kind {
            ProbeKind::MapGrowToSmall => "to_small",
            ProbeKind::MapGrowToTable => "to_table",
            ProbeKind::MapTableGrow => "table_grow",
            _ => "table_split",
        };
        self.count_map_growth(state, label);
        if event.load_failed != 0 {
            return self.incomplete(kind);
        }
        let Some(w) = self.workloads.get(&state) else {
            return;
        };
        let (m, c, labels, reps) = (&self.metrics, &w.children, &w.labels, self.reps);
        let [used, dir_len, third, fourth] = event.loads;
        let size = child(&c.map_size_at_grow, &m.map_size_at_grow, labels);
        observe_n(size, used as f64, reps);
        // The map's slots after growth / 8 (groups), as log2. A small map is one group;
        // growToTable makes one 16-slot table (src/internal/runtime/maps/map.go). For a
        // table's grow or split the kernel totals the slots of all the map's tables at
        // entry (`Event::derived`): grow replaces the table's capacity with newCapacity;
        // split replaces a full table (rehash splits only when doubling would pass
        // maxTableCapacity = 1024, table.go) with two of 1024 slots each.
        const MAX_TABLE_CAPACITY: u64 = 1024;
        let slots_before = (event.derived != DERIVED_UNKNOWN).then_some(event.derived);
        let (slots_after, load_factor) = match kind {
            ProbeKind::MapGrowToSmall => (Some(8), used as f64 / 8.0),
            ProbeKind::MapGrowToTable => (Some(16), used as f64 / 8.0),
            ProbeKind::MapTableGrow => {
                let new_capacity = event.regs[usize::from(RDI)] & 0xffff;
                let (capacity, table_used) = (third.max(1), fourth);
                (
                    slots_before.map(|s| (s + new_capacity).saturating_sub(capacity)),
                    table_used as f64 / capacity as f64,
                )
            }
            _ => {
                let (local_depth, global_depth) = (third, fourth);
                let dir_after = if local_depth == global_depth {
                    dir_len * 2
                } else {
                    dir_len
                };
                let directory = child(&c.map_directory_len, &m.map_directory_len, labels);
                observe_n(directory, dir_after as f64, reps);
                (slots_before.map(|s| s + MAX_TABLE_CAPACITY), 7.0 / 8.0)
            }
        };
        let load = child(
            &c.map_load_factor_at_grow,
            &m.map_load_factor_at_grow,
            labels,
        );
        observe_n(load, load_factor, reps);
        let Some(slots_after) = slots_after else {
            return self.incomplete(kind);
        };
        let log2_groups = (slots_after.max(8) as f64 / 8.0).log2();
        let buckets_log2 = child(&c.map_buckets_log2, &m.map_buckets_log2, labels);
        observe_n(buckets_log2, log2_groups, reps);
    }

    fn count_map_growth(&mut self, state: u64, kind: &'static str) {
        if let Some(w) = self.workloads.get_mut(&state) {
            w.map_grow_total(&self.metrics, kind).inc_by(self.reps);
        }
    }

    fn on_make_map(&self, hint: u64, state: u64) {
        let Some(w) = self.workloads.get(&state) else {
            return;
        };
        // The hint is an int; a negative one panics in makemap, record it as 0.
        let hint = i64::try_from(hint).unwrap_or(0).max(0);
        let hints = child(
            &w.children.map_make_hint,
            &self.metrics.map_make_hint,
            &w.labels,
        );
        observe_n(hints, hint as f64, self.reps);
    }
    fn on_start_the_world_entry(&mut self, event: &Event, workload: &Workload) {
        if let StwAbi::WorldStopArgument { reason, started } = workload.facts.stw {
            let reg = |r: u8| event.regs[usize::from(r)];
            // stwReason is a uint8 in the low byte of its register.
            let entry = (reg(reason) & 0xff, reg(started));
            self.pending_start
                .insert((event.tgid, event.goroutine), entry);
        }
    }

    fn on_stop_the_world_entry(&mut self, event: &Event, workload: &Workload) {
        if let StwAbi::StopThenStart { reason } = workload.facts.stw {
            let reason = reason.map_or(0, |r| event.regs[usize::from(r)] & 0xff);
            // Go's nanotime and bpf_ktime_get_ns read the same CLOCK_MONOTONIC.
            self.pending_stop
                .insert(event.tgid, (reason, event.ktime_ns));
        }
    }

    /// The RET of startTheWorldWithSema: RAX = `now`, the end of the pause.
    fn on_start_the_world_ret(&mut self, event: &Event, workload: &Workload, state: u64) {
        let now = event.regs[usize::from(RAX)];
        let begun = match workload.facts.stw {
            StwAbi::WorldStopArgument { .. } => {
                self.pending_start.remove(&(event.tgid, event.goroutine))
            }
            StwAbi::StopThenStart { .. } => self.pending_stop.remove(&event.tgid),
        };
        let Some((reason, started)) = begun else {
            return; // attached mid-pause
        };
        let Some(w) = self.workloads.get_mut(&state) else {
            return;
        };
        let pause_ns = now.saturating_sub(started);
        let [namespace, pod, container, binary, go_version] = w.labels.values();
        let pauses = self.metrics.stw_pause_seconds.with_label_values(&[
            namespace,
            pod,
            container,
            binary,
            go_version,
            stw_reason_name(reason),
        ]);
        observe_n(&pauses, pause_ns as f64 / 1e9, self.reps);
        w.cycle.stw_ns += pause_ns;
    }

    fn on_gc_cycle(&mut self, state: u64) {
        let Some(w) = self.workloads.get_mut(&state) else {
            return;
        };
        let labels = w.labels.values();
        self.metrics
            .gc_cycles_total
            .with_label_values(&labels)
            .inc_by(self.reps);
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

    fn incomplete(&self, kind: ProbeKind) {
        self.metrics
            .events_incomplete_total
            .with_label_values(&[kind.label()])
            .inc();
    }

    /// Counts one slice growth under its element type and call site (capped labels).
    fn name_growth(&mut self, event: &Event, state: u64, elem_type_address: u64) {
        let Some(w) = self.workloads.get_mut(&state) else {
            return;
        };
        let m = &self.metrics;
        let Some(symbolizer) = self.symbolizers.get_mut(&event.tgid) else {
            let [namespace, pod, container, binary, go_version] = w.labels.values();
            w.children
                .slice_grow_unknown
                .get_or_init(|| {
                    m.slice_grow_total.with_label_values(&[
                        namespace, pod, container, binary, go_version, "unknown",
                    ])
                })
                .inc_by(self.reps);
            return;
        };
        let cache = self.process_children.entry(event.tgid).or_default();
        cache.bound();
        cache
            .by_elem_type
            .entry(elem_type_address)
            .or_insert_with(|| w.slice_grow_for_type(m, &symbolizer.type_name(elem_type_address)))
            .inc_by(self.reps);
        let mut site_of = |pc: u64| -> SiteChild {
            if let Some(site) = cache.by_caller.get(&pc) {
                return site.clone();
            }
            let site = match symbolizer.call_site(pc) {
                None => SiteChild::Unknown,
                Some(site) if site.function == GROWSLICE_BUF => SiteChild::ViaGrowsliceBuf(site),
                Some(site) => SiteChild::Line(w.site_grow_for(m, &site)),
            };
            cache.by_caller.insert(pc, site.clone());
            site
        };
        let counter = match site_of(event.caller_pc) {
            SiteChild::Unknown => return,
            SiteChild::Line(counter) => counter,
            SiteChild::ViaGrowsliceBuf(own) => {
                match self
                    .buf_callers
                    .remove(&(event.tgid, event.goroutine))
                    .map(&mut site_of)
                {
                    Some(SiteChild::Line(outer)) => outer,
                    _ => w.site_grow_for(m, &own),
                }
            }
        };
        counter.inc_by(self.reps);
    }

    fn on_growslice_ret(&mut self, event: &Event) {
        let result = match self.pending.remove(&(event.tgid, event.goroutine)) {
            None => CheckResult::Unpaired,
            Some(p) if p.derived_cap == event.regs[usize::from(GROWSLICE_RESULT_CAP)] => {
                CheckResult::Match
            }
            Some(p) => {
                debug!(
                    derived = p.derived_cap,
                    actual = event.regs[usize::from(GROWSLICE_RESULT_CAP)],
                    "derived slice capacity differs from growslice's result"
                );
                CheckResult::Mismatch
            }
        };
        let result = match result {
            CheckResult::Match => "match",
            CheckResult::Mismatch => "mismatch",
            CheckResult::Unpaired => "unpaired",
        };
        self.metrics
            .exact_checks_total
            .with_label_values(&["slice_new_cap", result])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::goruntime::versions::{GoVersion, facts_for};

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
        let state = aggregator.workload_key(&api.labels);
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
