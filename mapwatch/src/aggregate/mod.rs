//! The one task that owns all aggregation state: records in, metric updates out.
//! No locks on the hot path: only this task touches the state below; the registry's
//! metric handles are atomics that scrapes read.
use std::{collections::HashMap, sync::Arc};

use mapwatch_common::{Event, ProbeKind};
use tokio::sync::mpsc;
use tracing::debug;

use crate::{
    goruntime::{RuntimeFacts, slice_growth::grown_capacity, versions::GROWSLICE_RESULT_CAP},
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
            // Map records are counted (received) but not yet interpreted: `attach` does
            // not plan map probes until the signals issue lands.
            ProbeKind::HashGrow
            | ProbeKind::MapGrowToSmall
            | ProbeKind::MapGrowToTable
            | ProbeKind::MapTableGrow
            | ProbeKind::MapTableSplit
            | ProbeKind::MakeMap
            | ProbeKind::MakeMapSmall
            | ProbeKind::None => {}
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
