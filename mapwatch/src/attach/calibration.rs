//! The per-hit cost of a uprobe on this machine, measured at start-up for the overhead
//! budget (`crate::budget`).
//!
//! How: mapwatch's own program (`go_probe`, with growslice's spec: the caller's PC and
//! no struct field, one ring-buffer record) is attached to two instructions of
//! mapwatch's own code — a PUSH, which the kernel emulates (like the instruction after a
//! Go function's stack check, where entry probes go), and a RET, which it single-steps
//! (like mapwatch's RET probes) — each in its own copy of a three-byte function; a
//! third copy's PUSH gets the same probe reading four struct fields (like the map growth
//! probes), which prices one field read; a fourth copy has no probe. One thread calls
//! them in interleaved rounds and times each batch with its own CPU clock (the trap, the
//! program and the single step are all charged to the calling thread); a cost is the
//! median over the rounds of (probed − plain) per call. The records go to the ring
//! buffer before the reader runs and are discarded here.
//!
//! Why not an empty program, as first planned: measured in a Go loop here, an empty
//! program cost ~0.9 µs per hit (what this calibration also finds for it) but
//! `go_probe` ~1.7 µs — the program's work is no small addition. Why not a Go helper:
//! mapwatch would have to ship and find a second binary, and a Go function's
//! instructions vary by version anyway; what sets the cost is how the kernel treats the
//! probed instruction, and these two are the two classes (`budget::SiteClass`). The
//! functions are written in assembly so the instructions at the probed offsets are
//! known exactly. About 0.1–0.2 s; the link is closed on a background thread (closing
//! blocks for a kernel grace period).
use std::time::{Duration, Instant};

use tracing::debug;

use mapwatch_common::{MemoryLoad, ProbeKind, ProbeSpec};

use super::{AttachError, Probes, links::Site};
use crate::{discover::procs::read_proc_text, goelf::procmaps::parse_maps};

// Three identical functions: `push rbp; pop rbp; ret`. The PUSH is at offset 0, the
// RET at offset 2. RDI (the first argument) is left alone: the probe reads through it.
std::arch::global_asm!(
    ".pushsection .text.mapwatch_calibration,\"ax\",@progbits",
    ".p2align 4",
    ".globl mapwatch_calibration_plain",
    "mapwatch_calibration_plain:",
    "push rbp",
    "pop rbp",
    "ret",
    ".p2align 4",
    ".globl mapwatch_calibration_push",
    "mapwatch_calibration_push:",
    "push rbp",
    "pop rbp",
    "ret",
    ".p2align 4",
    ".globl mapwatch_calibration_ret",
    "mapwatch_calibration_ret:",
    "push rbp",
    "pop rbp",
    "ret",
    ".p2align 4",
    ".globl mapwatch_calibration_loads",
    "mapwatch_calibration_loads:",
    "push rbp",
    "pop rbp",
    "ret",
    ".popsection",
);

unsafe extern "C" {
    fn mapwatch_calibration_plain(data: *const u64);
    fn mapwatch_calibration_push(data: *const u64);
    fn mapwatch_calibration_ret(data: *const u64);
    fn mapwatch_calibration_loads(data: *const u64);
}

/// Struct fields the third probe reads (as many as a spec holds).
const FIELD_READS: usize = mapwatch_common::PROBE_LOADS;

const RET_OFFSET: u64 = 2;
/// Calls per batch and rounds: ~1.5 ms + ~6 ms per round here.
const CALLS: u32 = 1000;
const ROUNDS: usize = 15;

/// What one hit of mapwatch's probe costs in mapwatch's own code, in ns; the budget
/// turns it into its cost model (`budget::HitCost`).
#[derive(Debug, Clone, Copy)]
pub struct Calibration {
    /// At an instruction the kernel emulates (PUSH).
    pub emulated_ns: f64,
    /// At an instruction the kernel single-steps (RET).
    pub single_stepped_ns: f64,
    /// Each struct field read from the target's memory.
    pub per_read_ns: f64,
    pub took: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("cannot find mapwatch's own code in /proc/self/maps")]
    NotMapped,
    #[error("the ring buffer is already being read")]
    RingTaken,
    #[error("implausible per-hit costs ({emulated:.0} ns, {single_stepped:.0} ns)")]
    Implausible { emulated: f64, single_stepped: f64 },
}

impl Probes {
    /// Measures the per-hit cost of mapwatch's probe here (~0.2 s).
    pub fn calibrate(&mut self) -> Result<Calibration, CalibrationError> {
        let started = Instant::now();
        let pid = std::process::id();
        let exe = super::exe_path(pid);
        let maps = read_proc_text(format!("/proc/{pid}/maps")).unwrap_or_default();
        let mappings = parse_maps(&maps);
        let file_offset = |address: u64| -> Option<u64> {
            mappings
                .iter()
                .find(|m| (m.start..m.end).contains(&address))
                .map(|m| address - m.start + m.file_offset)
        };
        let push_site = file_offset(mapwatch_calibration_push as *const () as u64)
            .ok_or(CalibrationError::NotMapped)?;
        let ret_site = file_offset(mapwatch_calibration_ret as *const () as u64)
            .ok_or(CalibrationError::NotMapped)?
            + RET_OFFSET;
        let loads_site = file_offset(mapwatch_calibration_loads as *const () as u64)
            .ok_or(CalibrationError::NotMapped)?;

        if self.ring.is_none() {
            return Err(CalibrationError::RingTaken);
        }
        let slots = [self.take_slot(), self.take_slot()];
        let result = match slots {
            [Some(plain), Some(reading)] => self.time_probe(
                [plain, reading],
                &exe,
                pid,
                [push_site, ret_site, loads_site],
            ),
            _ => Err(AttachError::SlotsExhausted.into()),
        };
        // The slots go back with no probe in them; their counters are reset when reused.
        let none = ProbeSpec {
            kind: ProbeKind::None as u16,
            flags: 0,
            stack_depth: 0,
            _pad: [0; 3],
            loads: [MemoryLoad::disabled(); mapwatch_common::PROBE_LOADS],
        };
        for slot in slots.into_iter().flatten() {
            let _ = self.specs.set(slot, none, 0);
            self.free_slots.push(slot);
        }
        if let Some(ring) = self.ring.as_mut() {
            while ring.next().is_some() {}
        }
        let [emulated, single_stepped, with_reads] = result?;
        // A hit that costs nothing measurable means the probe did not fire; more than
        // 100 µs means the measurement was swamped (or something is badly wrong).
        if !(50.0..100_000.0).contains(&emulated) || !(50.0..100_000.0).contains(&single_stepped) {
            return Err(CalibrationError::Implausible {
                emulated,
                single_stepped,
            });
        }
        // Reads cost tens of ns against a hit's ~1 µs: noise can make the difference
        // negative, which means "too small to see".
        let per_read = ((with_reads - emulated) / FIELD_READS as f64).max(0.0);
        Ok(Calibration {
            emulated_ns: emulated,
            single_stepped_ns: single_stepped,
            per_read_ns: per_read,
            took: started.elapsed(),
        })
    }

    fn take_slot(&mut self) -> Option<u32> {
        self.free_slots.pop().or_else(|| {
            (self.next_slot < mapwatch_common::MAX_PROBE_SLOTS).then(|| {
                self.next_slot += 1;
                self.next_slot - 1
            })
        })
    }

    /// ns per hit of `go_probe` at the (PUSH, RET, PUSH with field reads) sites;
    /// `slots`: (without field reads, with them).
    fn time_probe(
        &mut self,
        slots: [u32; 2],
        exe: &std::path::Path,
        pid: u32,
        sites: [u64; 3],
    ) -> Result<[f64; 3], CalibrationError> {
        // Like growslice's entry, the hot probe: no struct field, the caller's PC (its
        // element type's size is read from the file in userspace).
        let plain = ProbeSpec {
            kind: ProbeKind::GrowsliceEntry as u16,
            flags: ProbeSpec::FLAG_CALLER_PC,
            stack_depth: 0,
            _pad: [0; 3],
            loads: [MemoryLoad::disabled(); mapwatch_common::PROBE_LOADS],
        };
        // Like hashGrow's: 8-byte fields through the first argument (RDI = `data`).
        let mut reading = plain;
        for (i, load) in reading.loads.iter_mut().enumerate() {
            *load = MemoryLoad {
                reg: crate::goruntime::versions::RDI,
                size: 8,
                _pad: [0; 2],
                offset: (i % 2 * 8) as u32,
            };
        }
        for (slot, spec) in slots.into_iter().zip([plain, reading]) {
            self.specs.set(slot, spec, 0).map_err(AttachError::from)?;
            self.map_assign_layouts
                .set(slot, mapwatch_common::MapAssignLayout::default(), 0)
                .map_err(AttachError::from)?;
            self.directory_layouts
                .set(slot, mapwatch_common::DirectoryLayout::default(), 0)
                .map_err(AttachError::from)?;
        }
        let sites: Vec<Site> = sites
            .into_iter()
            .zip([slots[0], slots[0], slots[1]])
            .map(|(file_offset, slot)| Site {
                file_offset,
                cookie: u64::from(slot),
            })
            .collect();
        let links = self.attach_sites(pid, exe, &sites)?;

        let data = [24u64, 8u64];
        let functions: [unsafe extern "C" fn(*const u64); 4] = [
            mapwatch_calibration_plain,
            mapwatch_calibration_push,
            mapwatch_calibration_ret,
            mapwatch_calibration_loads,
        ];
        // A batch is timed in chunks that fit half the ring, drained in between and
        // outside the clock: in a ring sized down (MAPWATCH_RING_BYTES) records would
        // otherwise be lost, and a lost record skips the program's write — the cost
        // measured would be the cheaper path's. The default ring takes a batch at once.
        let records = u64::from(self.ring_bytes) / mapwatch_common::RING_RECORD_BYTES;
        let chunk = u32::try_from(records / 2).unwrap_or(CALLS).clamp(1, CALLS);
        // ns per call of (plain, push, ret, push with reads), per round.
        let mut per_call = [[0.0f64; 4]; ROUNDS];
        for (round, times) in per_call.iter_mut().enumerate() {
            for k in 0..functions.len() {
                // Rotate the order so no function always runs first in a round.
                let which = (round + k) % functions.len();
                let f = functions[which];
                let mut spent = 0;
                let mut calls = 0;
                while calls < CALLS {
                    let now = chunk.min(CALLS - calls);
                    let before = thread_cpu_ns();
                    for _ in 0..now {
                        // SAFETY: the functions only push and pop rbp.
                        unsafe { f(data.as_ptr()) };
                    }
                    spent += thread_cpu_ns() - before;
                    calls += now;
                    // Read the records as the reader would, which in operation keeps
                    // the backlog low: few hits pay a wake-up (a batch of ~130 KiB
                    // stays below the default ring's threshold) and none is lost.
                    if let Some(ring) = self.ring.as_mut() {
                        while ring.next().is_some() {}
                    }
                }
                times[which] = spent as f64 / f64::from(CALLS);
            }
        }
        // Closing a link blocks for a grace period: not on the start-up path.
        std::thread::spawn(move || drop(links));

        let median_extra = |probed: usize| -> f64 {
            let mut extra: Vec<f64> = (0..ROUNDS)
                .map(|r| per_call[r][probed] - per_call[r][0])
                .collect();
            extra.sort_by(f64::total_cmp);
            extra[ROUNDS / 2]
        };
        debug!(
            ?per_call,
            "calibration rounds (ns per call: plain, push, ret, push with field reads)"
        );
        Ok([median_extra(1), median_extra(2), median_extra(3)])
    }
}

/// CPU time of the calling thread (user + system), ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
