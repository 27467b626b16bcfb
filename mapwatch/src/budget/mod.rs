//! The overhead budget: kernel hit counts → estimated CPU cost of the probes → which
//! probe groups are attached when (duty cycles) → the weights that scale their records.
//!
//! Pure apart from [`task`]: no clock, no kernel. [`task`] reads the counters, attaches
//! and detaches, and passes the times it measured back in; every time here is
//! CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns` that stamps the
//! records.
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
//! - Records of a duty-cycled group weigh the process's *work* over the cycle / its work
//!   while the group was attached, work being CPU time (per-thread run time, ns) minus
//!   the probes' cost (hits × per-hit cost, the cost learned per process from its system
//!   time). Events follow work, not wall
//!   time: an attached probe slows a saturated process, which then does fewer events per
//!   second of window but as many per unit of work. The window is measured from right
//!   before the attach call to right after the close (it holds every hit). Without CPU
//!   readings the weight falls back to cycle length / time attached. A
//!   [`ScaleUpdate`](crate::aggregate::ScaleUpdate) tells the aggregator, which holds
//!   the records of an open cycle until its weight is known and then paces them out
//!   over the next cycle's length. The budget sits above the aggregator: that message
//!   and [`Nanos`] are the aggregator's types.
//!
//! The files, in the order the numbers flow:
//! - `cost.rs`: what one hit costs, as believed ([`SiteClass`], [`HitCost`]).
//! - `cost_scale.rs`: what it really costs each process, learned from its system time.
//! - `groups.rs`: probes grouped per signal, rare or hot ([`GroupSpec`]).
//! - `shares.rs`: the limits ([`BudgetConfig`]) and water-filling them node →
//!   processes → groups.
//! - `cycles.rs`: a duty cycle planned from a group's fraction, the weights of a cycle
//!   that ended, and the constants that shape cycles.
//! - `state.rs`: what is tracked per process, group and slot; on-cost measurement.
//! - `controller.rs`: [`Controller`], the control step and the attaches and detaches
//!   due; `controller/steps.rs` moves one duty-cycled group along (window open, closed,
//!   cycle ended and weighed); `controller/tests.rs` drives it against simulated
//!   processes.
//! - `task.rs`: the I/O around the controller.
mod controller;
mod cost;
mod cost_scale;
mod cycles;
mod groups;
mod shares;
mod state;
pub mod task;

pub use controller::{
    Action, Controller, ProcessReport, UNKNOWN_HOT_ON_COST, slots_detached_at_start,
    starts_detached,
};
pub use cost::{HitCost, SiteClass, site_class};
pub use cycles::MIN_FRACTION;
pub use groups::{GroupSpec, Priority, SlotCost, SlotHits, group_of, groups_for, groups_for_plan};
pub use shares::{BudgetConfig, water_fill};
pub use state::Reading;

use crate::aggregate::Nanos;

const SECOND: Nanos = 1_000_000_000;
const MILLISECOND: Nanos = 1_000_000;
