//! ProbePlan: from an analysed Go binary and the signals asked for, to the exact list of
//! uprobes (function, file offset, entry or RET, what to read) — or the reason a signal
//! cannot be served. Pure: no kernel, no process, testable without root.
use mapwatch_common::{MemoryLoad, ProbeKind, ProbeSpec};
use serde::Serialize;

use crate::{
    goelf::{GoBinary, GoElfError, decode},
    goruntime::{
        self, GoVersion, MapImplementation, RuntimeFacts, UnsupportedGoVersion,
        offsets::{Field, StructOffsets, table_offsets},
    },
};

/// Which signals to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlanRequest {
    pub slice_growth: bool,
    /// Also probe RET instructions to check derived values against the real results.
    /// Each RET probe is single-stepped by the kernel (~4× an entry probe): tests and
    /// short investigations only.
    pub exact: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Site {
    /// First instruction after the stack-bound check.
    Entry,
    /// A RET instruction.
    Ret,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedProbe {
    pub probe: &'static str,
    #[serde(skip)]
    pub kind: ProbeKind,
    pub function: &'static str,
    pub site: Site,
    pub vaddr: u64,
    pub file_offset: u64,
    /// The instruction bytes expected at `file_offset`; checked against the target
    /// file right before attaching (an int3 inside an instruction corrupts the target).
    pub expected_bytes: Vec<u8>,
    #[serde(skip)]
    pub spec: ProbeSpec,
}

#[derive(Debug, Clone, Serialize)]
pub struct Unavailable {
    pub signal: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbePlan {
    pub go_version: String,
    pub map_implementation: MapImplementation,
    pub probes: Vec<PlannedProbe>,
    pub unavailable: Vec<Unavailable>,
    /// None when neither DWARF nor the table knows this version's layouts.
    #[serde(skip)]
    pub offsets: Option<StructOffsets>,
    #[serde(skip)]
    pub facts: RuntimeFacts,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{path}: {source}")]
    UnsupportedGoVersion {
        path: String,
        #[source]
        source: UnsupportedGoVersion,
    },
    #[error(transparent)]
    Binary(#[from] GoElfError),
}

pub const GROWSLICE: &str = "runtime.growslice";

/// Probe names as exported in `probe` labels. Bounded: one per probe site kind.
pub fn probe_name(kind: ProbeKind) -> &'static str {
    match kind {
        ProbeKind::GrowsliceEntry => "growslice",
        ProbeKind::GrowsliceRet => "growslice_ret",
        ProbeKind::None => "none",
    }
}

pub fn plan_probes(binary: &GoBinary, request: PlanRequest) -> Result<ProbePlan, PlanError> {
    let info = binary.build_info();
    let unsupported = |found: &str| PlanError::UnsupportedGoVersion {
        path: binary.path().display().to_string(),
        source: UnsupportedGoVersion {
            found: found.to_string(),
        },
    };
    let version =
        GoVersion::parse(&info.go_version).ok_or_else(|| unsupported(&info.go_version))?;
    let facts = goruntime::facts_for(&version, info.goexperiment()).map_err(|source| {
        PlanError::UnsupportedGoVersion {
            path: binary.path().display().to_string(),
            source,
        }
    })?;
    let maps = MapImplementation::of(&version, info.goexperiment());
    let offsets = struct_offsets(binary, version.minor, maps)?;
    let mut plan = ProbePlan {
        go_version: version.release().to_string(),
        map_implementation: maps,
        probes: Vec::new(),
        unavailable: Vec::new(),
        offsets,
        facts,
    };
    if request.slice_growth {
        match plan_growslice(binary, &facts, plan.offsets.as_ref(), request.exact) {
            Ok(probes) => plan.probes.extend(probes),
            Err(reason) => plan.unavailable.push(Unavailable {
                signal: "slice_growth",
                reason,
            }),
        }
    }
    Ok(plan)
}

/// Offsets from the binary's DWARF, else from the generated per-version table.
pub fn struct_offsets(
    binary: &GoBinary,
    minor: u32,
    maps: MapImplementation,
) -> Result<Option<StructOffsets>, GoElfError> {
    Ok(match binary.dwarf_structs(&Field::all_struct_names())? {
        Some(structs) => Some(StructOffsets::from_dwarf(&structs)),
        None => table_offsets(minor, maps),
    })
}

fn required(offsets: Option<&StructOffsets>, field: Field) -> Result<u32, String> {
    let offsets = offsets.ok_or_else(|| {
        "the binary has no DWARF and this Go version is not in the offsets table".to_string()
    })?;
    offsets.get(field).ok_or_else(|| {
        format!(
            "the offset of {field:?} is unknown for this binary ({:?})",
            offsets.source
        )
    })
}

fn plan_growslice(
    binary: &GoBinary,
    facts: &RuntimeFacts,
    offsets: Option<&StructOffsets>,
    exact: bool,
) -> Result<Vec<PlannedProbe>, String> {
    let type_size = required(offsets, Field::TypeSize)?;
    let type_ptr_bytes = required(offsets, Field::TypePtrBytes)?;
    let function = binary.function(GROWSLICE).ok_or_else(|| {
        if binary.has_symtab() {
            format!("{GROWSLICE} is not in the symbol table")
        } else {
            format!("{GROWSLICE} is neither in the symbol table nor in the pclntab")
        }
    })?;
    let code = binary
        .code(function)
        .ok_or_else(|| format!("{GROWSLICE}'s code is outside the file's segments"))?;
    let layout =
        decode::analyze_function(code, function.vaddr).map_err(|e| format!("{GROWSLICE}: {e}"))?;
    // growslice always starts with the stack-bound check (go-runtime.md §2). Without
    // it, the bytes are not the growslice we know (e.g. a wrong text base in a
    // damaged pclntab): refuse rather than probe an arbitrary instruction.
    if layout.after_stack_check.is_none() {
        return Err(format!(
            "{GROWSLICE} at {:#x} has no stack-bound check: not the code expected, not probing it",
            function.vaddr
        ));
    }
    let abi = facts.growslice;
    let entry_spec = ProbeSpec {
        kind: ProbeKind::GrowsliceEntry as u16,
        flags: ProbeSpec::FLAG_CALLER_PC,
        _pad: 0,
        loads: [
            MemoryLoad {
                reg: abi.elem_type,
                size: 8,
                _pad: [0; 2],
                offset: type_size,
            },
            MemoryLoad {
                reg: abi.elem_type,
                size: 8,
                _pad: [0; 2],
                offset: type_ptr_bytes,
            },
        ],
    };
    let ret_spec = ProbeSpec {
        kind: ProbeKind::GrowsliceRet as u16,
        flags: 0,
        _pad: 0,
        loads: [MemoryLoad::disabled(); 2],
    };
    let mut sites = vec![(
        Site::Entry,
        layout.entry_offset(),
        ProbeKind::GrowsliceEntry,
        entry_spec,
    )];
    if exact {
        if layout.rets.is_empty() {
            return Err(format!(
                "{GROWSLICE} has no RET instruction to probe in exact mode"
            ));
        }
        sites.extend(
            layout
                .rets
                .iter()
                .map(|&ret| (Site::Ret, ret, ProbeKind::GrowsliceRet, ret_spec)),
        );
    }
    sites
        .into_iter()
        .map(|(site, offset, kind, spec)| {
            let vaddr = function.vaddr + offset;
            let file_offset = binary
                .file_offset(vaddr)
                .ok_or_else(|| format!("{GROWSLICE}+{offset:#x} is not backed by the file"))?;
            let instruction_len = layout
                .boundaries
                .iter()
                .find(|&&b| b > offset)
                .map_or(code.len() as u64 - offset, |next| next - offset);
            let expected_bytes =
                code[offset as usize..(offset + instruction_len) as usize].to_vec();
            Ok(PlannedProbe {
                probe: probe_name(kind),
                kind,
                function: GROWSLICE,
                site,
                vaddr,
                file_offset,
                expected_bytes,
                spec,
            })
        })
        .collect()
}
