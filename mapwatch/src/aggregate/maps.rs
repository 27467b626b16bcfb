//! Map growth (classic hashGrow; Swiss growToSmall, growToTable, table grow and split),
//! makemap hints, and where mapassign_fast64 put its key (`map_assign.rs` reads the
//! record).
use mapwatch_common::{DERIVED_UNKNOWN, Event, ProbeKind};
use tracing::debug;

use super::{Aggregator, Workload, children::child, map_assign, observe::Observation};
use crate::{
    goruntime::versions::{RAX, RDI},
    plan,
};

impl Aggregator {
    /// hashGrow at entry: count, B, noverflow, flags (loads 0–3). It doubles when the
    /// map is over its load factor, else grows in place (src/runtime/map.go hashGrow).
    pub(super) fn on_hash_grow(
        &mut self,
        event: &Event,
        workload: &Workload,
        state: u64,
        reps: u64,
    ) {
        let [count, b, noverflow, _flags] = event.loads;
        let b = b as u8;
        let doubles = workload.facts.classic_load_factor.over(count + 1, b);
        let kind = if doubles { "double" } else { "same_size" };
        self.count_map_growth(state, kind, reps);
        let complete = event.load_failed == 0;
        let slots = 8.0 * 2f64.powi(i32::from(b));
        let (map_reg, type_reg) = plan::map_growth_registers(ProbeKind::HashGrow);
        self.observe(event, || Observation::MapGrowth {
            kind,
            goroutine: event.goroutine,
            caller_pc: event.caller_pc,
            map: event.regs[usize::from(map_reg)],
            map_type: event.regs[usize::from(type_reg)],
            size: complete.then_some(count),
            load_factor: complete.then(|| count as f64 / slots),
            overflow_buckets: complete.then_some(noverflow),
            slots_after: complete.then(|| 8 << (u32::from(b) + u32::from(doubles))),
        });
        if !complete {
            return self.incomplete(ProbeKind::HashGrow);
        }
        let Some(w) = self.workloads.get(state) else {
            return;
        };
        let (m, c, labels) = (&self.metrics, &w.children, &w.labels);
        let size = child(&c.map_size_at_grow, &m.map_size_at_grow, labels);
        size.observe_n(count as f64, reps);
        let buckets_log2 = child(&c.map_buckets_log2, &m.map_buckets_log2, labels);
        buckets_log2.observe_n(f64::from(b) + f64::from(u8::from(doubles)), reps);
        let load_factor = child(
            &c.map_load_factor_at_grow,
            &m.map_load_factor_at_grow,
            labels,
        );
        load_factor.observe_n(count as f64 / slots, reps);
        let overflow = child(
            &c.map_overflow_buckets_at_grow,
            &m.map_overflow_buckets_at_grow,
            labels,
        );
        overflow.observe_n(noverflow as f64, reps);
    }

    /// Swiss growth at entry. Loads per kind (see plan::plan_swiss_growth):
    /// growToSmall/growToTable: m.used, m.dirLen; grow: m.used, m.dirLen, t.capacity,
    /// t.used (+ newCapacity in RDI); split: m.used, m.dirLen, t.localDepth,
    /// m.globalDepth.
    pub(super) fn on_swiss_growth(
        &mut self,
        kind: ProbeKind,
        event: &Event,
        state: u64,
        reps: u64,
    ) {
        let label = match kind {
            ProbeKind::MapGrowToSmall => "to_small",
            ProbeKind::MapGrowToTable => "to_table",
            ProbeKind::MapTableGrow => "table_grow",
            _ => "table_split",
        };
        self.count_map_growth(state, label, reps);
        let (map_reg, type_reg) = plan::map_growth_registers(kind);
        let (map, map_type) = (
            event.regs[usize::from(map_reg)],
            event.regs[usize::from(type_reg)],
        );
        if event.load_failed != 0 {
            self.observe(event, || Observation::MapGrowth {
                kind: label,
                goroutine: event.goroutine,
                caller_pc: event.caller_pc,
                map,
                map_type,
                size: None,
                load_factor: None,
                overflow_buckets: None,
                slots_after: None,
            });
            return self.incomplete(kind);
        }
        let [used, dir_len, third, fourth] = event.loads;
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
                if let Some(w) = self.workloads.get(state) {
                    let (m, c) = (&self.metrics, &w.children);
                    let directory = child(&c.map_directory_len, &m.map_directory_len, &w.labels);
                    directory.observe_n(dir_after as f64, reps);
                }
                (slots_before.map(|s| s + MAX_TABLE_CAPACITY), 7.0 / 8.0)
            }
        };
        self.observe(event, || Observation::MapGrowth {
            kind: label,
            goroutine: event.goroutine,
            caller_pc: event.caller_pc,
            map,
            map_type,
            size: Some(used),
            load_factor: Some(load_factor),
            overflow_buckets: None,
            slots_after,
        });
        let Some(w) = self.workloads.get(state) else {
            return;
        };
        let (m, c, labels) = (&self.metrics, &w.children, &w.labels);
        let size = child(&c.map_size_at_grow, &m.map_size_at_grow, labels);
        size.observe_n(used as f64, reps);
        let load = child(
            &c.map_load_factor_at_grow,
            &m.map_load_factor_at_grow,
            labels,
        );
        load.observe_n(load_factor, reps);
        let Some(slots_after) = slots_after else {
            return self.incomplete(kind);
        };
        let log2_groups = (slots_after.max(8) as f64 / 8.0).log2();
        let buckets_log2 = child(&c.map_buckets_log2, &m.map_buckets_log2, labels);
        buckets_log2.observe_n(log2_groups, reps);
    }

    fn count_map_growth(&mut self, state: u64, kind: &'static str, reps: u64) {
        if let Some(w) = self.workloads.get_mut(state) {
            w.map_grow_total(&self.metrics, kind).inc_by(reps);
        }
    }

    pub(super) fn on_make_map(&mut self, event: &Event, hint: u64, state: u64, reps: u64) {
        // The hint is an int; a negative one panics in makemap, record it as 0.
        let hint = i64::try_from(hint).unwrap_or(0).max(0);
        self.observe(event, || Observation::MakeMap {
            goroutine: event.goroutine,
            caller_pc: event.caller_pc,
            map_type: event.regs[usize::from(RAX)],
            hint: hint as u64,
        });
        let Some(w) = self.workloads.get(state) else {
            return;
        };
        let hints = child(
            &w.children.map_make_hint,
            &self.metrics.map_make_hint,
            &w.labels,
        );
        hints.observe_n(hint as f64, reps);
    }

    /// A mapassign_fast64 RET: the kernel located the slot (or says why not).
    pub(super) fn on_map_assign(&mut self, event: &Event, state: u64, reps: u64) {
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
        let Some(w) = self.workloads.get(state) else {
            return;
        };
        let (m, c) = (&self.metrics, &w.children);
        let position = child(
            &c.map_assign_bucket_position,
            &m.map_assign_bucket_position,
            &w.labels,
        );
        position.observe_n(slot.position, reps);
        let probe_length = child(&c.map_probe_length, &m.map_probe_length, &w.labels);
        probe_length.observe_n(slot.probe_length as f64, reps);
    }
}
