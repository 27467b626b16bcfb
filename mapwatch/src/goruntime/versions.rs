//! The per-version table. Register numbers index `mapwatch_common::Event::regs`, which
//! holds the Go ABIInternal integer argument registers in order
//! (src/cmd/compile/abi-internal.md: RAX, RBX, RCX, RDI, RSI, R8, R9, R10, R11).
use std::fmt;

use super::slice_growth::{SliceGrowthRule, rule_for};

/// Go minor versions (1.x) this build knows the runtime of: 1.19 (Debian 12 builds its
/// Go programs with it) and 1.21–1.27. Go 1.20 is not installable here, so it is not
/// verified and refused (docs/go-runtime.md, "Go 1.19").
pub const SUPPORTED_MINORS: &[u32] = &[19, 21, 22, 23, 24, 25, 26, 27];
pub const SUPPORTED_DESCRIPTION: &str = "go1.19 and go1.21 to go1.27";

/// Index of an ABI argument register in `Event::regs`.
pub type AbiReg = u8;
pub const RAX: AbiReg = 0;
pub const RBX: AbiReg = 1;
pub const RCX: AbiReg = 2;
pub const RDI: AbiReg = 3;
pub const RSI: AbiReg = 4;

/// A Go release as written in a binary's build info, e.g. `go1.22.10`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// The string as found, e.g. `go1.24.11` or `go1.25rc1`.
    pub raw: String,
}

impl GoVersion {
    /// Parses `go1.N`, `go1.N.P`, `go1.NrcK`, `go1.NbetaK`; `None` for anything else
    /// (e.g. `devel` builds, whose runtime cannot be matched to a table entry).
    pub fn parse(raw: &str) -> Option<GoVersion> {
        let rest = raw.strip_prefix("go")?;
        // A version may carry a suffix after a space or '-' (e.g. "go1.22.1 X:boringcrypto").
        let rest = rest.split([' ', '-']).next()?;
        let mut parts = rest.splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor_part = parts.next()?;
        let minor_digits: String = minor_part
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let minor = minor_digits.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        Some(GoVersion {
            major,
            minor,
            patch,
            raw: raw.to_string(),
        })
    }
}

impl GoVersion {
    /// The release without build-time suffixes: `go1.24.11 X:noswissmap` → `go1.24.11`.
    /// What labels carry (bounded; the experiment is reported separately).
    pub fn release(&self) -> &str {
        self.raw.split(' ').next().unwrap_or(&self.raw)
    }
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// How a binary's maps are implemented; decides which functions are map growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapImplementation {
    /// Buckets + overflow chains, incremental evacuation (src/runtime/map.go ≤1.23,
    /// map_noswiss.go in 1.24–1.25 with GOEXPERIMENT=noswissmap).
    Classic,
    /// Swiss tables (src/internal/runtime/maps/, default from 1.24; the only kind from
    /// 1.26, where GOEXPERIMENT=noswissmap no longer exists).
    Swiss,
}

impl MapImplementation {
    pub fn of(version: &GoVersion, goexperiment: &str) -> MapImplementation {
        let disabled = goexperiment.split(',').any(|e| e.trim() == "noswissmap");
        if version.minor >= 24 && (version.minor >= 26 || !disabled) {
            MapImplementation::Swiss
        } else {
            MapImplementation::Classic
        }
    }
}

/// Where `runtime.growslice`'s arguments are at its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrowsliceAbi {
    /// The old backing array: a slice's successive growths chain through it (the
    /// array one growth returns is the one the next growth copies from).
    pub old_ptr: AbiReg,
    /// The length the slice needs (`newLen`; 1.19 calls it `cap`).
    pub new_len: AbiReg,
    pub old_cap: AbiReg,
    pub elem_type: AbiReg,
    /// The elements growslice copies: the old length.
    pub old_len: OldLen,
}

/// Where growslice's old length is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldLen {
    /// In a register (Go 1.19: the old slice's len).
    Register(AbiReg),
    /// `newLen - num`, num in this register (Go 1.20+: `oldLen := newLen - num`,
    /// src/runtime/slice.go).
    NewLenMinus(AbiReg),
}

impl OldLen {
    pub fn read(self, abi: &GrowsliceAbi, regs: &[u64]) -> u64 {
        match self {
            OldLen::Register(r) => regs[usize::from(r)],
            OldLen::NewLenMinus(num) => {
                regs[usize::from(abi.new_len)].saturating_sub(regs[usize::from(num)])
            }
        }
    }
}

/// Where the result slice is at growslice's RET: (ptr, len, cap) in RAX, RBX, RCX — a
/// 3-word result is register-assigned like arguments (abi-internal.md).
pub const GROWSLICE_RESULT_CAP: AbiReg = RCX;
pub const GROWSLICE_RESULT_PTR: AbiReg = RAX;

/// Classic maps' load factor as the runtime computes it: a map grows (doubles) when
/// `count > 8 && count > num * ((1 << B) / den)` (src/runtime/map.go `overLoadFactor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassicLoadFactor {
    pub num: u64,
    pub den: u64,
}

impl ClassicLoadFactor {
    /// `overLoadFactor(count, B)`.
    pub fn over(&self, count: u64, b: u8) -> bool {
        const BUCKET_COUNT: u64 = 8;
        let buckets = 1u64.checked_shl(u32::from(b)).unwrap_or(u64::MAX);
        count > BUCKET_COUNT && count > self.num.saturating_mul(buckets / self.den)
    }
}

/// How a stop-the-world pause is observed (src/runtime/proc.go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StwAbi {
    /// Go 1.22+: `startTheWorldWithSema(now int64, w worldStop) int64`. `worldStop` is
    /// register-assigned after `now`: reason in RBX, start (1.22) / startedStopping
    /// (1.23+) in RCX. The pause ends at the `now` it returns (callers often pass 0).
    WorldStopArgument { reason: AbiReg, started: AbiReg },
    /// Go 1.19/1.21: `stopTheWorldWithSema([reason stwReason])` then
    /// `startTheWorldWithSema(...) int64`; the pause runs from the stop's entry to the
    /// `now` start returns. 1.19 passes no reason.
    StopThenStart { reason: Option<AbiReg> },
}

/// `stwReasonStrings` (src/runtime/proc.go), identical in 1.21–1.27 (checked); the index
/// is the `stwReason` value.
const STW_REASONS: [&str; 17] = [
    "unknown",
    "GC mark termination",
    "GC sweep termination",
    "write heap dump",
    "goroutine profile",
    "goroutine profile cleanup",
    "all goroutines stack trace",
    "read mem stats",
    "AllThreadsSyscall",
    "GOMAXPROCS",
    "start trace",
    "stop trace",
    "CountPagesInUse (test)",
    "ReadMetricsSlow (test)",
    "ReadMemStatsSlow (test)",
    "PageCachePagesLeaked (test)",
    "ResetDebugLog (test)",
];

/// The name of a `stwReason` value: a bounded label.
pub fn stw_reason_name(reason: u64) -> &'static str {
    usize::try_from(reason)
        .ok()
        .and_then(|i| STW_REASONS.get(i))
        .copied()
        .unwrap_or("unknown")
}

/// The facts one Go version's runtime needs from us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeFacts {
    pub growslice: GrowsliceAbi,
    pub slice_growth: SliceGrowthRule,
    pub classic_load_factor: ClassicLoadFactor,
    pub stw: StwAbi,
}

/// Refusal to guess: the binary's Go version is outside the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{found} is not supported by this mapwatch build (supported: {SUPPORTED_DESCRIPTION}); \
     its runtime's registers and struct offsets are unknown"
)]
pub struct UnsupportedGoVersion {
    pub found: String,
}

pub fn facts_for(
    version: &GoVersion,
    goexperiment: &str,
) -> Result<RuntimeFacts, UnsupportedGoVersion> {
    let unsupported = || UnsupportedGoVersion {
        found: version.raw.clone(),
    };
    if version.major != 1 || !SUPPORTED_MINORS.contains(&version.minor) {
        return Err(unsupported());
    }
    let growslice = if version.minor <= 19 {
        // growslice(et *_type, old slice, cap int) slice — src/runtime/slice.go ≤1.19:
        // RAX=et, then the slice struct {array, len, cap} in RBX, RCX, RDI, then the
        // needed length in RSI (docs/go-runtime.md, "Go 1.19", confirmed by DWARF).
        GrowsliceAbi {
            old_ptr: RBX,
            new_len: RSI,
            old_cap: RDI,
            elem_type: RAX,
            old_len: OldLen::Register(RCX),
        }
    } else {
        // growslice(oldPtr unsafe.Pointer, newLen, oldCap, num int, et *_type) slice —
        // src/runtime/slice.go since Go 1.20.
        GrowsliceAbi {
            old_ptr: RAX,
            new_len: RBX,
            old_cap: RCX,
            elem_type: RSI,
            old_len: OldLen::NewLenMinus(RDI),
        }
    };
    // loadFactorNum/loadFactorDen in src/runtime/map.go: 13/2 (6.5) in 1.19; 1.21 wrote
    // (bucketCnt*13/16)*loadFactorDen = 12/2 (6.0, integer truncation); 1.22+
    // loadFactorDen*bucketCnt*13/16 = 13/2 again (docs/go-runtime.md, "Classic maps").
    let classic_load_factor = if version.minor == 21 {
        ClassicLoadFactor { num: 12, den: 2 }
    } else {
        ClassicLoadFactor { num: 13, den: 2 }
    };
    let stw = match version.minor {
        19 => StwAbi::StopThenStart { reason: None },
        21 => StwAbi::StopThenStart { reason: Some(RAX) },
        _ => StwAbi::WorldStopArgument {
            reason: RBX,
            started: RCX,
        },
    };
    Ok(RuntimeFacts {
        growslice,
        classic_load_factor,
        stw,
        slice_growth: rule_for(version.minor, goexperiment).ok_or_else(unsupported)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_and_prerelease_versions() {
        let v = GoVersion::parse("go1.22.10").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (1, 22, 10));
        let v = GoVersion::parse("go1.25rc1").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (1, 25, 0));
        let v = GoVersion::parse("go1.24.11 X:noswissmap").unwrap();
        assert_eq!((v.minor, v.patch, v.release()), (24, 11, "go1.24.11"));
        let v = GoVersion::parse("go1.21").unwrap();
        assert_eq!((v.minor, v.patch), (21, 0));
        assert!(GoVersion::parse("devel go1.23-abcdef").is_none());
        assert!(GoVersion::parse("1.22").is_none());
    }

    #[test]
    fn map_implementation_follows_version_and_goexperiment() {
        let v = |raw| GoVersion::parse(raw).unwrap();
        assert_eq!(
            MapImplementation::of(&v("go1.23.9"), ""),
            MapImplementation::Classic
        );
        assert_eq!(
            MapImplementation::of(&v("go1.24.11"), ""),
            MapImplementation::Swiss
        );
        assert_eq!(
            MapImplementation::of(&v("go1.25.5"), "noswissmap"),
            MapImplementation::Classic
        );
        assert_eq!(
            MapImplementation::of(&v("go1.24.11"), "boringcrypto,noswissmap"),
            MapImplementation::Classic
        );
        assert_eq!(
            MapImplementation::of(&v("go1.26.6"), "noswissmap"),
            MapImplementation::Swiss
        );
    }

    #[test]
    fn classic_maps_double_at_the_observed_inserts() {
        // docs/go-runtime.md, "Classic maps": B increments at inserts #9, #13, #25, #49 on 1.21 and
        // #9, #14, #27, #53, #105 on 1.22+ (count before the insert = insert - 1).
        let growth_points = |lf: ClassicLoadFactor| -> Vec<u64> {
            let mut b = 0u8;
            let mut points = Vec::new();
            for count in 0..120u64 {
                if lf.over(count + 1, b) {
                    b += 1;
                    points.push(count + 1);
                }
            }
            points
        };
        let v = |raw| {
            facts_for(&GoVersion::parse(raw).unwrap(), "")
                .unwrap()
                .classic_load_factor
        };
        assert_eq!(growth_points(v("go1.21.13")), [9, 13, 25, 49, 97]);
        assert_eq!(growth_points(v("go1.22.10")), [9, 14, 27, 53, 105]);
        assert_eq!(growth_points(v("go1.19.8")), [9, 14, 27, 53, 105]);
    }

    #[test]
    fn refuses_versions_outside_the_table() {
        for raw in ["go1.17", "go1.18.10", "go1.20.14", "go1.28.0", "go2.0"] {
            let err = facts_for(&GoVersion::parse(raw).unwrap(), "").unwrap_err();
            assert_eq!(err.found, raw);
            assert!(err.to_string().contains("not supported"), "{err}");
        }
        for &minor in SUPPORTED_MINORS {
            let v = GoVersion::parse(&format!("go1.{minor}.1")).unwrap();
            assert!(facts_for(&v, "").is_ok(), "go1.{minor}");
        }
    }
}
