//! How probe sites are hooked into the kernel.
//!
//! Preferred: one `BPF_TRACE_UPROBE_MULTI` link (Linux 6.6+) for any number of sites,
//! created here with bpf(2) around the program aya loaded with
//! `UProbe::load_for_multi_link` (our patch of aya 0.14: vendor/README.md). Two
//! reasons, both measured on kernel 6.18:
//! - it needs CAP_BPF + CAP_PERFMON only, where `perf_event_open` of a uprobe returns
//!   EACCES without CAP_SYS_ADMIN;
//! - closing it unregisters all its sites with one grace period (~45 ms for 20 sites),
//!   where each perf-event uprobe takes ~130 ms to close, serialized by the kernel.
//!
//! Fallback (kernels without uprobe_multi, or `MAPWATCH_UPROBE_LINKS=perf-event`): one
//! perf-event uprobe per site through aya, as before.
use std::{
    ffi::CString,
    io,
    num::NonZeroU32,
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya::programs::{
    ProgramError, UProbe,
    uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
};
use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd};

/// Environment variable that forces a link mode (`multi` or `perf-event`): for tests of
/// the fallback and for kernels where uprobe_multi misbehaves.
pub const MODE_VARIABLE: &str = "MAPWATCH_UPROBE_LINKS";

/// How the loaded program is attached; fixed when the program is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// One uprobe_multi link per group of sites.
    Multi,
    /// One perf-event uprobe per site.
    PerfEvent,
}

impl LinkMode {
    /// The mode asked for in [`MODE_VARIABLE`], if any.
    pub fn requested() -> Result<Option<LinkMode>, LinkError> {
        match std::env::var(MODE_VARIABLE).as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(None),
            Ok("multi") => Ok(Some(LinkMode::Multi)),
            Ok("perf-event") => Ok(Some(LinkMode::PerfEvent)),
            Ok(other) => Err(LinkError::BadMode(other.to_string())),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            LinkMode::Multi => "uprobe_multi",
            LinkMode::PerfEvent => "perf_event",
        }
    }
}

/// One attachment of the program: dropping it takes its sites out of the target.
#[derive(Debug)]
pub enum ProbeLink {
    Multi(OwnedFd),
    PerfEvents(Vec<UProbeLink>),
}

/// A place to probe and the cookie the program sees there (mapwatch: the slot).
#[derive(Debug, Clone, Copy)]
pub struct Site {
    pub file_offset: u64,
    pub cookie: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{MODE_VARIABLE}={0:?}: expected auto, multi or perf-event")]
    BadMode(String),
    #[error("creating a uprobe_multi link")]
    Multi(#[source] io::Error),
    #[error("attaching a perf-event uprobe")]
    PerfEvent(#[source] ProgramError),
    #[error("the path {0:?} contains a NUL byte")]
    Path(std::path::PathBuf),
}

impl LinkError {
    /// The errno behind the failure, where there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            LinkError::Multi(e) => e.raw_os_error(),
            LinkError::PerfEvent(e) => {
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
                while let Some(error) = source {
                    if let Some(io) = error.downcast_ref::<io::Error>() {
                        return io.raw_os_error();
                    }
                    source = error.source();
                }
                None
            }
            LinkError::BadMode(_) | LinkError::Path(_) => None,
        }
    }

    pub fn is_permission_denied(&self) -> bool {
        matches!(self.errno(), Some(libc::EACCES | libc::EPERM))
    }
}

/// Attaches `program` at every site of `exe` for process `pid` (and no other process
/// running the same file), as one link.
pub fn attach(
    program: &mut UProbe,
    mode: LinkMode,
    exe: &Path,
    pid: NonZeroU32,
    sites: &[Site],
) -> Result<ProbeLink, LinkError> {
    match mode {
        LinkMode::Multi => attach_multi(program, exe, pid, sites).map(ProbeLink::Multi),
        LinkMode::PerfEvent => {
            let mut links = Vec::with_capacity(sites.len());
            for site in sites {
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(site.file_offset),
                    cookie: Some(site.cookie),
                };
                let id = program
                    .attach(point, exe, UProbeScope::OneProcess(pid))
                    .map_err(LinkError::PerfEvent)?;
                links.push(program.take_link(id).map_err(LinkError::PerfEvent)?);
            }
            Ok(ProbeLink::PerfEvents(links))
        }
    }
}

fn attach_multi(
    program: &UProbe,
    exe: &Path,
    pid: NonZeroU32,
    sites: &[Site],
) -> Result<OwnedFd, LinkError> {
    let path =
        CString::new(exe.as_os_str().as_bytes()).map_err(|_| LinkError::Path(exe.to_owned()))?;
    let offsets: Vec<u64> = sites.iter().map(|s| s.file_offset).collect();
    let cookies: Vec<u64> = sites.iter().map(|s| s.cookie).collect();
    let program_fd = program.fd().map_err(LinkError::PerfEvent)?;
    // SAFETY: bpf_attr is plain old data; all-zero is its documented "unset" value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing Copy fields of the link_create member of a zeroed union; the
    // pointers stay valid until the syscall returns (path, offsets, cookies live here).
    unsafe {
        let create = &mut attr.link_create;
        create.__bindgen_anon_1.prog_fd = program_fd.as_fd().as_raw_fd() as u32;
        create.attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
        let multi = &mut create.__bindgen_anon_3.uprobe_multi;
        multi.path = path.as_ptr() as u64;
        multi.offsets = offsets.as_ptr() as u64;
        multi.cookies = cookies.as_ptr() as u64;
        multi.cnt = sites.len() as u32;
        multi.pid = pid.get();
    }
    // SAFETY: a bpf(2) call with a fully initialised attribute of the size we pass.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_LINK_CREATE as libc::c_long,
            &mut attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if fd < 0 {
        return Err(LinkError::Multi(io::Error::last_os_error()));
    }
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the kernel creates uprobe_multi links for `program` (loaded with
/// `load_for_multi_link`): a link on "/" fails with EBADF (not a regular file) only
/// after every check of the link type has passed — libbpf probes it the same way.
pub fn multi_links_work(program: &UProbe) -> bool {
    let Some(own_pid) = NonZeroU32::new(std::process::id()) else {
        return false;
    };
    let probe = [Site {
        file_offset: 0,
        cookie: 0,
    }];
    match attach_multi(program, Path::new("/"), own_pid, &probe) {
        Err(LinkError::Multi(e)) => e.raw_os_error() == Some(libc::EBADF),
        // A link on a directory would be a kernel bug; it is closed at once.
        Ok(_) | Err(_) => false,
    }
}
