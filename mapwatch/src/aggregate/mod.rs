//! The one task that owns all aggregation state: records in, metric updates out.
//! No locks on the hot path: only this task touches the state below; the registry's
//! metric handles are atomics that scrapes read.
use std::{collections::HashMap, sync::Arc};

use mapwatch_common::{Event, ProbeKind};
use tokio::sync::mpsc;
use tracing::debug;

use crate::{
    goruntime::{
        RuntimeFacts,
        slice_growth::grown_capacity,
        versions::{GROWSLICE_RESULT_CAP, RBX, RDI},
    },
    metrics::{Metrics, WorkloadLabels},
    plan::probe_name,
};

/// What a probe slot belongs to; registered before the slot's probe is attached.
#[derive(Debug, Clone)]
pub struct SlotRegistration {
    pub slot: u32,
    pub kind: ProbeKind,
    pub workload: Arc<Workload>,
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
#[derive(Debug)]
pub enum Input {
    Register(Vec<SlotRegistration>),
    Events(Vec<Event>),
}

struct Slot {
    kind: ProbeKind,
    workload: Arc<Workload>,
}

/// A growslice entry waiting for its RET (exact mode), keyed by (tgid, goroutine).
struct PendingGrowth {
    derived_cap: u64,
}

pub struct Aggregator {
    metrics: Arc<Metrics>,
    slots: HashMap<u32, Slot>,
    pending: HashMap<(u32, u64), PendingGrowth>,
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
        Aggregator {
            metrics,
            slots: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Applies inputs until every sender is gone.
    pub async fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        while let Some(input) = inputs.recv().await {
            self.apply(input);
        }
        debug!("aggregator: input closed");
    }

    pub fn apply(&mut self, input: Input) {
        match input {
            Input::Register(registrations) => {
                for r in registrations {
                    self.slots.insert(
                        r.slot,
                        Slot {
                            kind: r.kind,
                            workload: r.workload,
                        },
                    );
                }
            }
            Input::Events(events) => events.iter().for_each(|e| self.on_event(e)),
        }
    }

    fn on_event(&mut self, event: &Event) {
        let Some(slot) = self.slots.get(&event.slot) else {
            debug!(slot = event.slot, "record for an unregistered slot");
            return;
        };
        let kind = slot.kind;
        let workload = Arc::clone(&slot.workload);
        let probe = probe_name(kind);
        self.metrics
            .events_received_total
            .with_label_values(&[probe])
            .inc();
        match kind {
            ProbeKind::GrowsliceEntry => self.on_growslice(event, &workload),
            ProbeKind::GrowsliceRet => self.on_growslice_ret(event),
            ProbeKind::HashGrow => self.on_hash_grow(event, &workload),
            ProbeKind::MapGrowToSmall
            | ProbeKind::MapGrowToTable
            | ProbeKind::MapTableGrow
            | ProbeKind::MapTableSplit => self.on_swiss_growth(kind, event, &workload),
            ProbeKind::MakeMap => self.on_make_map(event.regs[usize::from(RBX)], &workload),
            ProbeKind::MakeMapSmall => self.on_make_map(0, &workload),
            ProbeKind::None => {}
        }
    }

    fn on_growslice(&mut self, event: &Event, workload: &Workload) {
        let labels = workload.labels.values();
        self.metrics
            .slice_grow_total
            .with_label_values(&labels)
            .inc();
        if event.load_failed != 0 {
            self.metrics
                .events_incomplete_total
                .with_label_values(&[probe_name(ProbeKind::GrowsliceEntry)])
                .inc();
            return;
        }
        let abi = workload.facts.growslice;
        let reg = |r: u8| event.regs[usize::from(r)];
        let (elem_size, ptr_bytes) = (event.loads[0], event.loads[1]);
        let growth = grown_capacity(
            workload.facts.slice_growth,
            reg(abi.old_cap),
            reg(abi.new_len),
            elem_size,
            ptr_bytes == 0,
        );
        self.metrics
            .slice_grow_bytes_total
            .with_label_values(&labels)
            .inc_by(growth.new_bytes);
        self.metrics
            .slice_grow_new_cap
            .with_label_values(&labels)
            .observe(growth.new_cap as f64);
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

    /// hashGrow at entry: count, B, noverflow, flags (loads 0–3). It doubles when the
    /// map is over its load factor, else grows in place (src/runtime/map.go hashGrow).
    fn on_hash_grow(&mut self, event: &Event, workload: &Workload) {
        let [count, b, noverflow, _flags] = event.loads;
        let b = b as u8;
        let doubles = workload.facts.classic_load_factor.over(count + 1, b);
        let kind = if doubles { "double" } else { "same_size" };
        self.count_map_growth(workload, kind);
        if event.load_failed != 0 {
            return self.incomplete(ProbeKind::HashGrow);
        }
        let labels = workload.labels.values();
        let m = &self.metrics;
        m.map_size_at_grow
            .with_label_values(&labels)
            .observe(count as f64);
        m.map_buckets_log2
            .with_label_values(&labels)
            .observe(f64::from(b) + f64::from(u8::from(doubles)));
        let slots = 8.0 * 2f64.powi(i32::from(b));
        m.map_load_factor_at_grow
            .with_label_values(&labels)
            .observe(count as f64 / slots);
        m.map_overflow_buckets_at_grow
            .with_label_values(&labels)
            .observe(noverflow as f64);
    }

    /// Swiss growth at entry. Loads per kind (see plan::plan_swiss_growth):
    /// growToSmall/growToTable: m.used, m.dirLen; grow: m.used, m.dirLen, t.capacity,
    /// t.used (+ newCapacity in RDI); split: m.used, m.dirLen, t.localDepth,
    /// m.globalDepth.
    fn on_swiss_growth(&mut self, kind: ProbeKind, event: &Event, workload: &Workload) {
        let label = match kind {
            ProbeKind::MapGrowToSmall => "to_small",
            ProbeKind::MapGrowToTable => "to_table",
            ProbeKind::MapTableGrow => "table_grow",
            _ => "table_split",
        };
        self.count_map_growth(workload, label);
        if event.load_failed != 0 {
            return self.incomplete(kind);
        }
        let [used, dir_len, third, fourth] = event.loads;
        let labels = workload.labels.values();
        let m = &self.metrics;
        m.map_size_at_grow
            .with_label_values(&labels)
            .observe(used as f64);
        // Slots after growth / 8 (groups), as log2: a small map is one group; growToTable
        // makes a 16-slot table (src/internal/runtime/maps/map.go); split makes two
        // tables of maxTableCapacity = 1024.
        let (log2_groups, load_factor) = match kind {
            ProbeKind::MapGrowToSmall => (0.0, used as f64 / 8.0),
            ProbeKind::MapGrowToTable => (1.0, used as f64 / 8.0),
            ProbeKind::MapTableGrow => {
                let new_capacity = event.regs[usize::from(RDI)] & 0xffff;
                let (capacity, table_used) = (third.max(1), fourth);
                (
                    (new_capacity.max(8) as f64 / 8.0).log2(),
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
                m.map_directory_len
                    .with_label_values(&labels)
                    .observe(dir_after as f64);
                (8.0, 7.0 / 8.0)
            }
        };
        m.map_buckets_log2
            .with_label_values(&labels)
            .observe(log2_groups);
        m.map_load_factor_at_grow
            .with_label_values(&labels)
            .observe(load_factor);
    }

    fn count_map_growth(&self, workload: &Workload, kind: &str) {
        let [namespace, pod, container, binary, go_version] = workload.labels.values();
        self.metrics
            .map_grow_total
            .with_label_values(&[namespace, pod, container, binary, go_version, kind])
            .inc();
    }

    fn on_make_map(&self, hint: u64, workload: &Workload) {
        // The hint is an int; a negative one panics in makemap, record it as 0.
        let hint = i64::try_from(hint).unwrap_or(0).max(0);
        self.metrics
            .map_make_hint
            .with_label_values(&workload.labels.values())
            .observe(hint as f64);
    }

    fn incomplete(&self, kind: ProbeKind) {
        self.metrics
            .events_incomplete_total
            .with_label_values(&[probe_name(kind)])
            .inc();
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
