//! Probe groups and their priorities: the probes of a process grouped per signal (the
//! unit that is attached, detached and given a share of the budget), each group rare
//! or hot, each slot with the cost of one of its hits.
use mapwatch_common::ProbeKind;

use super::cost::{HitCost, site_class};
use crate::plan::ProbePlan;

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
        ProbeKind::MakeMap | ProbeKind::MakeMapSmall | ProbeKind::MakeMapRet => {
            ("makemap", Priority::Rare)
        }
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
    /// A trap while the slot is paused: the program returns before reading anything.
    pub paused_ns: f64,
}

impl SlotCost {
    /// What `hits` are believed to have cost the process, ns.
    pub(super) fn believed(&self, hits: SlotHits) -> f64 {
        hits.recorded as f64 * self.per_hit_ns + hits.paused as f64 * self.paused_ns
    }
}

/// A slot's hit totals in the kernel: hits it counted and recorded, and traps while it
/// was paused (around its windows, while breakpoints go in and out), which record
/// nothing but cost the process a trap each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotHits {
    pub recorded: u64,
    pub paused: u64,
}

impl SlotHits {
    /// The hits since the `earlier` totals, never below zero.
    pub(super) fn since(self, earlier: SlotHits) -> SlotHits {
        SlotHits {
            recorded: self.recorded.saturating_sub(earlier.recorded),
            paused: self.paused.saturating_sub(earlier.paused),
        }
    }
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
        let class = site_class(bytes);
        let slot = SlotCost {
            slot,
            per_hit_ns: cost.of(class, reads),
            paused_ns: cost.of(class, 0),
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

#[cfg(test)]
mod tests {
    use super::*;

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
                    per_hit_ns: 1000.0,
                    paused_ns: 1000.0
                },
                SlotCost {
                    slot: 2,
                    per_hit_ns: 4000.0,
                    paused_ns: 4000.0
                }
            ]
        );
        assert_eq!(groups[1].priority, Priority::Rare);
        assert_eq!(groups[1].slots[0].per_hit_ns, 1400.0);
    }
}
