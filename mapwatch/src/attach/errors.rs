//! Why an attach failed, in words that say what to do, and the `reason` it is counted
//! under.
use std::path::PathBuf;

use mapwatch_common::MAX_PROBE_SLOTS;

use super::{
    PROGRAM,
    links::{LinkError, LinkMode},
    privileges, process_exists,
};
use crate::metrics::AttachErrorReason;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Privileges(#[from] privileges::MissingPrivileges),
    #[error("loading the BPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("BPF program {PROGRAM}: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the kernel refused to attach uprobes to process {pid} ({cause}). {hint}")]
    LinkRefused {
        pid: u32,
        cause: String,
        hint: &'static str,
    },
    #[error("cannot read {path}: permission denied; {advice}")]
    ExeUnreadable { path: PathBuf, advice: String },
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
        "{function} at {vaddr:#x} (file offset {file_offset:#x}) in {path}: expected instruction bytes {expected:02x?}, found {found:02x?}; not attaching"
    )]
    BytesMismatch {
        path: PathBuf,
        function: &'static str,
        vaddr: u64,
        file_offset: u64,
        expected: Vec<u8>,
        found: Vec<u8>,
    },
    #[error("all {MAX_PROBE_SLOTS} probe slots are in use")]
    SlotsExhausted,
    #[error(
        "following process exec/exit needs kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF): {0}"
    )]
    Btf(String),
    #[error("{}={value:?}: {why}", super::RING_BYTES_VARIABLE)]
    RingSize { value: String, why: String },
}

impl AttachError {
    /// The `reason` label of `mapwatch_attach_errors_total` this error is counted under.
    pub fn reason(&self) -> AttachErrorReason {
        match self {
            AttachError::Privileges(_)
            | AttachError::LinkRefused { .. }
            | AttachError::ExeUnreadable { .. } => AttachErrorReason::Privileges,
            AttachError::Load(_) | AttachError::Missing(_) | AttachError::RingSize { .. } => {
                AttachErrorReason::Load
            }
            AttachError::Program(_) | AttachError::Link(_) => AttachErrorReason::Attach,
            AttachError::Map(_) => AttachErrorReason::Map,
            AttachError::ProcessGone { .. } => AttachErrorReason::ProcessGone,
            AttachError::BinaryChanged { .. } => AttachErrorReason::BinaryChanged,
            AttachError::BytesMismatch { .. } => AttachErrorReason::BytesMismatch,
            AttachError::SlotsExhausted => AttachErrorReason::SlotsExhausted,
            AttachError::Btf(_) => AttachErrorReason::Btf,
        }
    }
}

/// Turns a refused attach into an error that names the missing privilege.
pub(super) fn explain_link_error(pid: u32, mode: LinkMode, error: LinkError) -> AttachError {
    if matches!(error.errno(), Some(libc::ENOENT | libc::ESRCH)) || !process_exists(pid) {
        return AttachError::ProcessGone { pid };
    }
    if !error.is_permission_denied() {
        return AttachError::Link(error);
    }
    let hint = match mode {
        // The link opens /proc/PID/exe itself, as mapwatch already did to analyse it.
        LinkMode::Multi => {
            "mapwatch needs CAP_BPF, CAP_PERFMON and, for another user's \
             process, CAP_SYS_PTRACE; a security module (AppArmor, SELinux) can deny it too"
        }
        // perf_event_open(2) of a uprobe: measured on Linux 6.18, CAP_PERFMON is not enough.
        LinkMode::PerfEvent => {
            "Perf-event uprobes need CAP_SYS_ADMIN on this kernel; grant it, or run on Linux \
             6.6+ where mapwatch uses uprobe_multi links, which need only CAP_BPF and CAP_PERFMON"
        }
    };
    AttachError::LinkRefused {
        pid,
        cause: error_chain(&error),
        hint,
    }
}

/// An error and its causes on one line, for logs (the CLI prints chains itself).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
