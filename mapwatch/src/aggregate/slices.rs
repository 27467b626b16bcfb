//! Slice growth: growslice entries (new capacity and bytes, by element type and append
//! site), exact mode's check of the derived capacity against growslice's RET, and Go
//! 1.26+'s growsliceBuf, whose caller is the append site of the growslice it calls.
use foldhash::HashMap;
use mapwatch_common::{Event, ProbeKind};
use tracing::debug;

use super::{
    Aggregator, Workload,
    children::{SiteChild, child},
    observe::Observation,
    process::ProcessState,
};
use crate::{
    goruntime::functions::GROWSLICE_BUF,
    goruntime::{
        slice_growth::grown_capacity,
        versions::{GROWSLICE_RESULT_CAP, GROWSLICE_RESULT_PTR},
    },
};

/// Per process: entries waiting for what comes next on the same goroutine.
#[derive(Default)]
pub(super) struct SliceCalls {
    /// Exact mode: by goroutine, the capacity derived at growslice's entry, until its RET
    /// says what growslice returned.
    derived_caps: HashMap<u64, u64>,
    /// By goroutine: the append site of the latest growsliceBuf call, for the growslice
    /// it calls (whose own caller is growsliceBuf).
    buf_callers: HashMap<u64, u64>,
}

/// Bound on the entries a process keeps waiting: a goroutine that panicked inside
/// growslice leaves its entry behind; this keeps such leftovers from accumulating.
const MAX_WAITING: usize = 65536;

impl Aggregator {
    /// growslice at entry. The new capacity is derived (growth rule, element layout read
    /// from the binary) because the result exists only at the RET, whose probe costs
    /// several times an entry's: exact mode probes it only to check the derivation.
    pub(super) fn on_growslice(
        &mut self,
        event: &Event,
        workload: &Workload,
        state: u64,
        reps: u64,
    ) {
        let abi = workload.facts.growslice;
        let elem_type = event.regs[usize::from(abi.elem_type)];
        let caller_pc = self.name_growth(event, state, elem_type, reps);
        let layout = self
            .processes
            .get_mut(&event.tgid)
            .and_then(|p| p.symbolizer.as_mut())
            .and_then(|s| s.elem_layout(elem_type));
        let reg = |r: u8| event.regs[usize::from(r)];
        let observed = |elem_size, new_cap, new_bytes| Observation::SliceGrowth {
            goroutine: event.goroutine,
            caller_pc,
            elem_type,
            elem_size,
            old_ptr: reg(abi.old_ptr),
            old_len: abi.old_len.read(&abi, &event.regs),
            old_cap: reg(abi.old_cap),
            new_len: reg(abi.new_len),
            new_cap,
            new_bytes,
        };
        let Some(layout) = layout else {
            self.observe(event, || observed(None, None, None));
            return self.incomplete(ProbeKind::GrowsliceEntry);
        };
        let growth = grown_capacity(
            workload.facts.slice_growth,
            reg(abi.old_cap),
            reg(abi.new_len),
            layout.size,
            layout.ptr_bytes == 0,
        );
        self.observe(event, || {
            observed(
                Some(layout.size),
                Some(growth.new_cap),
                Some(growth.new_bytes),
            )
        });
        self.count_growth_bytes(state, growth.new_bytes * reps);
        if let Some(w) = self.workloads.get(state) {
            let new_cap = child(
                &w.children.slice_grow_new_cap,
                &self.metrics.slice_grow_new_cap,
                &w.labels,
            );
            new_cap.observe_n(growth.new_cap as f64, reps);
        }
        if !workload.exact {
            return;
        }
        let waiting = &mut self
            .processes
            .entry(event.tgid)
            .or_default()
            .slices
            .derived_caps;
        if waiting.len() >= MAX_WAITING {
            waiting.clear();
        }
        waiting.insert(event.goroutine, growth.new_cap);
    }

    /// Bytes of new backing arrays: the running total and the current GC cycle's.
    pub(super) fn count_growth_bytes(&mut self, state: u64, bytes: u64) {
        let Some(w) = self.workloads.get_mut(state) else {
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

    /// Counts the growth under its element type and append site (capped labels).
    /// Returns the append site's return address: growsliceBuf's caller when growslice
    /// was called by growsliceBuf.
    fn name_growth(&mut self, event: &Event, state: u64, elem_type_address: u64, reps: u64) -> u64 {
        let Some(w) = self.workloads.get_mut(state) else {
            return event.caller_pc;
        };
        let m = &self.metrics;
        let Some(ProcessState {
            symbolizer: Some(symbolizer),
            children: cache,
            slices: calls,
            ..
        }) = self.processes.get_mut(&event.tgid)
        else {
            let [namespace, pod, container, binary, go_version] = w.labels.values();
            w.children
                .slice_grow_unknown
                .get_or_init(|| {
                    m.slice_grow_total.with_label_values(&[
                        namespace, pod, container, binary, go_version, "unknown",
                    ])
                })
                .inc_by(reps);
            return event.caller_pc;
        };
        cache.bound();
        cache
            .by_elem_type
            .entry(elem_type_address)
            .or_insert_with(|| w.slice_grow_for_type(m, &symbolizer.type_name(elem_type_address)))
            .inc_by(reps);
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
        let (counter, pc) = match site_of(event.caller_pc) {
            SiteChild::Unknown => return event.caller_pc,
            SiteChild::Line(counter) => (counter, event.caller_pc),
            SiteChild::ViaGrowsliceBuf(own) => {
                let outer_pc = calls.buf_callers.remove(&event.goroutine);
                match outer_pc.map(|pc| (site_of(pc), pc)) {
                    Some((SiteChild::Line(outer), pc)) => (outer, pc),
                    _ => (w.site_grow_for(m, &own), event.caller_pc),
                }
            }
        };
        counter.inc_by(reps);
        pc
    }

    /// Exact mode: growslice's RET against the capacity derived at its entry.
    pub(super) fn on_growslice_ret(&mut self, event: &Event) {
        let derived = self
            .processes
            .get_mut(&event.tgid)
            .and_then(|p| p.slices.derived_caps.remove(&event.goroutine));
        let actual = event.regs[usize::from(GROWSLICE_RESULT_CAP)];
        self.observe(event, || Observation::SliceGrown {
            goroutine: event.goroutine,
            new_ptr: event.regs[usize::from(GROWSLICE_RESULT_PTR)],
            new_cap: actual,
        });
        let result = match derived {
            None => "unpaired",
            Some(derived) if derived == actual => "match",
            Some(derived) => {
                debug!(
                    derived,
                    actual, "derived slice capacity differs from growslice's result"
                );
                "mismatch"
            }
        };
        self.metrics
            .exact_checks_total
            .with_label_values(&["slice_new_cap", result])
            .inc();
    }

    pub(super) fn on_growslice_buf(&mut self, event: &Event) {
        let callers = &mut self
            .processes
            .entry(event.tgid)
            .or_default()
            .slices
            .buf_callers;
        if callers.len() >= MAX_WAITING {
            callers.clear();
        }
        callers.insert(event.goroutine, event.caller_pc);
    }
}
