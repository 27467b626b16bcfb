//! Load the BPF object, attach a ProbePlan to a process, detach cleanly.
pub mod privileges;
pub mod reader;

use std::{
    fs::File,
    num::NonZeroU32,
    os::unix::fs::{FileExt as _, MetadataExt as _},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use mapwatch_common::{MAX_PROBE_SLOTS, ProbeKind, ProbeSpec};
use tracing::{debug, info, warn};

use crate::plan::{PlannedProbe, ProbePlan};

const PROGRAM: &str = "go_probe";

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Privileges(#[from] privileges::MissingPrivileges),
    #[error("loading the BPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("BPF program {PROGRAM}: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("BPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("the BPF object has no {0}")]
    Missing(&'static str),
    #[error("process {pid} is gone (exited before its probes were attached)")]
    ProcessGone { pid: u32 },
    #[error(
        "process {pid} now runs a different binary than the one analysed (it exec'd); not attaching at stale offsets"
    )]
    BinaryChanged { pid: u32 },
    #[error(
        "{function}+{offset:#x} in {path}: expected instruction bytes {expected:02x?}, found {found:02x?}; not attaching"
    )]
    BytesMismatch {
        path: PathBuf,
        function: &'static str,
        offset: u64,
        expected: Vec<u8>,
        found: Vec<u8>,
    },
    #[error("all {MAX_PROBE_SLOTS} probe slots are in use")]
    SlotsExhausted,
}

impl AttachError {
    /// Bounded label for `mapwatch_attach_errors_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            AttachError::Privileges(_) => "privileges",
            AttachError::Load(_) | AttachError::Missing(_) => "load",
            AttachError::Program(_) => "attach",
            AttachError::Map(_) => "map",
            AttachError::ProcessGone { .. } => "process_gone",
            AttachError::BinaryChanged { .. } => "binary_changed",
            AttachError::BytesMismatch { .. } => "bytes_mismatch",
            AttachError::SlotsExhausted => "slots_exhausted",
        }
    }
}

/// The identity of an executable file: a process that exec'd has another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
}

impl FileIdentity {
    pub fn of(path: &std::path::Path) -> std::io::Result<FileIdentity> {
        let meta = std::fs::metadata(path)?;
        Ok(FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// Path through which a process's executable is attached: /proc/PID/exe names the
/// exact inode, even if the file was deleted or lives in another mount namespace.
pub fn exe_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/exe"))
}

/// One attached uprobe.
#[derive(Debug, Clone)]
pub struct AttachedProbe {
    pub slot: u32,
    pub pid: u32,
    pub kind: ProbeKind,
    pub probe: &'static str,
}

/// Kernel-side per-slot counters, read at scrape time (never copied on a timer).
pub struct KernelCounters {
    hits: PerCpuArray<MapData, u64>,
    lost: PerCpuArray<MapData, u64>,
}

/// Totals of one slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotCounts {
    pub hits: u64,
    pub lost: u64,
}

impl KernelCounters {
    pub fn read(&self, slot: u32) -> Result<SlotCounts, aya::maps::MapError> {
        let sum = |map: &PerCpuArray<MapData, u64>| -> Result<u64, aya::maps::MapError> {
            Ok(map.get(&slot, 0)?.iter().sum())
        };
        Ok(SlotCounts {
            hits: sum(&self.hits)?,
            lost: sum(&self.lost)?,
        })
    }
}

/// The loaded BPF object and everything attached from it.
pub struct Probes {
    ebpf: Ebpf,
    specs: Array<MapData, ProbeSpec>,
    next_slot: u32,
    attached: Vec<(AttachedProbe, UProbeLinkId)>,
    counters: Arc<Mutex<KernelCounters>>,
    ring: Option<RingBuf<MapData>>,
    logger: Option<BpfLogger>,
}

/// Reads `aya_log_ebpf` records from the BPF side (see `reader::forward_logs`).
pub type BpfLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

impl Probes {
    /// Loads and verifies the BPF programs. Needs CAP_BPF + CAP_PERFMON (or root).
    pub fn load() -> Result<Probes, AttachError> {
        privileges::check()?;
        let mut ebpf = Ebpf::load(aya::include_bytes_aligned!(concat!(
            env!("OUT_DIR"),
            "/mapwatch"
        )))?;
        // The BPF side logs only on paths that mean a bug (never per hit).
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                debug!("BPF logging unavailable: {e}");
                None
            }
        };
        let program: &mut UProbe = ebpf
            .program_mut(PROGRAM)
            .ok_or(AttachError::Missing("go_probe program"))?
            .try_into()?;
        program.load()?;
        let specs = Array::try_from(
            ebpf.take_map("PROBE_SPECS")
                .ok_or(AttachError::Missing("PROBE_SPECS map"))?,
        )?;
        let hits = PerCpuArray::try_from(
            ebpf.take_map("PROBE_HITS")
                .ok_or(AttachError::Missing("PROBE_HITS map"))?,
        )?;
        let lost = PerCpuArray::try_from(
            ebpf.take_map("EVENTS_LOST")
                .ok_or(AttachError::Missing("EVENTS_LOST map"))?,
        )?;
        let ring = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .ok_or(AttachError::Missing("EVENTS map"))?,
        )?;
        Ok(Probes {
            ebpf,
            specs,
            next_slot: 0,
            attached: Vec::new(),
            counters: Arc::new(Mutex::new(KernelCounters { hits, lost })),
            ring: Some(ring),
            logger,
        })
    }

    /// The ring buffer, for the reader task (once).
    pub fn take_ring_buf(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
    }

    /// The BPF log reader, for a task that forwards its records (once).
    pub fn take_logger(&mut self) -> Option<BpfLogger> {
        self.logger.take()
    }

    pub fn counters(&self) -> Arc<Mutex<KernelCounters>> {
        Arc::clone(&self.counters)
    }

    pub fn attached(&self) -> impl Iterator<Item = &AttachedProbe> {
        self.attached.iter().map(|(probe, _)| probe)
    }

    /// Attaches every probe of `plan` to process `pid`, whose executable had identity
    /// `analysed` when the plan was made. All or nothing: on error, what was attached
    /// for this process is detached again.
    pub fn attach_process(
        &mut self,
        pid: u32,
        analysed: FileIdentity,
        plan: &ProbePlan,
    ) -> Result<Vec<AttachedProbe>, AttachError> {
        let exe = exe_path(pid);
        let current = FileIdentity::of(&exe).map_err(|_| AttachError::ProcessGone { pid })?;
        if current != analysed {
            return Err(AttachError::BinaryChanged { pid });
        }
        let file = File::open(&exe).map_err(|_| AttachError::ProcessGone { pid })?;
        for probe in &plan.probes {
            verify_bytes(&file, &exe, probe)?;
        }
        let before = self.attached.len();
        let result = plan
            .probes
            .iter()
            .try_for_each(|probe| self.attach_one(pid, &exe, probe));
        if let Err(e) = result {
            let added: Vec<_> = self.attached.drain(before..).collect();
            self.detach(added);
            return Err(e);
        }
        info!(pid, probes = plan.probes.len(), "attached");
        Ok(self.attached[before..]
            .iter()
            .map(|(probe, _)| probe.clone())
            .collect())
    }

    fn attach_one(
        &mut self,
        pid: u32,
        exe: &std::path::Path,
        probe: &PlannedProbe,
    ) -> Result<(), AttachError> {
        if self.next_slot >= MAX_PROBE_SLOTS {
            return Err(AttachError::SlotsExhausted);
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        self.specs.set(slot, probe.spec, 0)?;
        let program: &mut UProbe = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or(AttachError::Missing("go_probe program"))?
            .try_into()?;
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(probe.file_offset),
            cookie: Some(u64::from(slot)),
        };
        let pid_nz = NonZeroU32::new(pid).ok_or(AttachError::ProcessGone { pid })?;
        let link = program.attach(point, exe, UProbeScope::OneProcess(pid_nz))?;
        debug!(
            pid,
            slot,
            probe = probe.probe,
            offset = probe.file_offset,
            "probe attached"
        );
        let attached = AttachedProbe {
            slot,
            pid,
            kind: probe.kind,
            probe: probe.probe,
        };
        self.attached.push((attached, link));
        Ok(())
    }

    /// Detaches the given probes; their slots stop recording at once.
    fn detach(&mut self, probes: Vec<(AttachedProbe, UProbeLinkId)>) {
        let Some(program) = self.ebpf.program_mut(PROGRAM) else {
            return;
        };
        let Ok(program): Result<&mut UProbe, _> = program.try_into() else {
            return;
        };
        for (probe, link) in probes {
            if let Err(e) = program.detach(link) {
                warn!(slot = probe.slot, "detach failed: {e}");
            }
        }
    }

    /// Detaches everything attached so far.
    pub fn detach_all(&mut self) {
        let all = std::mem::take(&mut self.attached);
        self.detach(all);
    }
}

fn verify_bytes(
    file: &File,
    path: &std::path::Path,
    probe: &PlannedProbe,
) -> Result<(), AttachError> {
    let mut found = vec![0u8; probe.expected_bytes.len()];
    let read = file.read_exact_at(&mut found, probe.file_offset);
    if read.is_err() || found != probe.expected_bytes {
        return Err(AttachError::BytesMismatch {
            path: path.to_path_buf(),
            function: probe.function,
            offset: probe.vaddr,
            expected: probe.expected_bytes.clone(),
            found,
        });
    }
    Ok(())
}
