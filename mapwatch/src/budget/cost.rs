//! The cost model: what one probe hit costs the probed process, set mostly by how the
//! kernel runs the probed instruction, plus each struct field the probe reads.
use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use tracing::{info, warn};

use crate::attach::{Probes, error_chain};

/// How the kernel runs the probed instruction, which sets most of a hit's cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteClass {
    /// The kernel emulates it (PUSH, as Go's first instruction after the stack check
    /// usually is): the trap and the BPF program only.
    Emulated,
    /// Copied out and single-stepped (RET, SUB, MOV, …): a second trap, and a hit costs
    /// many times an emulated one (measured: BENCHMARKS.md, "Per-hit cost of a probe").
    SingleStepped,
}

/// The class of the instruction `bytes` (the probed instruction, as the plan saw it).
/// Only PUSH counts as emulated: it is the one emulated instruction the calibration
/// measures, and taking anything unknown as single-stepped errs on the safe side
/// (a cost overestimated means more duty-cycling, never a budget exceeded).
pub fn site_class(bytes: &[u8]) -> SiteClass {
    let mut decoder = Decoder::new(64, bytes, DecoderOptions::NONE);
    let instruction = decoder.decode();
    if !instruction.is_invalid() && instruction.mnemonic() == Mnemonic::Push {
        SiteClass::Emulated
    } else {
        SiteClass::SingleStepped
    }
}

/// CPU per probe hit, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HitCost {
    pub emulated_ns: f64,
    pub single_stepped_ns: f64,
    /// Each struct field the probe reads from the target's memory (hardened usercopy
    /// checks make such a read costly; measured: BENCHMARKS.md, "Where the cost goes").
    pub per_read_ns: f64,
}

impl HitCost {
    /// Used when the calibration could not run: mapwatch's probe as measured in a Go
    /// loop, rounded up (a cost overestimated errs on the safe side, see
    /// [`site_class`]).
    pub const FALLBACK: HitCost = HitCost {
        emulated_ns: 2500.0,
        single_stepped_ns: 7000.0,
        per_read_ns: 200.0,
    };

    /// What a hit costs a real Go program beyond what the calibration sees: the
    /// calibration calls an empty function in a loop, while Go code between two hits
    /// has its caches and TLB to refill after each trap. An estimate from a Go loop's
    /// extra CPU against the calibrated cost, not a law (1.0–2.5 between machines): it
    /// is the belief each process starts from, and `cost_scale.rs` corrects it from
    /// what the process's hits are seen to cost it.
    pub const INDIRECT_FACTOR: f64 = 1.55;

    /// From the calibration (`attach::calibration`): ns per hit of mapwatch's program
    /// in mapwatch's own code, scaled by [`HitCost::INDIRECT_FACTOR`].
    pub fn measured(emulated_ns: f64, single_stepped_ns: f64, per_read_ns: f64) -> HitCost {
        HitCost {
            emulated_ns: emulated_ns * Self::INDIRECT_FACTOR,
            single_stepped_ns: single_stepped_ns * Self::INDIRECT_FACTOR,
            per_read_ns: per_read_ns * Self::INDIRECT_FACTOR,
        }
    }

    /// Calibrates the per-hit cost on this machine (`attach::calibration`); on failure,
    /// says why and returns [`HitCost::FALLBACK`].
    pub fn calibrate(probes: &mut Probes) -> HitCost {
        match probes.calibrate() {
            Ok(c) => {
                info!(
                    emulated_ns = c.emulated_ns.round(),
                    single_stepped_ns = c.single_stepped_ns.round(),
                    per_read_ns = c.per_read_ns.round(),
                    ms = c.took.as_millis() as u64,
                    "calibrated the per-hit cost of mapwatch's probe"
                );
                let factor = believed_factor();
                HitCost::measured(
                    c.emulated_ns * factor,
                    c.single_stepped_ns * factor,
                    c.per_read_ns * factor,
                )
            }
            Err(e) => {
                warn!(
                    "calibrating the per-hit cost of a uprobe failed ({}); assuming {} ns \
                     (emulated), {} ns (single-stepped) and {} ns per field read",
                    error_chain(&e),
                    HitCost::FALLBACK.emulated_ns,
                    HitCost::FALLBACK.single_stepped_ns,
                    HitCost::FALLBACK.per_read_ns
                );
                HitCost::FALLBACK
            }
        }
    }

    /// A hit at an instruction of `class` by a probe that reads `reads` struct fields.
    pub fn of(&self, class: SiteClass, reads: usize) -> f64 {
        let trap = match class {
            SiteClass::Emulated => self.emulated_ns,
            SiteClass::SingleStepped => self.single_stepped_ns,
        };
        trap + reads as f64 * self.per_read_ns
    }
}

/// Multiplies the calibrated per-hit cost: makes this machine one whose calibration is
/// off by that factor, to test what each process's own cost corrects (`cost_scale.rs`).
/// Not a tuning knob: that correction happens anyway.
const BELIEF_VARIABLE: &str = "MAPWATCH_HIT_COST_FACTOR";

fn believed_factor() -> f64 {
    let Ok(text) = std::env::var(BELIEF_VARIABLE) else {
        return 1.0;
    };
    match text.trim().parse::<f64>() {
        Ok(factor) if (0.1..=10.0).contains(&factor) => {
            info!(
                factor,
                "{BELIEF_VARIABLE}: the calibrated per-hit cost is scaled"
            );
            factor
        }
        _ => {
            warn!("{BELIEF_VARIABLE}={text:?} is not a number from 0.1 to 10: ignored");
            1.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_classes_follow_the_probed_instruction() {
        assert_eq!(site_class(&[0x55]), SiteClass::Emulated); // push rbp
        assert_eq!(site_class(&[0x41, 0x57]), SiteClass::Emulated); // push r15
        assert_eq!(site_class(&[0xc3]), SiteClass::SingleStepped); // ret
        assert_eq!(
            site_class(&[0x48, 0x83, 0xec, 0x58]), // sub rsp, 0x58 (Go 1.19 growslice)
            SiteClass::SingleStepped
        );
        assert_eq!(site_class(&[]), SiteClass::SingleStepped);
    }
}
