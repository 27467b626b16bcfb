//! Load the BPF object, attach a ProbePlan to a process, detach cleanly.
pub mod calibration;
mod counters;
mod errors;
pub mod links;
pub mod notices;
pub mod privileges;
pub mod reader;
mod ring;

use std::{
    collections::HashMap,
    fs::File,
    num::NonZeroU32,
    os::{fd::AsRawFd as _, unix::fs::FileExt as _},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::UProbe,
};
use mapwatch_common::{DirectoryLayout, MAX_PROBE_SLOTS, MapAssignLayout, ProbeKind, ProbeSpec};
use tracing::{debug, info, warn};

use crate::plan::{PlannedProbe, ProbePlan};
pub use counters::{KernelCounters, SlotCounts, scrape_hook};
use errors::explain_link_error;
pub use errors::{AttachError, error_chain};
use links::{LinkMode, ProbeLink, Site};
pub use ring::RING_BYTES_VARIABLE;
use ring::ring_bytes;

pub(crate) const PROGRAM: &str = "go_probe";

/// Path through which a process's executable is attached: /proc/PID/exe names the
/// exact inode, even if the file was deleted or lives in another mount namespace.
pub use crate::discover::procs::{FileIdentity, exe_path};

/// One attached uprobe.
#[derive(Debug, Clone)]
pub struct AttachedProbe {
    pub slot: u32,
    pub pid: u32,
    pub kind: ProbeKind,
    pub probe: &'static str,
}

/// The loaded BPF object and everything attached from it.
pub struct Probes {
    ebpf: Ebpf,
    specs: Array<MapData, ProbeSpec>,
    map_assign_layouts: Array<MapData, MapAssignLayout>,
    directory_layouts: Array<MapData, DirectoryLayout>,
    /// Per slot: nonzero while suspended, so a closing link records nothing more.
    paused: Array<MapData, u32>,
    next_slot: u32,
    /// Slots of detached probes, reused before new ones are taken.
    free_slots: Vec<u32>,
    /// Slots recording now, each with its link. A link may hold several slots: the
    /// budget re-attaches a group of probes as one link, closed with one kernel grace
    /// period; it closes when the last of its slots lets go of it.
    attached: Vec<(AttachedProbe, Arc<ProbeLink>)>,
    link_mode: LinkMode,
    /// Probes detached by the overhead budget for a while: their slots stay reserved,
    /// with their spec, counters and aggregator registration ([`Probes::suspend`]).
    suspended: Vec<AttachedProbe>,
    /// Where each attached or suspended slot's probe goes, to attach it again.
    sites: HashMap<u32, ProbeSite>,
    counters: Arc<Mutex<KernelCounters>>,
    ring: Option<RingBuf<MapData>>,
    ring_bytes: u32,
    logger: Option<BpfLogger>,
}

/// Reads `aya_log_ebpf` records from the BPF side (see `reader::forward_logs`).
pub type BpfLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

impl Probes {
    /// Loads and verifies the BPF programs. Needs CAP_BPF + CAP_PERFMON (or root).
    pub fn load() -> Result<Probes, AttachError> {
        privileges::check()?;
        let ring_bytes = ring_bytes()?;
        if ring_bytes != mapwatch_common::RING_BUF_BYTES {
            info!(ring_bytes, "ring buffer sized by {RING_BYTES_VARIABLE}");
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(mapwatch_common::map_names::EVENTS, ring_bytes)
            .load(aya::include_bytes_aligned!(concat!(
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
        let link_mode = load_program(program)?;
        let specs = Array::try_from(
            ebpf.take_map(mapwatch_common::map_names::PROBE_SPECS)
                .ok_or(AttachError::Missing("PROBE_SPECS map"))?,
        )?;
        let map_assign_layouts = Array::try_from(
            ebpf.take_map(mapwatch_common::map_names::MAP_ASSIGN_LAYOUTS)
                .ok_or(AttachError::Missing("MAP_ASSIGN_LAYOUTS map"))?,
        )?;
        let directory_layouts = Array::try_from(
            ebpf.take_map(mapwatch_common::map_names::DIRECTORY_LAYOUTS)
                .ok_or(AttachError::Missing("DIRECTORY_LAYOUTS map"))?,
        )?;
        let paused = Array::try_from(
            ebpf.take_map(mapwatch_common::map_names::SLOTS_PAUSED)
                .ok_or(AttachError::Missing("SLOTS_PAUSED map"))?,
        )?;
        let hits = PerCpuArray::try_from(
            ebpf.take_map(mapwatch_common::map_names::PROBE_HITS)
                .ok_or(AttachError::Missing("PROBE_HITS map"))?,
        )?;
        let lost = PerCpuArray::try_from(
            ebpf.take_map(mapwatch_common::map_names::EVENTS_LOST)
                .ok_or(AttachError::Missing("EVENTS_LOST map"))?,
        )?;
        let paused_hits = PerCpuArray::try_from(
            ebpf.take_map(mapwatch_common::map_names::PAUSED_HITS)
                .ok_or(AttachError::Missing("PAUSED_HITS map"))?,
        )?;
        let ring = RingBuf::try_from(
            ebpf.take_map(mapwatch_common::map_names::EVENTS)
                .ok_or(AttachError::Missing("EVENTS map"))?,
        )?;
        Ok(Probes {
            ebpf,
            specs,
            map_assign_layouts,
            directory_layouts,
            paused,
            next_slot: 0,
            free_slots: Vec::new(),
            attached: Vec::new(),
            link_mode,
            suspended: Vec::new(),
            sites: HashMap::new(),
            counters: Arc::new(Mutex::new(KernelCounters::new(hits, lost, paused_hits)?)),
            ring: Some(ring),
            ring_bytes,
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

    /// Starts the exec/exit notices the daemon follows processes with.
    pub fn follow_processes(&mut self) -> Result<notices::ProcessNotices, AttachError> {
        notices::ProcessNotices::start(&mut self.ebpf)
    }

    /// How probes are attached (fixed at load).
    pub fn link_mode(&self) -> LinkMode {
        self.link_mode
    }

    pub fn counters(&self) -> Arc<Mutex<KernelCounters>> {
        Arc::clone(&self.counters)
    }

    pub fn attached(&self) -> impl Iterator<Item = &AttachedProbe> {
        self.attached.iter().map(|(probe, _)| probe)
    }

    /// Slots for the probes of `plan`, one each, in order. Reserving them before
    /// attaching lets the caller tell the aggregator what each slot is before any record
    /// can carry it; slots not used by [`Probes::attach_process`] go back with
    /// [`Probes::release_slots`].
    pub fn reserve_slots(&mut self, plan: &ProbePlan) -> Result<Vec<u32>, AttachError> {
        let mut slots = Vec::with_capacity(plan.probes.len());
        for _ in &plan.probes {
            let slot = match self.free_slots.pop() {
                Some(slot) => slot,
                None if self.next_slot < MAX_PROBE_SLOTS => {
                    self.next_slot += 1;
                    self.next_slot - 1
                }
                None => {
                    self.free_slots.extend(slots);
                    return Err(AttachError::SlotsExhausted);
                }
            };
            slots.push(slot);
        }
        Ok(slots)
    }

    /// Returns reserved slots that were not attached.
    pub fn release_slots(&mut self, slots: impl IntoIterator<Item = u32>) {
        self.free_slots.extend(slots);
    }

    /// Attaches every probe of `plan` to process `pid`, whose executable had identity
    /// `analysed` when the plan was made, to the slots reserved for it — except the
    /// slots in `start_suspended`, which are made ready but left detached, for the
    /// overhead budget to attach in their first window ([`Probes::resume`]). All or
    /// nothing: on error, what was attached for this process is detached again (the
    /// slots stay reserved: release them).
    pub fn attach_process(
        &mut self,
        pid: u32,
        analysed: FileIdentity,
        plan: &ProbePlan,
        slots: &[u32],
        start_suspended: &[u32],
    ) -> Result<Vec<AttachedProbe>, AttachError> {
        assert_eq!(
            slots.len(),
            plan.probes.len(),
            "one reserved slot per probe"
        );
        let exe = open_exe(pid, analysed)?;
        for probe in &plan.probes {
            exe.verify(probe)?;
        }
        let before = self.attached.len();
        let suspended_before = self.suspended.len();
        let result = plan
            .probes
            .iter()
            .zip(slots)
            .try_for_each(|(probe, &slot)| {
                self.attach_one(pid, &exe, probe, slot, start_suspended.contains(&slot))
            });
        if let Err(e) = result {
            let added: Vec<_> = self.attached.drain(before..).collect();
            for (probe, _) in &added {
                self.sites.remove(&probe.slot);
            }
            self.detach(added, false);
            for probe in self.suspended.drain(suspended_before..) {
                self.counters
                    .lock()
                    .expect("kernel counters")
                    .retire(probe.slot);
            }
            // A process that exits while its probes are being attached is not an attach
            // failure (short-lived Go tools do this all the time).
            if !process_exists(pid) {
                return Err(AttachError::ProcessGone { pid });
            }
            return Err(e);
        }
        for (probe, &slot) in plan.probes.iter().zip(slots) {
            self.sites.insert(
                slot,
                ProbeSite {
                    identity: analysed,
                    probe: probe.clone(),
                },
            );
        }
        info!(
            pid,
            probes = plan.probes.len(),
            later = start_suspended.len(),
            "attached"
        );
        Ok(self.attached[before..]
            .iter()
            .map(|(probe, _)| probe.clone())
            .chain(self.suspended[suspended_before..].iter().cloned())
            .collect())
    }

    /// Makes `slot` ready for `probe` and attaches it, or leaves it `suspended`.
    fn attach_one(
        &mut self,
        pid: u32,
        exe: &CheckedExe,
        probe: &PlannedProbe,
        slot: u32,
        suspended: bool,
    ) -> Result<(), AttachError> {
        self.specs.set(slot, probe.spec, 0)?;
        self.counters
            .lock()
            .expect("kernel counters")
            .track(slot, probe.probe)?;
        // Always written: a reused slot must not keep its last probe's layouts.
        self.map_assign_layouts
            .set(slot, probe.map_assign.unwrap_or_default(), 0)?;
        self.directory_layouts
            .set(slot, probe.directory.unwrap_or_default(), 0)?;
        self.paused.set(slot, u32::from(suspended), 0)?;
        let attached = AttachedProbe {
            slot,
            pid,
            kind: probe.kind,
            probe: probe.probe,
        };
        if suspended {
            self.suspended.push(attached);
            return Ok(());
        }
        let link = self.attach_link(pid, exe, probe.file_offset, slot)?;
        debug!(
            pid,
            slot,
            probe = probe.probe,
            offset = probe.file_offset,
            "probe attached"
        );
        self.attached.push((attached, Arc::new(link)));
        Ok(())
    }

    fn attach_link(
        &mut self,
        pid: u32,
        exe: &CheckedExe,
        file_offset: u64,
        slot: u32,
    ) -> Result<ProbeLink, AttachError> {
        self.attach_sites(
            pid,
            &exe.attach_path(),
            &[Site {
                file_offset,
                cookie: u64::from(slot),
            }],
        )
    }

    /// One link for `sites` of the executable at `exe` (an open file's
    /// `/proc/self/fd/N`: see [`CheckedExe`]) for `pid`, with the error a user can act on.
    fn attach_sites(
        &mut self,
        pid: u32,
        exe: &std::path::Path,
        sites: &[Site],
    ) -> Result<ProbeLink, AttachError> {
        let mode = self.link_mode;
        let program: &mut UProbe = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or(AttachError::Missing("go_probe program"))?
            .try_into()?;
        let pid_nz = NonZeroU32::new(pid).ok_or(AttachError::ProcessGone { pid })?;
        links::attach(program, mode, exe, pid_nz, sites)
            .map_err(|e| explain_link_error(pid, mode, e))
    }

    /// Takes the probes in `slots` (one budget group) out of the kernel's way for a
    /// while (the overhead budget's off time) and returns their links. The probes stop
    /// counting and recording when this returns (their slots are paused in the BPF
    /// map); the breakpoints go when the links are dropped, which blocks for a kernel
    /// grace period — drop them after releasing the lock on `Probes`. The slots stay
    /// reserved with their specs, counters (hits keep their totals) and sites, so
    /// [`Probes::resume`] is one attach call. `pid` guards against a slot freed and
    /// reused by another process meanwhile.
    pub fn suspend(&mut self, pid: u32, slots: &[u32]) -> Vec<Arc<ProbeLink>> {
        let (taken, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.attached)
            .into_iter()
            .partition(|(p, _)| p.pid == pid && slots.contains(&p.slot));
        self.attached = kept;
        let mut links: Vec<Arc<ProbeLink>> = Vec::new();
        for (probe, _) in &taken {
            self.pause(probe.slot, true);
        }
        for (probe, link) in taken {
            self.suspended.push(probe);
            if !links.iter().any(|l| Arc::ptr_eq(l, &link)) {
                links.push(link);
            }
        }
        // A link shared with a slot that stays attached would keep recording: the
        // budget always suspends whole groups, so this is a bug if it happens.
        for (probe, link) in &self.attached {
            if links.iter().any(|l| Arc::ptr_eq(l, link)) {
                warn!(
                    slot = probe.slot,
                    "a suspended probe's link is shared with a probe that stays attached"
                );
            }
        }
        links
    }

    /// Attaches the suspended probes in `slots` again, as one link, after checking
    /// that their process still runs the binary they were planned for and the bytes at
    /// each site are still as planned.
    pub fn resume(&mut self, pid: u32, slots: &[u32]) -> Result<(), AttachError> {
        let mut sites = Vec::with_capacity(slots.len());
        for &slot in slots {
            if !self
                .suspended
                .iter()
                .any(|p| p.slot == slot && p.pid == pid)
            {
                return Err(AttachError::ProcessGone { pid });
            }
            let site = self
                .sites
                .get(&slot)
                .cloned()
                .ok_or(AttachError::Missing("probe site"))?;
            sites.push((slot, site));
        }
        let Some((_, first)) = sites.first() else {
            return Ok(());
        };
        let exe = open_exe(pid, first.identity)?;
        for (_, site) in &sites {
            exe.verify(&site.probe)?;
        }
        let link_sites: Vec<Site> = sites
            .iter()
            .map(|(slot, site)| Site {
                file_offset: site.probe.file_offset,
                cookie: u64::from(*slot),
            })
            .collect();
        let link = Arc::new(self.attach_sites(pid, &exe.attach_path(), &link_sites)?);
        for &slot in slots {
            self.pause(slot, false);
        }
        let (resumed, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.suspended)
            .into_iter()
            .partition(|p| p.pid == pid && slots.contains(&p.slot));
        self.suspended = still;
        self.attached
            .extend(resumed.into_iter().map(|probe| (probe, Arc::clone(&link))));
        Ok(())
    }

    /// Pauses or unpauses `slot` in the kernel. A failed write of an array element
    /// that exists cannot happen short of a kernel bug; it is logged, and the window's
    /// edge is then the link's, as before pausing existed.
    fn pause(&mut self, slot: u32, paused: bool) {
        if let Err(e) = self.paused.set(slot, u32::from(paused), 0) {
            warn!(slot, paused, "cannot pause or unpause a probe slot: {e}");
        }
    }

    /// Detaches the given probes; their slots stop recording at once. Their counts go
    /// into the per-probe totals; `free` returns their slots for reuse (attach failures
    /// keep them reserved for the caller to release).
    ///
    /// Closing a link waits for the kernel to unregister its uprobes with a grace
    /// period (tens of ms per link; ~130 ms per perf-event uprobe, serialized by the
    /// kernel): the links are closed on several threads at once in case the kernel can
    /// overlap them (see BENCHMARKS.md and the DaemonSet's
    /// terminationGracePeriodSeconds).
    fn detach(&mut self, probes: Vec<(AttachedProbe, Arc<ProbeLink>)>, free: bool) {
        let mut links: Vec<Arc<ProbeLink>> = Vec::with_capacity(probes.len());
        for (probe, link) in probes {
            if !links.iter().any(|l| Arc::ptr_eq(l, &link)) {
                links.push(link);
            }
            self.counters
                .lock()
                .expect("kernel counters")
                .retire(probe.slot);
            self.sites.remove(&probe.slot);
            if free {
                self.free_slots.push(probe.slot);
            }
        }
        close_concurrently(links);
    }

    /// Detaches the probes of one process (it exited or exec'd); returns how many.
    pub fn detach_process(&mut self, pid: u32) -> usize {
        let (mine, others) = std::mem::take(&mut self.attached)
            .into_iter()
            .partition(|(probe, _)| probe.pid == pid);
        self.attached = others;
        let count = mine.len();
        self.detach(mine, true);
        self.forget_suspended(|probe| probe.pid == pid);
        count
    }

    /// Releases suspended probes (no link to close): their counts go into the totals.
    fn forget_suspended(&mut self, which: impl Fn(&AttachedProbe) -> bool) {
        let (gone, kept) = std::mem::take(&mut self.suspended)
            .into_iter()
            .partition(|p| which(p));
        self.suspended = kept;
        for probe in gone {
            self.counters
                .lock()
                .expect("kernel counters")
                .retire(probe.slot);
            self.sites.remove(&probe.slot);
            self.free_slots.push(probe.slot);
        }
    }

    /// Detaches everything attached so far.
    pub fn detach_all(&mut self) {
        let all = std::mem::take(&mut self.attached);
        self.detach(all, true);
        self.forget_suspended(|_| true);
    }
}

/// What it takes to attach a suspended probe again.
#[derive(Clone)]
struct ProbeSite {
    identity: FileIdentity,
    probe: PlannedProbe,
}

/// Loads the program for uprobe_multi links where the kernel has them (6.6+), else for
/// perf-event uprobes; [`links::MODE_VARIABLE`] can force either.
fn load_program(program: &mut UProbe) -> Result<LinkMode, AttachError> {
    let mode = match LinkMode::requested()? {
        Some(LinkMode::PerfEvent) => {
            program.load()?;
            LinkMode::PerfEvent
        }
        Some(LinkMode::Multi) => {
            program.load_for_multi_link()?;
            LinkMode::Multi
        }
        None => match program.load_for_multi_link() {
            Ok(()) if links::multi_links_work(program) => LinkMode::Multi,
            outcome => {
                if let Err(e) = outcome {
                    debug!("no uprobe_multi links ({e}); using perf-event uprobes");
                } else {
                    debug!("uprobe_multi links refused; using perf-event uprobes");
                    program.unload()?;
                }
                program.load()?;
                LinkMode::PerfEvent
            }
        },
    };
    info!(links = mode.label(), "BPF program loaded");
    if mode == LinkMode::PerfEvent && !privileges::has_sys_admin() {
        warn!(
            "uprobes are attached as perf events (no uprobe_multi links: Linux < 6.6, or {} \
             says so), which need CAP_SYS_ADMIN on many kernels; mapwatch lacks it, so \
             attaching may be refused",
            links::MODE_VARIABLE
        );
    }
    Ok(mode)
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A process's executable, opened once and checked to be the file that was analysed.
/// Its bytes are verified and its probes attached through this open file
/// (`/proc/self/fd/N`), never through /proc/PID/exe again: the kernel resolved that path
/// anew for each link, so a process that exec'd after the checks got the old plan's
/// probes at offsets of its new executable (tests/placement.rs). Probes attached to the
/// checked file after an exec sit on a file the process no longer maps, until the
/// daemon detaches them for the exec.
struct CheckedExe {
    /// /proc/PID/exe, for messages.
    path: PathBuf,
    file: File,
}

impl CheckedExe {
    fn attach_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Refuses `probe` unless the bytes at its offset are the instruction it was
    /// planned for: an int3 inside an instruction corrupts the target.
    fn verify(&self, probe: &PlannedProbe) -> Result<(), AttachError> {
        verify_bytes(&self.file, &self.path, probe)
    }
}

/// Opens `pid`'s executable, checking it is still the file that was analysed.
fn open_exe(pid: u32, analysed: FileIdentity) -> Result<CheckedExe, AttachError> {
    let exe = exe_path(pid);
    let classify = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::PermissionDenied && process_exists(pid) {
            AttachError::ExeUnreadable {
                path: exe.clone(),
                advice: privileges::unreadable_exe_advice(),
            }
        } else {
            AttachError::ProcessGone { pid }
        }
    };
    let file = File::open(&exe).map_err(classify)?;
    // The identity of what was opened, not of what the path names a moment later.
    if FileIdentity::of_file(&file).map_err(classify)? != analysed {
        return Err(AttachError::BinaryChanged { pid });
    }
    Ok(CheckedExe { path: exe, file })
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
            vaddr: probe.vaddr,
            file_offset: probe.file_offset,
            expected: probe.expected_bytes.clone(),
            found,
        });
    }
    Ok(())
}

/// Threads that close links at once (see [`Probes::detach`]).
const CLOSING_THREADS: usize = 16;

fn close_concurrently<T: Send>(links: Vec<T>) {
    if links.len() <= 1 {
        return drop(links);
    }
    let per_thread = links.len().div_ceil(CLOSING_THREADS);
    let mut links = links;
    std::thread::scope(|scope| {
        while !links.is_empty() {
            let batch: Vec<T> = links.drain(..per_thread.min(links.len())).collect();
            scope.spawn(move || drop(batch));
        }
    });
}

#[cfg(test)]
mod tests {
    use mapwatch_common::MemoryLoad;

    use super::*;
    use crate::{metrics::AttachErrorReason, plan::Site as PlannedSite};

    fn probe_at(file_offset: u64, expected_bytes: &[u8]) -> PlannedProbe {
        PlannedProbe {
            probe: ProbeKind::HashGrow.label(),
            kind: ProbeKind::HashGrow,
            function: "runtime.hashGrow",
            site: PlannedSite::Entry,
            vaddr: 0x40_0000 + file_offset,
            file_offset,
            expected_bytes: expected_bytes.to_vec(),
            spec: ProbeSpec {
                kind: ProbeKind::HashGrow as u16,
                flags: 0,
                stack_depth: 0,
                _pad: [0; 3],
                loads: [MemoryLoad::disabled(); mapwatch_common::PROBE_LOADS],
            },
            map_assign: None,
            directory: None,
        }
    }

    /// The one refusal placement.rs cannot reach through a running process (ETXTBSY
    /// keeps its file's bytes as analysed): named by function, address and file offset,
    /// counted as `bytes_mismatch`. A site past the end of the file is refused too.
    #[test]
    fn bytes_that_differ_from_the_plan_are_refused_by_function_and_offset() {
        let path = std::env::temp_dir().join(format!("mapwatch-verify-{}", std::process::id()));
        std::fs::write(&path, [0x90, 0x90, 0x55, 0x48, 0x89, 0xe5, 0xc3]).unwrap();
        let file = File::open(&path).unwrap();
        assert!(verify_bytes(&file, &path, &probe_at(2, &[0x55])).is_ok());
        assert!(verify_bytes(&file, &path, &probe_at(3, &[0x48, 0x89, 0xe5])).is_ok());

        let refused = verify_bytes(&file, &path, &probe_at(3, &[0x48, 0x8b, 0xec]))
            .expect_err("another encoding of the instruction is other bytes");
        assert_eq!(refused.reason(), AttachErrorReason::BytesMismatch);
        let message = refused.to_string();
        for part in [
            "runtime.hashGrow at 0x400003",
            "file offset 0x3",
            "[48, 8b, ec]",
            "[48, 89, e5]",
            "not attaching",
        ] {
            assert!(message.contains(part), "{part:?} missing from: {message}");
        }
        let past_the_end = verify_bytes(&file, &path, &probe_at(6, &[0xc3, 0xcc]));
        assert!(matches!(
            past_the_end,
            Err(AttachError::BytesMismatch { file_offset: 6, .. })
        ));
        std::fs::remove_file(&path).unwrap();
    }

    /// The executable is checked as opened, and attached through that open file: the
    /// path given to the kernel names the file whose identity and bytes were checked.
    #[test]
    fn the_executable_is_checked_and_attached_as_one_open_file() {
        let me = std::process::id();
        let identity = FileIdentity::of(&exe_path(me)).unwrap();
        let exe = open_exe(me, identity).expect("this process runs its own executable");
        assert_eq!(
            FileIdentity::of(&exe.attach_path()).unwrap(),
            identity,
            "{:?}",
            exe.attach_path()
        );
        let other = FileIdentity {
            ino: identity.ino + 1,
            ..identity
        };
        assert!(matches!(
            open_exe(me, other),
            Err(AttachError::BinaryChanged { pid }) if pid == me
        ));
    }
}
