//! What a probe hit really costs the process it hits, learned from that process.
//!
//! The calibration times mapwatch's program in mapwatch's own loop, and a fixed factor
//! turns that into what a hit costs Go code ([`super::HitCost`]); on the machines
//! measured, the real cost came out 0.65–1.6× that belief. Weighing a saturated
//! process's records by its work needs the cost to ±12% (tests/budget.rs), so it is
//! measured per process, from the time it spends in the kernel: the trap and the BPF
//! program run in kernel mode, in the context of the thread that hit the probe.
//!
//! Over each interval between two readings of a process (windows opening and closing,
//! cycles ending, control steps), with `dc` its CPU time, `ds` its system time and
//! `de_g` the believed cost of the hits of its probe group `g`, the fit is
//!
//! ```text
//! ds = σ·dc + Σ m_g·de_g      k_g = m_g / (1 − σ·u)      cost of a hit = k_g·u × believed
//! ```
//!
//! One factor per group, because the calibration's error is not the same for all: on
//! the request-serving fixture (tests/budget_service.rs), with one factor for the whole
//! process, growslice's hits came out costlier than they were and map growth's
//! cheaper (slices counted +2 to +11%, once outside ±10% in CI; maps −3 to +1%), though
//! both are emulated PUSHes: the BPF programs differ, and so do the fields they read.
//! Duty-cycled groups' windows come and go apart, which tells them apart.
//!
//! σ is the process's own system time per unit of CPU (its syscalls, page faults),
//! taken as proportional to the work it does, and `u` ([`USER_SIDE`]) the part of a
//! hit's cost paid in user mode. Solving for `k` this way holds whether the probes'
//! cost comes on top of the process's work (CPU to spare: `dc` rises) or out of it
//! (saturated: `dc` stays, the work and its syscalls drop) — a plain slope of system
//! time over the believed cost would come out low by σ·u there, half on a syscall-heavy
//! service. System time comes in ticks, so one window says little; hundreds of
//! intervals say enough, and until they do the belief holds ([`PRIOR_WEIGHT`]).
use super::SECOND;
use crate::aggregate::Nanos;

/// The share of a hit's cost paid in user mode, as a factor on the kernel's share:
/// after each trap the program's caches and TLB refill (measured on a Go loop under a
/// growslice probe, unprobed vs probed: +80–150 ns of user time per hit for ~1,200 ns
/// of system time). It cannot be told from the work itself on a saturated process, so
/// it is a constant, and a wrong one biases the cost by its error.
pub(super) const USER_SIDE: f64 = 1.08;

/// How much evidence the belief is worth, in the units of the fit's evidence (Σ de²/dt
/// once `dc` is accounted for, ns) counted in real cost (× the scale²: de is in believed
/// cost): about a seventh of one window attached 90 ms with the probes taking 45% of a
/// saturated process's CPU. Enough to hold the first intervals' tick noise; little
/// enough that a few windows outweigh it.
///
/// In real cost because the tick noise the prior guards against is relative to the
/// real cost, whatever the belief. Counted in believed cost, a belief k× too low made
/// the prior k²× too strong: with the calibration made 4× too low (tests/budget.rs's
/// saturated loop, 100 s) the learned cost took ten cycles to reach the real one (~2.7×
/// the belief) and the count came out at 0.934 of the truth (a CI run of that loop,
/// with no knob, came out at 0.88); × the scale instead of its square, 0.87–0.99. Now
/// (200 s): 1.007 and 0.987 with it 4× too low, 0.978 at 2×, 1.035 as calibrated.
const PRIOR_WEIGHT: f64 = 2e6;

/// How much evidence the common factor is worth against one group's own, in the same
/// units: about twenty windows of a saturated process's probes at 45% of its CPU. The
/// groups' factors differ by a little (growslice's and map growth's by ~5% on the
/// request-serving fixture, saturated), and one group's own evidence can be thin and
/// off: that fixture paced at a fifth of a core, growslice's own fit came out at
/// 1.9–2.7× (the process's system time follows its sleeps more than its work), where
/// the common one held at ~1.1; its cycles then looked saturated and counted +17%.
const GROUP_PRIOR_WEIGHT: f64 = 140.0 * PRIOR_WEIGHT;

/// Older intervals count less with this time constant: the cost follows a process
/// whose load changes, over minutes.
const MEMORY: Nanos = 600 * SECOND;

/// A fit beyond this range of the belief is noise or a model that does not hold (a
/// process whose system time swings with something else, a kernel that does not charge
/// the probes to it): the belief stays. Wide above, where a wrong fit errs on the safe
/// side (more duty-cycling), so that a calibration far below the real cost is still
/// corrected (the tests make it 2–4× too low on top of the machine's own error).
const MIN_SCALE: f64 = 0.25;
const MAX_SCALE: f64 = 10.0;

/// Below this, `1 − σ·u` would amplify noise: a process that spends most of its CPU in
/// the kernel keeps the belief.
const MIN_USER_SHARE: f64 = 0.25;

/// The most probe groups a process has: one per name [`super::group_of`] gives.
pub(super) const MAX_GROUPS: usize = 8;

/// One number per probe group of a process, indexed as its groups are: believed costs
/// (ns) of their hits, or what a hit really costs as a factor on the belief. Per group
/// because the calibration's error is not the same for all: each group's BPF program
/// does its own work and reads its own fields (see the module's notes).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(super) struct PerGroup([f64; MAX_GROUPS]);

impl PerGroup {
    pub(super) const fn all(value: f64) -> PerGroup {
        PerGroup([value; MAX_GROUPS])
    }

    /// `value` for group `index`, 0 for the others. Groups past [`MAX_GROUPS`] (none
    /// today) would share the last one's entry: their costs would be learned together.
    pub(super) fn only(index: usize, value: f64) -> PerGroup {
        let mut per_group = PerGroup::default();
        per_group.0[index.min(MAX_GROUPS - 1)] = value;
        per_group
    }

    pub(super) fn of(&self, index: usize) -> f64 {
        self.0[index.min(MAX_GROUPS - 1)]
    }

    /// Σ self × `factors`, group by group: believed costs made real.
    pub(super) fn weighed(&self, factors: PerGroup) -> f64 {
        self.0.iter().zip(factors.0).map(|(a, b)| a * b).sum()
    }

    pub(super) fn zip(self, other: PerGroup, f: impl Fn(f64, f64) -> f64) -> PerGroup {
        PerGroup(std::array::from_fn(|i| f(self.0[i], other.0[i])))
    }
}

impl std::ops::Add for PerGroup {
    type Output = PerGroup;
    fn add(self, other: PerGroup) -> PerGroup {
        self.zip(other, |a, b| a + b)
    }
}

/// One reading of a process: when, its CPU and system time, and the believed cost of
/// all its probes' hits so far (hits × [`super::HitCost`], ns, per group).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct CostSample {
    pub(super) at: Nanos,
    pub(super) cpu_ns: u64,
    pub(super) system_ns: u64,
    pub(super) believed_ns: PerGroup,
}

type Vector = [f64; MAX_GROUPS];
type Matrix = [[f64; MAX_GROUPS]; MAX_GROUPS];

/// The fit's sums over intervals, each weighted by 1/dt (tick noise grows with dt):
/// c the CPU time, s the system time, e the believed cost of each group's hits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Sums {
    cc: f64,
    ce: Vector,
    ee: Matrix,
    sc: f64,
    se: Vector,
}

/// The learned per-hit cost of one process, as factors on the believed one.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct CostScale {
    last: Option<CostSample>,
    sums: Sums,
    /// The fit as of the last reading (fitted once per reading: the scale is asked for
    /// far more often than it changes).
    fitted: Option<PerGroup>,
}

impl CostScale {
    /// Takes in a reading. Readings taken before the last one (an attach's, reported
    /// after a later control step's) are dropped: intervals must not overlap.
    pub(super) fn observe(&mut self, sample: CostSample) {
        let Some(last) = self.last.replace(sample) else {
            return;
        };
        let de: Vector = std::array::from_fn(|g| sample.believed_ns.0[g] - last.believed_ns.0[g]);
        if sample.at <= last.at
            || sample.cpu_ns < last.cpu_ns
            || sample.system_ns < last.system_ns
            || de.iter().any(|&d| d < 0.0)
        {
            // Out of order, or a clock that restarted: start over from this reading.
            if sample.at < last.at {
                self.last = Some(last);
            }
            return;
        }
        let dt = (sample.at - last.at) as f64;
        let dc = (sample.cpu_ns - last.cpu_ns) as f64;
        let ds = (sample.system_ns - last.system_ns) as f64;
        let keep = (-dt / MEMORY as f64).exp();
        let add = |sum: &mut f64, term: f64| *sum = *sum * keep + term / dt;
        let s = &mut self.sums;
        add(&mut s.cc, dc * dc);
        add(&mut s.sc, ds * dc);
        for g in 0..MAX_GROUPS {
            add(&mut s.ce[g], dc * de[g]);
            add(&mut s.se[g], ds * de[g]);
            for h in 0..MAX_GROUPS {
                add(&mut s.ee[g][h], de[g] * de[h]);
            }
        }
        self.fitted = Some(self.fit());
    }

    /// What a hit costs the process, as a factor on the believed cost, per group (see
    /// [`CostScale::fit`]); 1 until fitted.
    pub(super) fn scale(&self) -> PerGroup {
        self.fitted.unwrap_or(PerGroup::all(1.0))
    }

    /// The fit: first of one factor for all the process's hits, drawn towards the
    /// belief (1) while it rests on little evidence; then of one per group, drawn
    /// towards that common one.
    fn fit(&self) -> PerGroup {
        let Some(pooled) = self.sums.pooled().fit_around(1.0, PRIOR_WEIGHT) else {
            return PerGroup::all(1.0);
        };
        let common = pooled[0];
        match self.sums.fit_around(common, GROUP_PRIOR_WEIGHT) {
            Some(per_group) => PerGroup(per_group),
            None => PerGroup::all(common),
        }
    }
}

impl Sums {
    /// The sums of a process with all its hits in one group (the first).
    fn pooled(&self) -> Sums {
        let mut pooled = Sums {
            cc: self.cc,
            sc: self.sc,
            ..Sums::default()
        };
        pooled.ce[0] = self.ce.iter().sum();
        pooled.se[0] = self.se.iter().sum();
        pooled.ee[0][0] = self.ee.iter().flatten().sum();
        pooled
    }

    /// Each group's factor, with a prior at `prior_scale` worth `weight` (in real cost).
    /// None where the fit is undetermined or the process's own system time leaves too
    /// little to tell.
    ///
    /// The slopes are the posterior: with `dc` taken out, (A + P)·m = b + P·m₀, A and
    /// b the believed costs' sums of squares and products with the system time, P the
    /// prior's weight per group. Counted in real cost, that weight depends on the scale
    /// it gives, and `1 − σ·u` on the slopes: both are taken from the fit itself, a
    /// fixed point reached in a few steps (the unweighted fit's own scale would let a
    /// noisy high fit vouch for itself). A group whose probes the process never hit
    /// rests on the prior alone, and groups that come and go together are told apart
    /// only as far as their windows differ — the prior holds the rest.
    fn fit_around(&self, prior_scale: f64, weight: f64) -> Option<Vector> {
        let Sums { cc, ce, ee, sc, se } = *self;
        if cc <= 0.0 {
            return None;
        }
        let a = |g: usize, h: usize| ee[g][h] - ce[g] * ce[h] / cc;
        let b = |g: usize| se[g] - ce[g] * sc / cc;
        let mut scale = [prior_scale; MAX_GROUPS];
        let mut slopes = [prior_scale / USER_SIDE; MAX_GROUPS];
        let mut user_share = 1.0;
        for _ in 0..6 {
            let explained: f64 = (0..MAX_GROUPS).map(|g| ce[g] * slopes[g]).sum();
            let own_system = (sc - explained) / cc;
            user_share = 1.0 - own_system.max(0.0) * USER_SIDE;
            if user_share < MIN_USER_SHARE {
                return None;
            }
            // The prior, as a slope: its kernel share, paid out of the user share.
            let prior_slope = prior_scale * user_share / USER_SIDE;
            let prior = scale.map(|s| weight / s.clamp(MIN_SCALE, MAX_SCALE).powi(2));
            let m: Matrix = std::array::from_fn(|g| {
                std::array::from_fn(|h| a(g, h) + if g == h { prior[g] } else { 0.0 })
            });
            let rhs: Vector = std::array::from_fn(|g| b(g) + prior[g] * prior_slope);
            slopes = solve(m, rhs);
            scale = slopes.map(|slope| slope / user_share * USER_SIDE);
        }
        // A group whose own fit (the others as learned) is out of range is noise, or a
        // model that does not hold there: the prior stays. Its posterior alone would
        // let the tick noise of a few windows of a cheap probe through (2 cycles at 1%
        // of a core: a fit of −20×, drawn to 0.95 by the prior).
        Some(std::array::from_fn(|g| {
            let evidence = a(g, g);
            let others: f64 = (0..MAX_GROUPS)
                .filter(|&h| h != g)
                .map(|h| a(g, h) * slopes[h])
                .sum();
            let own_fit = (b(g) - others) / evidence * USER_SIDE / user_share;
            let in_range = |s: f64| (MIN_SCALE..=MAX_SCALE).contains(&s);
            if evidence > 0.0 && in_range(own_fit) && in_range(scale[g]) {
                scale[g]
            } else {
                prior_scale
            }
        }))
    }
}

/// Solves m·x = rhs for a symmetric positive definite `m` (the prior makes it so) by
/// Gaussian elimination: no pivoting needed, and too small a system (8×8, once a second
/// per process) to bring in a linear algebra crate for.
fn solve(mut m: Matrix, mut rhs: Vector) -> Vector {
    for k in 0..MAX_GROUPS {
        for i in k + 1..MAX_GROUPS {
            let factor = m[i][k] / m[k][k];
            let pivot_row = m[k];
            for (x, pivot) in m[i][k..].iter_mut().zip(&pivot_row[k..]) {
                *x -= factor * pivot;
            }
            rhs[i] -= factor * rhs[k];
        }
    }
    let mut x = [0.0; MAX_GROUPS];
    for k in (0..MAX_GROUPS).rev() {
        let known: f64 = (k + 1..MAX_GROUPS).map(|j| m[k][j] * x[j]).sum();
        x[k] = (rhs[k] - known) / m[k][k];
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{MILLISECOND, SECOND};

    /// A duty-cycled probe group of the simulated process: its index, what its hits
    /// really cost as a factor on the belief, the share of the process's CPU they take
    /// while attached, and its cycle: attached `window` at `offset` into each `cycle`.
    #[derive(Clone, Copy)]
    struct Probed {
        index: usize,
        true_factor: f64,
        cost_share: f64,
        cycle: Nanos,
        window: Nanos,
        offset: Nanos,
    }

    /// Group `index`, attached 90 ms every 4 s.
    fn probed(index: usize, true_factor: f64, cost_share: f64) -> Probed {
        Probed {
            index,
            true_factor,
            cost_share,
            cycle: 4 * SECOND,
            window: 90 * MILLISECOND,
            offset: 0,
        }
    }

    /// A process observed for `seconds` with the probe `groups` cycling (their hits
    /// cost true_factor × the believed cost, of which 1/USER_SIDE in the kernel), read
    /// at each window's opening and closing; `own_system`: its own system time per unit
    /// of work. Saturated: one core in use whatever the probes cost; else a quarter core
    /// of work with the probes' cost on top. System time is read in 10 ms ticks,
    /// sampled at 4 ms.
    fn learn_groups(seconds: u64, groups: &[Probed], own_system: f64, saturated: bool) -> PerGroup {
        let end = seconds * SECOND;
        let mut boundaries: Vec<Nanos> = groups
            .iter()
            .flat_map(|g| {
                (0..end / g.cycle).flat_map(move |n| {
                    let open = n * g.cycle + g.offset;
                    [open, open + g.window]
                })
            })
            .chain([0, end])
            .filter(|&t| t <= end)
            .collect();
        boundaries.sort_unstable();
        boundaries.dedup();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut scale = CostScale::default();
        let (mut cpu, mut system_ticks, mut believed) = (0f64, 0u64, PerGroup::default());
        let mut tick_phase = 0f64;
        let mut observe = |at, cpu: f64, ticks: u64, believed| {
            scale.observe(CostSample {
                at,
                cpu_ns: cpu as u64,
                system_ns: ticks / 10_000_000 * 10_000_000,
                believed_ns: believed,
            })
        };
        observe(0, cpu, system_ticks, believed);
        for pair in boundaries.windows(2) {
            let (from, until) = (pair[0], pair[1]);
            let length = (until - from) as f64;
            let attached: Vec<&Probed> = groups
                .iter()
                .filter(|g| (from % g.cycle) >= g.offset && (from % g.cycle) < g.offset + g.window)
                .collect();
            let share: f64 = attached.iter().map(|g| g.cost_share).sum();
            // Per ns of wall time: CPU, and the probes' true cost.
            let (cpu_rate, probe_rate) = if saturated {
                (1.0, share)
            } else {
                let probes = 0.25 * share / (1.0 - share);
                (0.25 + probes, probes)
            };
            let work_rate = cpu_rate - probe_rate;
            let kernel_rate = probe_rate / USER_SIDE + own_system * work_rate;
            // Each 4 ms tick of CPU is charged to the kernel with that probability.
            tick_phase += length * cpu_rate / 4e6;
            while tick_phase >= 1.0 {
                tick_phase -= 1.0;
                if rng.f64() < kernel_rate / cpu_rate {
                    system_ticks += 4_000_000;
                }
            }
            cpu += length * cpu_rate;
            for g in attached {
                let real = length * probe_rate * g.cost_share / share;
                believed = believed + PerGroup::only(g.index, real / g.true_factor);
            }
            observe(until, cpu, system_ticks, believed);
        }
        scale.scale()
    }

    /// One emulated group observed for `cycles` duty cycles (see [`learn_groups`]):
    /// what is learned of it.
    fn learn(
        cycles: usize,
        true_factor: f64,
        cost_share: f64,
        own_system: f64,
        saturated: bool,
    ) -> f64 {
        let group = probed(0, true_factor, cost_share);
        let seconds = cycles as u64 * group.cycle / SECOND;
        learn_groups(seconds, &[group], own_system, saturated).of(0)
    }

    #[test]
    fn each_group_is_learned_apart() {
        // Two groups whose windows differ (cycles of 4 s and 5.3 s), their hits off from
        // the belief by different factors: one factor for both would be the evidence's
        // mean, too high for one and too low for the other. Each is drawn towards the
        // common one (GROUP_PRIOR_WEIGHT), so it takes many cycles to tell them apart:
        // saturated, 200 cycles of the first (100 gave 0.88 and 1.08 here).
        let growslice = probed(0, 0.85, 0.3);
        let map_growth = Probed {
            cycle: 5300 * MILLISECOND,
            window: 150 * MILLISECOND,
            offset: 1000 * MILLISECOND,
            ..probed(1, 1.2, 0.3)
        };
        let learned = learn_groups(800, &[growslice, map_growth], 0.1, true);
        for group in [growslice, map_growth] {
            let error = learned.of(group.index) / group.true_factor - 1.0;
            assert!(
                error.abs() < 0.06,
                "group {} learned {:.3}, true {}",
                group.index,
                learned.of(group.index),
                group.true_factor
            );
        }
        // With CPU to spare a cycle tells less: told apart, not yet each to its own.
        let learned = learn_groups(800, &[growslice, map_growth], 0.1, false);
        assert!(learned.of(0) < learned.of(1), "{learned:?}");
        // A group the process has no hits of takes the common factor: here, the one
        // group's.
        let learned = learn_groups(200, &[probed(0, 2.0, 0.45)], 0.1, true);
        assert!(
            (learned.of(1) / learned.of(0) - 1.0).abs() < 0.01,
            "{learned:?}"
        );
    }

    #[test]
    fn the_cost_is_learned_from_system_time_whether_saturated_or_not() {
        for saturated in [true, false] {
            for own_system in [0.0, 0.1, 0.4] {
                for true_factor in [0.65, 1.0, 1.6] {
                    // A process with CPU to spare tells less per cycle: its CPU time
                    // rises with the probes' cost, which the fit must tell apart (60
                    // cycles came within 13%, 250 within 4%).
                    let cycles = if saturated { 25 } else { 120 };
                    let learned = learn(cycles, true_factor, 0.45, own_system, saturated);
                    assert!(
                        (learned / true_factor - 1.0).abs() < 0.1,
                        "saturated {saturated}, own system {own_system}: learned \
                         {learned:.3}, true {true_factor}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_slope_of_system_time_alone_would_be_low_on_a_saturated_syscall_heavy_process() {
        // What the fit corrects: with no σ·dc term, the work the probes displace takes
        // its syscalls with it, and the slope comes out at k·(1 − σ·u).
        let learned = learn(25, 1.0, 0.45, 0.4, true);
        assert!((learned - 1.0).abs() < 0.1, "{learned}");
        let naive = 1.0 - 0.4 * USER_SIDE;
        assert!(naive < 0.6);
    }

    #[test]
    fn little_evidence_keeps_the_belief() {
        assert_eq!(CostScale::default().scale(), PerGroup::all(1.0));
        // Probes that cost 1% of the process while attached say little in 2 cycles.
        let learned = learn(2, 2.0, 0.01, 0.1, true);
        assert!((learned - 1.0).abs() < 0.05, "{learned}");
        // The same process with probes that cost half of it says a lot.
        let learned = learn(40, 2.0, 0.5, 0.1, true);
        assert!((learned / 2.0 - 1.0).abs() < 0.1, "{learned}");
    }

    #[test]
    fn a_belief_too_low_is_corrected_as_fast_as_one_too_high() {
        // The prior is worth the same real evidence whichever way the belief is off: a
        // saturated loop's first cycles are weighed with what is learned by then.
        // Counted in believed cost, a belief 3× too low was still 20% low after 8
        // cycles (and 31% after 4), one 3× too high 3% off.
        let errors: Vec<f64> = [1.0 / 3.0, 3.0]
            .iter()
            .map(|&true_factor| learn(8, true_factor, 0.45, 0.1, true) / true_factor - 1.0)
            .collect();
        assert!(
            errors.iter().all(|e| e.abs() < 0.1),
            "after 8 cycles, learned ÷ true − 1 for beliefs 3× too high and 3× too low: \
             {errors:.3?}"
        );
    }

    #[test]
    fn out_of_order_and_restarted_readings_are_skipped() {
        let sample = |at, cpu_ns, system_ns, believed_ns| CostSample {
            at,
            cpu_ns,
            system_ns,
            believed_ns: PerGroup::only(0, believed_ns),
        };
        let mut scale = CostScale::default();
        scale.observe(sample(10, 100, 10, 0.0));
        scale.observe(sample(5, 50, 0, 0.0));
        assert_eq!(scale.last.map(|s| s.at), Some(10));
        scale.observe(sample(20, 50, 0, 0.0)); // CPU went back: a restarted clock
        assert_eq!(scale.sums, Sums::default());
        assert_eq!(scale.last.map(|s| s.at), Some(20));
        assert_eq!(scale.scale(), PerGroup::all(1.0));
    }
}
