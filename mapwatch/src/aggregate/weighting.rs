//! How the records of duty-cycled slots are weighted. The overhead budget attaches
//! some probes only part of the time, so each of their records stands for several
//! events: `reps`, the count every metric update of the record is made with.
//!
//! A record's weight (the target's work over its cycle / its work while the probe was
//! attached, see `budget::cycles`) is known only when its cycle ends, so
//! [`DutyCycledSlots`] keeps the records of an open cycle until the budget's
//! [`ScaleUpdate`] closes it. Then it paces them out over as long as the cycle lasted
//! ([`DutyCycledSlots::release`]): counters then rise as steadily as the events
//! happened, a cycle later, instead of jumping once per cycle — `rate(…[1m])` over
//! cycles of 40 s would swing between 0 and twice the truth.
use std::collections::BTreeMap;

use foldhash::HashMap;
use mapwatch_common::Event;

/// Nanoseconds on CLOCK_MONOTONIC: the clock of `bpf_ktime_get_ns`, which stamps the
/// records.
pub type Nanos = u64;

/// Now on CLOCK_MONOTONIC, in ns (the records' clock).
pub fn monotonic_ns() -> Nanos {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What the aggregator must do with the records of duty-cycled slots.
#[derive(Debug, Clone, PartialEq)]
pub enum ScaleUpdate {
    /// Records of `slots` stamped at or after `from` wait for the weight of their cycle;
    /// `planned_weight` applies if too many wait.
    Hold {
        slots: Vec<u32>,
        from: Nanos,
        planned_weight: f64,
    },
    /// A cycle ended at `until`: the waiting records of each slot stamped before it (and
    /// late ones) weigh `weight`. They are released evenly over the `spread` after
    /// `until` (0: at once).
    Close {
        weights: Vec<(u32, f64)>,
        until: Nanos,
        spread: Nanos,
    },
    /// Records of `slots` stamped at or after `from` weigh 1 again (always on).
    Release { slots: Vec<u32>, from: Nanos },
}

/// Records one duty-cycled slot may hold (128 bytes each: 32 MiB), to bound memory.
/// Sized for a 30 s cycle at ~7k records/s, what a 1% budget allows a probe. Cycles
/// last up to 60 s (`budget::cycles::MAX_CYCLE` × 1.5), over which it holds ~4.4k
/// records/s: a busier slot's records past it are weighed at once with the planned
/// weight instead of the cycle's measured one.
const MAX_HELD: usize = 1 << 18;

/// A record due now, and how many events it stands for.
pub(super) type Weighed = (Event, u64);

/// The duty-cycled slots, by slot number.
#[derive(Default)]
pub(super) struct DutyCycledSlots {
    slots: HashMap<u32, Sampled>,
    /// Weighed records of closed cycles, by (release time, sequence number).
    paced: BTreeMap<(Nanos, u64), Weighed>,
    sequence: u64,
}

/// Records of one duty-cycled slot, and what they will weigh. Late records of a closed
/// cycle take its weight.
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

    /// All held records, at the weight of the last closed cycle or else the planned
    /// one: the best known.
    fn drain_at_last_weight(mut self, due: &mut Vec<Weighed>) {
        let weight = self.weight;
        for event in std::mem::take(&mut self.held) {
            due.push((event, self.reps(weight)));
        }
    }
}

impl DutyCycledSlots {
    /// How many events `event` stands for now, or None if it waits for its cycle.
    pub fn weigh(&mut self, event: &Event) -> Option<u64> {
        let Some(sampled) = self.slots.get_mut(&event.slot) else {
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

    /// Applies `update`; returns the records it makes due, in the order they happened.
    pub fn update(&mut self, update: ScaleUpdate) -> Vec<Weighed> {
        let mut due = Vec::new();
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
                    if let Some(old) = self.slots.insert(slot, fresh) {
                        old.drain_at_last_weight(&mut due);
                    }
                }
            }
            ScaleUpdate::Close {
                weights,
                until,
                spread,
            } => {
                let mut closed = Vec::new();
                for (slot, weight) in weights {
                    let Some(sampled) = self.slots.get_mut(&slot) else {
                        continue;
                    };
                    sampled.weight = weight;
                    sampled.closed_until = sampled.closed_until.max(until);
                    let (done, waiting): (Vec<Event>, Vec<Event>) =
                        std::mem::take(&mut sampled.held)
                            .into_iter()
                            .partition(|e| e.ktime_ns < until);
                    sampled.held = waiting;
                    for event in done {
                        closed.push((event, sampled.reps(weight)));
                    }
                }
                let closed = in_time_order(closed);
                if spread == 0 {
                    due.extend(closed);
                } else {
                    let n = closed.len() as u128;
                    for (i, weighed) in closed.into_iter().enumerate() {
                        let offset = u128::from(spread) * (i as u128 + 1) / n;
                        let at = until.saturating_add(offset as Nanos);
                        self.sequence += 1;
                        self.paced.insert((at, self.sequence), weighed);
                    }
                }
            }
            ScaleUpdate::Release { slots, from } => {
                for slot in slots {
                    let Some(sampled) = self.slots.get_mut(&slot) else {
                        continue;
                    };
                    sampled.released_from = Some(from);
                    let (now_on, waiting): (Vec<Event>, Vec<Event>) =
                        std::mem::take(&mut sampled.held)
                            .into_iter()
                            .partition(|e| e.ktime_ns >= from);
                    sampled.held = waiting;
                    due.extend(now_on.into_iter().map(|event| (event, 1)));
                }
            }
        }
        in_time_order(due)
    }

    /// Forgets `slots` (their process is gone). Their records could still be waiting
    /// for a cycle that will never close; they take the last weight known. Their paced
    /// records are due now too. Returned in the order they happened.
    pub fn forget(&mut self, slots: impl IntoIterator<Item = u32>) -> Vec<Weighed> {
        let slots: Vec<u32> = slots.into_iter().collect();
        let mut due = Vec::new();
        self.paced.retain(|_, weighed| {
            let theirs = slots.contains(&weighed.0.slot);
            if theirs {
                due.push(*weighed);
            }
            !theirs
        });
        for slot in slots {
            if let Some(sampled) = self.slots.remove(&slot) {
                sampled.drain_at_last_weight(&mut due);
            }
        }
        in_time_order(due)
    }

    /// The paced records whose release time is `now` or earlier, in release order.
    pub fn release(&mut self, now: Nanos) -> Vec<Weighed> {
        let later = self.paced.split_off(&(now.saturating_add(1), 0));
        std::mem::replace(&mut self.paced, later)
            .into_values()
            .collect()
    }

    /// Every paced record (mapwatch stops: nothing may be left unexported).
    pub fn release_all(&mut self) -> Vec<Weighed> {
        std::mem::take(&mut self.paced).into_values().collect()
    }
}

/// The slots of a group pair their records (an entry with its RET, growsliceBuf with
/// the growslice it calls), so records held per slot must not be applied one slot
/// after another. Stable: a slot's records keep their order among equal stamps.
fn in_time_order(mut due: Vec<Weighed>) -> Vec<Weighed> {
    due.sort_by_key(|(event, _)| event.ktime_ns);
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(slot: u32, ktime_ns: Nanos) -> Event {
        Event {
            ktime_ns,
            goroutine: 0,
            caller_pc: 0,
            regs: [0; 6],
            loads: [0; 4],
            tgid: 1,
            tid: 1,
            slot,
            kind: 0,
            load_failed: 0,
            derived: 0,
        }
    }

    fn stamps(due: &[Weighed]) -> Vec<(Nanos, u64)> {
        due.iter().map(|(e, reps)| (e.ktime_ns, *reps)).collect()
    }

    #[test]
    fn records_of_an_open_cycle_wait_for_its_weight() {
        let mut slots = DutyCycledSlots::default();
        assert_eq!(slots.weigh(&record(0, 5)), Some(1), "not duty-cycled");
        let due = slots.update(ScaleUpdate::Hold {
            slots: vec![0],
            from: 10,
            planned_weight: 3.0,
        });
        assert!(due.is_empty());
        assert_eq!(slots.weigh(&record(0, 9)), Some(1), "before duty-cycling");
        assert_eq!(slots.weigh(&record(0, 11)), None);
        assert_eq!(slots.weigh(&record(0, 25)), None);
        assert_eq!(slots.weigh(&record(1, 12)), Some(1), "another slot");
        let due = slots.update(ScaleUpdate::Close {
            weights: vec![(0, 2.5)],
            until: 20,
            spread: 0,
        });
        // 2.5 then 2.5 + the carried 0.5.
        assert_eq!(stamps(&due), [(11, 2)]);
        assert_eq!(
            slots.weigh(&record(0, 15)),
            Some(3),
            "late record of a closed cycle"
        );
        let due = slots.update(ScaleUpdate::Release {
            slots: vec![0],
            from: 22,
        });
        assert_eq!(stamps(&due), [(25, 1)], "stamped after the release");
        assert_eq!(slots.weigh(&record(0, 30)), Some(1));
        assert_eq!(slots.weigh(&record(0, 21)), None, "still in the open cycle");
        let due = slots.forget([0]);
        assert_eq!(stamps(&due), [(21, 2)], "the last weight known");
        assert_eq!(slots.weigh(&record(0, 21)), Some(1), "forgotten");
    }

    #[test]
    fn a_new_hold_applies_what_the_old_one_held() {
        let mut slots = DutyCycledSlots::default();
        let hold = |from| ScaleUpdate::Hold {
            slots: vec![0],
            from,
            planned_weight: 4.0,
        };
        slots.update(hold(0));
        assert_eq!(slots.weigh(&record(0, 1)), None);
        assert_eq!(stamps(&slots.update(hold(10))), [(1, 4)]);
    }

    /// Slots 0 and 1 duty-cycled from 0, holding records stamped 10, 20 (slot 1), 30
    /// and 40 (slot 1).
    fn two_slots_holding_four_records() -> DutyCycledSlots {
        let mut slots = DutyCycledSlots::default();
        slots.update(ScaleUpdate::Hold {
            slots: vec![0, 1],
            from: 0,
            planned_weight: 1.0,
        });
        for (slot, t) in [(0, 10), (1, 20), (0, 30), (1, 40)] {
            assert_eq!(slots.weigh(&record(slot, t)), None);
        }
        slots
    }

    #[test]
    fn records_of_several_slots_come_due_in_the_order_they_happened() {
        let mut slots = two_slots_holding_four_records();
        let due = slots.update(ScaleUpdate::Close {
            weights: vec![(1, 1.0), (0, 1.0)],
            until: 35,
            spread: 0,
        });
        assert_eq!(stamps(&due), [(10, 1), (20, 1), (30, 1)]);
        let due = slots.forget([0, 1]);
        assert_eq!(stamps(&due), [(40, 1)]);
    }

    #[test]
    fn records_of_a_closed_cycle_are_paced_over_its_length() {
        let mut slots = two_slots_holding_four_records();
        let due = slots.update(ScaleUpdate::Close {
            weights: vec![(0, 2.0), (1, 2.0)],
            until: 100,
            spread: 400,
        });
        assert!(due.is_empty(), "paced, not due at once");
        assert!(slots.release(199).is_empty());
        assert_eq!(stamps(&slots.release(200)), [(10, 2)]);
        assert_eq!(stamps(&slots.release(450)), [(20, 2), (30, 2)]);
        // The process is gone: what it still had paced is due at once.
        assert_eq!(stamps(&slots.forget([1])), [(40, 2)]);
        assert!(slots.release_all().is_empty());
    }
}
