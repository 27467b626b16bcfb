//! Tell the user which capabilities are missing before the kernel says EPERM.
use std::fmt;

/// Capability numbers from include/uapi/linux/capability.h.
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
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    missing_capabilities(effective)
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
}
