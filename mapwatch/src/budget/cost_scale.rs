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
//! cycles ending, control steps), with `dc` its CPU time, `ds` its system time and `de`
//! the believed cost of its hits, the fit is
//!
//! ```text
//! ds = σ·dc + m·de        k = m / (1 − σ·u)        cost of a hit = k·u × believed
//! ```
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

/// One reading of a process: when, its CPU and system time, and the believed cost of
/// all its probes' hits so far (hits × [`super::HitCost`], ns).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct CostSample {
    pub(super) at: Nanos,
    pub(super) cpu_ns: u64,
    pub(super) system_ns: u64,
    pub(super) believed_ns: f64,
}

/// The fit's sums over intervals, each weighted by 1/dt (tick noise grows with dt).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Sums {
    cc: f64,
    ce: f64,
    ee: f64,
    sc: f64,
    se: f64,
}

/// The learned per-hit cost of one process, as a factor on the believed one.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct CostScale {
    last: Option<CostSample>,
    sums: Sums,
}

impl CostScale {
    /// Takes in a reading. Readings taken before the last one (an attach's, reported
    /// after a later control step's) are dropped: intervals must not overlap.
    pub(super) fn observe(&mut self, sample: CostSample) {
        let Some(last) = self.last.replace(sample) else {
            return;
        };
        if sample.at <= last.at
            || sample.cpu_ns < last.cpu_ns
            || sample.system_ns < last.system_ns
            || sample.believed_ns < last.believed_ns
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
        let de = sample.believed_ns - last.believed_ns;
        let keep = (-dt / MEMORY as f64).exp();
        let s = &mut self.sums;
        for (sum, add) in [
            (&mut s.cc, dc * dc),
            (&mut s.ce, dc * de),
            (&mut s.ee, de * de),
            (&mut s.sc, ds * dc),
            (&mut s.se, ds * de),
        ] {
            *sum = *sum * keep + add / dt;
        }
    }

    /// What a hit costs the process, as a factor on the believed cost: the fit, drawn
    /// towards 1 while it rests on little evidence.
    pub(super) fn scale(&self) -> f64 {
        let believed_kernel = 1.0 / USER_SIDE;
        match self.fit() {
            Some((kernel, evidence)) => {
                let blend = |real_evidence: f64| {
                    (kernel * real_evidence + believed_kernel * PRIOR_WEIGHT)
                        / (real_evidence + PRIOR_WEIGHT)
                };
                // Evidence in real cost is evidence × scale², with the scale the blend
                // itself gives (a fixed point, reached in a few steps): the fit's own
                // scale would let a noisy high fit vouch for itself.
                let mut blended = blend(evidence);
                for _ in 0..4 {
                    blended = blend(evidence * (blended * USER_SIDE).powi(2));
                }
                blended * USER_SIDE
            }
            None => 1.0,
        }
    }

    /// The kernel's share of a hit's cost as a factor on the believed cost, and the
    /// evidence for it; None while the fit is undetermined.
    fn fit(&self) -> Option<(f64, f64)> {
        let Sums { cc, ce, ee, sc, se } = self.sums;
        let det = cc * ee - ce * ce;
        if cc <= 0.0 || det <= 0.0 {
            return None;
        }
        let own_system = (sc * ee - se * ce) / det;
        let slope = (cc * se - ce * sc) / det;
        let user_share = 1.0 - own_system.max(0.0) * USER_SIDE;
        if user_share < MIN_USER_SHARE {
            return None;
        }
        let kernel = slope / user_share;
        (MIN_SCALE..=MAX_SCALE)
            .contains(&(kernel * USER_SIDE))
            .then_some((kernel, det / cc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::MILLISECOND;

    /// A process observed for `cycles` duty cycles of 4 s with a 90 ms window, whose
    /// hits cost `true_factor` × the believed cost (of which 1/USER_SIDE in the kernel)
    /// and take `cost_share` of its CPU while attached; `own_system`: its own system
    /// time per unit of work. Saturated: one core in use whatever the probes cost; else
    /// a quarter core of work with the probes' cost on top. System time is read in
    /// 10 ms ticks, sampled at 4 ms.
    fn learn(
        cycles: usize,
        true_factor: f64,
        cost_share: f64,
        own_system: f64,
        saturated: bool,
    ) -> f64 {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut scale = CostScale::default();
        let (mut at, mut cpu, mut system_ticks, mut believed) = (0u64, 0f64, 0u64, 0f64);
        let mut tick_phase = 0f64;
        let observe = |scale: &mut CostScale, at, cpu: f64, ticks: u64, believed| {
            scale.observe(CostSample {
                at,
                cpu_ns: cpu as u64,
                system_ns: ticks / 10_000_000 * 10_000_000,
                believed_ns: believed,
            })
        };
        observe(&mut scale, at, cpu, system_ticks, believed);
        for _ in 0..cycles {
            for (length, attached) in [(90 * MILLISECOND, true), (3910 * MILLISECOND, false)] {
                // Per ns of wall time: CPU, the probes' true cost, their believed cost.
                let (cpu_rate, probe_rate) = match (saturated, attached) {
                    (true, true) => (1.0, cost_share),
                    (true, false) => (1.0, 0.0),
                    (false, true) => {
                        let probes = 0.25 * cost_share / (1.0 - cost_share);
                        (0.25 + probes, probes)
                    }
                    (false, false) => (0.25, 0.0),
                };
                let work_rate = cpu_rate - probe_rate;
                let kernel_rate = probe_rate / USER_SIDE + own_system * work_rate;
                // Each 4 ms tick of CPU is charged to the kernel with that probability.
                tick_phase += length as f64 * cpu_rate / 4e6;
                while tick_phase >= 1.0 {
                    tick_phase -= 1.0;
                    if rng.f64() < kernel_rate / cpu_rate {
                        system_ticks += 4_000_000;
                    }
                }
                at += length;
                cpu += length as f64 * cpu_rate;
                believed += length as f64 * probe_rate / true_factor;
                observe(&mut scale, at, cpu, system_ticks, believed);
            }
        }
        scale.scale()
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
        assert_eq!(CostScale::default().scale(), 1.0);
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
            believed_ns,
        };
        let mut scale = CostScale::default();
        scale.observe(sample(10, 100, 10, 0.0));
        scale.observe(sample(5, 50, 0, 0.0));
        assert_eq!(scale.last.map(|s| s.at), Some(10));
        scale.observe(sample(20, 50, 0, 0.0)); // CPU went back: a restarted clock
        assert_eq!(scale.sums, Sums::default());
        assert_eq!(scale.last.map(|s| s.at), Some(20));
        assert_eq!(scale.scale(), 1.0);
    }
}
