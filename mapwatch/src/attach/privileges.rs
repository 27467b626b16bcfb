//! Tell the user which capabilities are missing before the kernel says EPERM.
//!
//! What mapwatch needs (measured on Linux 6.18): CAP_BPF + CAP_PERFMON to load its BPF
//! programs and create uprobe_multi links; CAP_SYS_PTRACE to open /proc/PID/exe and
//! /proc/PID/maps of a process that is another user's or holds capabilities mapwatch
//! lacks; CAP_DAC_READ_SEARCH to read a binary whose file mode does not let it.
//! Perf-event uprobes (the fallback on kernels without uprobe_multi links, < 6.6) need
//! CAP_SYS_ADMIN on some kernels.
use std::fmt;

use crate::discover::procs::read_proc_text;

/// Capability numbers from include/uapi/linux/capability.h.
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct MissingPrivileges {
    pub missing: Vec<&'static str>,
}

impl fmt::Display for MissingPrivileges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "missing privileges: loading BPF programs and attaching uprobes needs {} \
             (run as root, or grant CAP_BPF and CAP_PERFMON, plus CAP_SYS_PTRACE and \
             CAP_DAC_READ_SEARCH to read other users' binaries)",
            self.missing.join(" and ")
        )
    }
}

/// Checks the effective capability set of this process.
pub fn check() -> Result<(), MissingPrivileges> {
    missing_capabilities(effective_capabilities())
}

fn effective_capabilities() -> u64 {
    // Lossy: the `Name:` line is this executable's name, in any bytes.
    let status = read_proc_text("/proc/self/status").unwrap_or_default();
    capabilities_from_status(&status).unwrap_or(0)
}

/// The `CapEff:` set of a `/proc/PID/status` text. Public as the fuzzing entry point
/// (fuzz/fuzz_targets/proc_status.rs).
pub fn capabilities_from_status(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Whether this process may use perf-event uprobes everywhere (the fallback path).
pub fn has_sys_admin() -> bool {
    effective_capabilities() & (1 << CAP_SYS_ADMIN) != 0
}

/// What to do when another process's /proc/PID/exe cannot be read: names the
/// capabilities this process lacks, or says what else can deny it.
pub fn unreadable_exe_advice() -> String {
    exe_advice(effective_capabilities())
}

fn exe_advice(effective: u64) -> String {
    let missing: Vec<&str> = [
        // ptrace-read access to /proc/PID/exe of another user's (or a more privileged)
        // process.
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        // opening the binary itself when its mode does not let this user read it.
        (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
    ]
    .into_iter()
    .filter(|&(cap, _)| effective & (1u64 << cap) == 0)
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        "mapwatch has CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, so a security module denies it \
         (AppArmor: the container runtime's default profile; SELinux; Yama ptrace_scope 3)"
            .to_string()
    } else {
        format!(
            "reading another user's process needs {}; run as root or grant {}",
            missing.join(" and "),
            if missing.len() == 1 { "it" } else { "them" }
        )
    }
}

fn missing_capabilities(effective: u64) -> Result<(), MissingPrivileges> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    // CAP_SYS_ADMIN covers both on kernels that predate the split (5.8).
    if has(CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<&'static str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !has(cap))
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingPrivileges { missing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_missing_capability() {
        let err = missing_capabilities(0).unwrap_err();
        assert_eq!(err.missing, vec!["CAP_BPF", "CAP_PERFMON"]);
        assert!(err.to_string().contains("CAP_BPF and CAP_PERFMON"));
        assert_eq!(
            missing_capabilities(1 << CAP_BPF).unwrap_err().missing,
            vec!["CAP_PERFMON"]
        );
        assert!(missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_ok());
        assert!(missing_capabilities(1 << CAP_SYS_ADMIN).is_ok());
    }

    #[test]
    fn exe_advice_names_what_is_missing() {
        let ptrace = 1 << CAP_SYS_PTRACE;
        let dac = 1 << CAP_DAC_READ_SEARCH;
        assert!(exe_advice(0).contains("needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"));
        assert!(exe_advice(ptrace).contains("needs CAP_DAC_READ_SEARCH;"));
        assert!(exe_advice(dac).contains("needs CAP_SYS_PTRACE;"));
        assert!(exe_advice(ptrace | dac).contains("security module"));
    }
}
