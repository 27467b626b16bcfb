//! ProbePlan: from an analysed Go binary and the signals asked for, to the exact list of
//! uprobes (function, file offset, entry or RET, what to read) — or the reason a signal
//! cannot be served. Pure: no kernel, no process, testable without root.
use mapwatch_common::{
    DirectoryLayout, MapAssignLayout, MemoryLoad, PROBE_LOADS, ProbeKind, ProbeSpec,
};
use serde::Serialize;

mod hot;

use crate::{
    goelf::{GoBinary, GoElfError, decode},
    goruntime::{
        self, GoVersion, MapImplementation, RuntimeFacts, UnsupportedGoVersion,
        functions::{
            GC_MARK_TERMINATION, GROW_TO_SMALL, GROW_TO_TABLE, GROWSLICE, GROWSLICE_BUF, HASH_GROW,
            MAKEMAP, MAKEMAP_SMALL, MALLOCGC, MALLOCGC_SPECIALIZED, MAPASSIGN_FAST64, MEMHASH64,
            START_THE_WORLD, STOP_THE_WORLD, TABLE_GROW, TABLE_SPLIT,
        },
        offsets::{Field, StructOffsets, table_offsets},
        versions::{RAX, RBX, RCX},
    },
};

/// Which signals to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlanRequest {
    pub slice_growth: bool,
    /// Map growth (classic or Swiss, whichever the binary has) and map creation hints.
    pub map_growth: bool,
    /// Stop-the-world pauses (with their reason) and GC cycles.
    pub stw_gc: bool,
    /// Also probe RET instructions to check derived values against the real results.
    /// Each RET probe is single-stepped by the kernel (~4× an entry probe): tests and
    /// short investigations only.
    pub exact: bool,
    /// Also probe makemap's RETs, whose result ties each map to its make site and hint
    /// (`record`; single-stepped like every RET probe, and nothing else reads them).
    pub make_sites: bool,
    /// Opt-in probes on functions called millions of times a second.
    pub hot: HotProbes,
}

impl PlanRequest {
    /// Everything: what `inspect` shows.
    pub const ALL: PlanRequest = PlanRequest {
        slice_growth: true,
        map_growth: true,
        stw_gc: true,
        exact: true,
        make_sites: true,
        hot: HotProbes {
            map_assign: true,
            malloc: true,
        },
    };
}

/// The opt-in hot probes (tens of millions of calls per second in hot
/// code; `--hot-probes`). Off by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HotProbes {
    /// `runtime.mapassign_fast64`: entry, hash site and RETs — where each assigned
    /// slot lies in its table (the bucket heatmap) and how far it was probed.
    pub map_assign: bool,
    /// `runtime.mallocgc` (and Go 1.27's size-specialised `mallocgc*SC*`): every heap
    /// allocation's size.
    pub malloc: bool,
}

impl HotProbes {
    /// The switches for a list of names, as `--hot-probes` and the run config give them.
    pub fn from_names(names: &[HotProbe]) -> HotProbes {
        HotProbes {
            map_assign: names.contains(&HotProbe::MapassignFast64),
            malloc: names.contains(&HotProbe::Mallocgc),
        }
    }
}

/// One of the [`HotProbes`] by the name users write: the values of `--hot-probes` and
/// of `hot_probes` in the run config file. Defined here, next to the switches it names,
/// so that the CLI and the config file share one vocabulary below both (the config must
/// not depend on the CLI).
// No doc comments on the variants: clap would print them as help for each value.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum HotProbe {
    #[value(name = "mapassign_fast64")]
    MapassignFast64,
    #[value(name = "mallocgc")]
    Mallocgc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Site {
    /// First instruction after the stack-bound check.
    Entry,
    /// A RET instruction.
    Ret,
    /// The instruction a CALL returns to (the callee's results are in registers).
    AfterCall,
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
    /// mapassign_fast64 probes: how the kernel locates the assigned slot.
    #[serde(skip)]
    pub map_assign: Option<MapAssignLayout>,
    /// Swiss table grow/split probes: how the kernel totals the map's slots.
    #[serde(skip)]
    pub directory: Option<DirectoryLayout>,
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

impl ProbePlan {
    /// Why each unavailable signal is, on one line: `signal: reason; …`.
    pub fn unavailable_summary(&self) -> String {
        self.unavailable
            .iter()
            .map(|u| format!("{}: {}", u.signal, u.reason))
            .collect::<Vec<_>>()
            .join("; ")
    }
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
    let offsets = plan.offsets.clone();
    let mut add = |signal: &'static str, planned: Result<Vec<PlannedProbe>, String>| match planned {
        Ok(probes) => plan.probes.extend(probes),
        Err(reason) => plan.unavailable.push(Unavailable { signal, reason }),
    };
    if request.slice_growth {
        add(
            "slice_growth",
            plan_growslice(binary, offsets.as_ref(), request.exact),
        );
    }
    if request.map_growth {
        let growth = match maps {
            MapImplementation::Classic => plan_hash_grow(binary, offsets.as_ref()),
            MapImplementation::Swiss => plan_swiss_growth(binary, offsets.as_ref()),
        };
        add("map_growth", growth);
        add("map_make", plan_makemap(binary, request.make_sites));
    }
    if request.stw_gc {
        add("stop_the_world", plan_stw(binary, &facts));
        add("gc_cycles", plan_gc(binary));
    }
    if request.hot.map_assign {
        add(
            "map_assign",
            hot::plan_map_assign(binary, maps, offsets.as_ref()),
        );
    }
    if request.hot.malloc {
        add("malloc", hot::plan_malloc(binary));
    }
    Ok(plan)
}

/// Callers a capture walks at each map growth by default: enough to pass the runtime's
/// own frames (mapassign, then Swiss maps' putSlot/rehash/grow) to the line that
/// inserted.
pub const MAP_GROWTH_STACK_DEPTH: u8 = 8;

/// Makes the growth probes record their callers (`mapwatch record`): `slices` frames
/// at each growslice, at least [`MAP_GROWTH_STACK_DEPTH`] at each map growth.
pub fn walk_stacks(plan: &mut ProbePlan, slices: u8) {
    let max = mapwatch_common::MAX_STACK_DEPTH as u8;
    for probe in &mut plan.probes {
        let depth = match probe.kind {
            ProbeKind::GrowsliceEntry => slices,
            ProbeKind::HashGrow
            | ProbeKind::MapGrowToSmall
            | ProbeKind::MapGrowToTable
            | ProbeKind::MapTableGrow
            | ProbeKind::MapTableSplit => slices.max(MAP_GROWTH_STACK_DEPTH),
            _ => 0,
        };
        probe.spec.stack_depth = depth.min(max);
    }
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

/// One load: `size` bytes at `regs[reg] + offset`.
fn load(reg: u8, size: u8, offset: u32) -> MemoryLoad {
    MemoryLoad {
        reg,
        size,
        _pad: [0; 2],
        offset,
    }
}

fn spec(kind: ProbeKind, flags: u16, loads: &[MemoryLoad]) -> ProbeSpec {
    let mut all = [MemoryLoad::disabled(); PROBE_LOADS];
    all[..loads.len()].copy_from_slice(loads);
    ProbeSpec {
        kind: kind as u16,
        flags,
        stack_depth: 0,
        _pad: [0; 3],
        loads: all,
    }
}

/// A function's code, decoded, with the stack-bound check required: every function
/// mapwatch probes has one (docs/go-runtime.md, "Probe sites"). Without it the bytes are not the code
/// we know (e.g. a wrong text base from a damaged pclntab): refuse rather than probe
/// an arbitrary instruction.
struct Decoded<'a> {
    name: &'static str,
    vaddr: u64,
    code: &'a [u8],
    layout: decode::FunctionLayout,
}

fn decode_function<'a>(binary: &'a GoBinary, name: &'static str) -> Result<Decoded<'a>, String> {
    let function = binary.function(name).ok_or_else(|| {
        if binary.has_symtab() {
            format!("{name} is not in the symbol table")
        } else {
            format!("{name} is neither in the symbol table nor in the pclntab")
        }
    })?;
    let code = binary
        .code(function)
        .ok_or_else(|| format!("{name}'s code is outside the file's segments"))?;
    let layout =
        decode::analyze_function(code, function.vaddr).map_err(|e| format!("{name}: {e}"))?;
    if layout.after_stack_check.is_none() {
        return Err(format!(
            "{name} at {:#x} has no stack-bound check: not the code expected, not probing it",
            function.vaddr
        ));
    }
    Ok(Decoded {
        name,
        vaddr: function.vaddr,
        code,
        layout,
    })
}

impl Decoded<'_> {
    fn probe(
        &self,
        binary: &GoBinary,
        site: Site,
        offset: u64,
        spec: ProbeSpec,
    ) -> Result<PlannedProbe, String> {
        let name = self.name;
        let vaddr = self.vaddr + offset;
        let file_offset = binary
            .file_offset(vaddr)
            .ok_or_else(|| format!("{name}+{offset:#x} is not backed by the file"))?;
        let instruction_len = self
            .layout
            .boundaries
            .iter()
            .find(|&&b| b > offset)
            .map_or(self.code.len() as u64 - offset, |next| next - offset);
        let kind = ProbeKind::from_u16(spec.kind);
        Ok(PlannedProbe {
            probe: kind.label(),
            kind,
            function: name,
            site,
            vaddr,
            file_offset,
            expected_bytes: self.code[offset as usize..(offset + instruction_len) as usize]
                .to_vec(),
            spec,
            map_assign: None,
            directory: None,
        })
    }

    fn entry(&self, binary: &GoBinary, spec: ProbeSpec) -> Result<PlannedProbe, String> {
        self.probe(binary, Site::Entry, self.layout.entry_offset(), spec)
    }

    fn rets(&self, binary: &GoBinary, spec: ProbeSpec) -> Result<Vec<PlannedProbe>, String> {
        if self.layout.rets.is_empty() {
            return Err(format!("{} has no RET instruction to probe", self.name));
        }
        self.layout
            .rets
            .iter()
            .map(|&ret| self.probe(binary, Site::Ret, ret, spec))
            .collect()
    }
}

fn plan_growslice(
    binary: &GoBinary,
    offsets: Option<&StructOffsets>,
    exact: bool,
) -> Result<Vec<PlannedProbe>, String> {
    // The element type's size and pointer bytes are read from the binary file by
    // userspace (`Symbolizer::elem_layout`), not by the probe; their offsets must still
    // be known.
    required(offsets, Field::TypeSize)?;
    required(offsets, Field::TypePtrBytes)?;
    let growslice = decode_function(binary, GROWSLICE)?;
    let entry_spec = spec(ProbeKind::GrowsliceEntry, ProbeSpec::FLAG_CALLER_PC, &[]);
    let mut probes = vec![growslice.entry(binary, entry_spec)?];
    // Counting stays with growslice (heap growth); this probe only names the append
    // site of the growslice calls growsliceBuf makes (docs/go-runtime.md, "Compiler stack buffers").
    if binary.function(GROWSLICE_BUF).is_some() {
        let buf = decode_function(binary, GROWSLICE_BUF)?;
        probes.push(buf.entry(
            binary,
            spec(ProbeKind::GrowsliceBufEntry, ProbeSpec::FLAG_CALLER_PC, &[]),
        )?);
    }
    if exact {
        probes.extend(growslice.rets(binary, spec(ProbeKind::GrowsliceRet, 0, &[]))?);
    }
    Ok(probes)
}

/// hashGrow(t, h): h in RBX. Reads count, B, noverflow and flags before the growth
/// because same-size vs doubling follows from them (`hashGrow` in src/runtime/map.go,
/// map_noswiss.go in 1.24–1.25).
fn plan_hash_grow(
    binary: &GoBinary,
    offsets: Option<&StructOffsets>,
) -> Result<Vec<PlannedProbe>, String> {
    let loads = [
        load(RBX, 8, required(offsets, Field::HmapCount)?),
        load(RBX, 1, required(offsets, Field::HmapB)?),
        load(RBX, 2, required(offsets, Field::HmapNoverflow)?),
        load(RBX, 1, required(offsets, Field::HmapFlags)?),
    ];
    let hash_grow = decode_function(binary, HASH_GROW)?;
    Ok(vec![hash_grow.entry(
        binary,
        spec(ProbeKind::HashGrow, ProbeSpec::FLAG_CALLER_PC, &loads),
    )?])
}

/// Where a map growth probe's map and map type are: (map, type) registers (see
/// [`plan_hash_grow`], [`plan_swiss_growth`]; the type is the receiver's next argument).
pub fn map_growth_registers(kind: ProbeKind) -> (u8, u8) {
    match kind {
        ProbeKind::HashGrow => (RBX, RAX),
        ProbeKind::MapGrowToSmall | ProbeKind::MapGrowToTable => (RAX, RBX),
        _ => (RCX, RBX),
    }
}

/// Swiss growth, one probe per growth kind. Receivers and arguments in ABI order
/// (docs/go-runtime.md, "Arguments"; signatures in src/internal/runtime/maps/map.go and table.go):
/// growToSmall/growToTable(m=RAX), grow(t=RAX, typ, m=RCX, newCapacity=DI),
/// split(t=RAX, typ, m=RCX).
fn plan_swiss_growth(
    binary: &GoBinary,
    offsets: Option<&StructOffsets>,
) -> Result<Vec<PlannedProbe>, String> {
    let map_used = required(offsets, Field::SwissMapUsed)?;
    let map_dir_len = required(offsets, Field::SwissMapDirLen)?;
    let map_global_depth = required(offsets, Field::SwissMapGlobalDepth)?;
    let table_used = required(offsets, Field::SwissTableUsed)?;
    let table_capacity = required(offsets, Field::SwissTableCapacity)?;
    let table_local_depth = required(offsets, Field::SwissTableLocalDepth)?;
    let directory = DirectoryLayout {
        enabled: 1,
        map_reg: RCX,
        _pad: [0; 2],
        map_dir_ptr: required(offsets, Field::SwissMapDirPtr)?,
        map_dir_len,
        map_global_depth,
        table_capacity,
        table_local_depth,
    };
    let flags = ProbeSpec::FLAG_CALLER_PC;
    let on_map = [load(RAX, 8, map_used), load(RAX, 8, map_dir_len)];
    let on_table = [
        load(RCX, 8, map_used),
        load(RCX, 8, map_dir_len),
        load(RAX, 2, table_capacity),
        load(RAX, 2, table_used),
    ];
    let on_split = [
        load(RCX, 8, map_used),
        load(RCX, 8, map_dir_len),
        load(RAX, 1, table_local_depth),
        load(RCX, 1, map_global_depth),
    ];
    [
        (
            GROW_TO_SMALL,
            spec(ProbeKind::MapGrowToSmall, flags, &on_map),
        ),
        (
            GROW_TO_TABLE,
            spec(ProbeKind::MapGrowToTable, flags, &on_map),
        ),
        (TABLE_GROW, spec(ProbeKind::MapTableGrow, flags, &on_table)),
        (
            TABLE_SPLIT,
            spec(ProbeKind::MapTableSplit, flags, &on_split),
        ),
    ]
    .into_iter()
    .map(|(name, spec)| {
        let mut probe = decode_function(binary, name)?.entry(binary, spec)?;
        if matches!(
            ProbeKind::from_u16(spec.kind),
            ProbeKind::MapTableGrow | ProbeKind::MapTableSplit
        ) {
            probe.directory = Some(directory);
        }
        Ok(probe)
    })
    .collect()
}

/// makemap(t, hint, h): hint in RBX in both map implementations (src/runtime/map.go,
/// map_swiss.go and map_noswiss.go in 1.24–1.25); makemap_small() takes none.
/// For `record`, their RETs too: RAX is the new map (the result), which ties the map's
/// later growths to its make site and hint.
fn plan_makemap(binary: &GoBinary, make_sites: bool) -> Result<Vec<PlannedProbe>, String> {
    let flags = ProbeSpec::FLAG_CALLER_PC;
    let makemap = decode_function(binary, MAKEMAP)?;
    let small = decode_function(binary, MAKEMAP_SMALL)?;
    let mut probes = vec![
        makemap.entry(binary, spec(ProbeKind::MakeMap, flags, &[]))?,
        small.entry(binary, spec(ProbeKind::MakeMapSmall, flags, &[]))?,
    ];
    if make_sites {
        let ret = spec(ProbeKind::MakeMapRet, 0, &[]);
        probes.extend(makemap.rets(binary, ret)?);
        probes.extend(small.rets(binary, ret)?);
    }
    Ok(probes)
}

/// STW pauses: the start's RETs give `now` (RAX), the end of the pause; RET probes are
/// single-stepped, which is fine for a few calls per GC cycle. The beginning comes from
/// the start's `worldStop` argument (1.22+) or the stop's entry (≤1.21).
fn plan_stw(binary: &GoBinary, facts: &RuntimeFacts) -> Result<Vec<PlannedProbe>, String> {
    let flags = ProbeSpec::FLAG_CALLER_PC;
    let start = decode_function(binary, START_THE_WORLD)?;
    let mut probes = start.rets(binary, spec(ProbeKind::StartTheWorldRet, 0, &[]))?;
    match facts.stw {
        goruntime::versions::StwAbi::WorldStopArgument { .. } => {
            probes.push(start.entry(binary, spec(ProbeKind::StartTheWorldEntry, flags, &[]))?);
        }
        goruntime::versions::StwAbi::StopThenStart { .. } => {
            let stop = decode_function(binary, STOP_THE_WORLD)?;
            probes.push(stop.entry(binary, spec(ProbeKind::StopTheWorldEntry, flags, &[]))?);
        }
    }
    Ok(probes)
}

fn plan_gc(binary: &GoBinary) -> Result<Vec<PlannedProbe>, String> {
    let mark_termination = decode_function(binary, GC_MARK_TERMINATION)?;
    Ok(vec![mark_termination.entry(
        binary,
        spec(ProbeKind::GcMarkTermination, 0, &[]),
    )?])
}
