//! Processes as /proc shows them: which exist, since when, running which executable.
//! Reads only; what to do about a process is [`super::tracker`]'s decision.
use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// The identity of an executable file: a process that exec'd has another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
}

impl FileIdentity {
    pub fn of(path: &Path) -> std::io::Result<FileIdentity> {
        Ok(Self::of_metadata(&std::fs::metadata(path)?))
    }

    /// The identity of an open file (what a path named when it was opened).
    pub fn of_file(file: &std::fs::File) -> std::io::Result<FileIdentity> {
        Ok(Self::of_metadata(&file.metadata()?))
    }

    fn of_metadata(meta: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// One process at the time of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Clock ticks after boot (field 22 of /proc/PID/stat): tells a pid from a later
    /// reuse of the same number.
    pub start_time: u64,
    /// The executable's device and inode; None for kernel threads and processes whose
    /// executable cannot be read.
    pub exe: Option<FileIdentity>,
}

/// Every process under `proc_root` (normally /proc). Processes that exit during the
/// scan are simply left out.
pub fn scan_processes(proc_root: &Path) -> std::io::Result<Vec<ProcessInfo>> {
    let mut processes = Vec::new();
    for entry in std::fs::read_dir(proc_root)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(process) = process_info(proc_root, pid) {
            processes.push(process);
        }
    }
    processes.sort_by_key(|p| p.pid);
    Ok(processes)
}

/// One process, or None if it does not exist (any more).
pub fn process_info(proc_root: &Path, pid: u32) -> Option<ProcessInfo> {
    let stat = read_proc_text(proc_root.join(format!("{pid}/stat"))).ok()?;
    let start_time = start_time_from_stat(&stat)?;
    let exe = FileIdentity::of(&proc_root.join(format!("{pid}/exe"))).ok();
    Some(ProcessInfo {
        pid,
        start_time,
        exe,
    })
}

/// Field 22 of a /proc/PID/stat line.
pub fn start_time_from_stat(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: skip past its end.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Fields 14 and 15 of a /proc/PID/stat line: user and system time, in clock ticks,
/// of all the process's threads.
pub fn user_system_ticks_from_stat(stat: &str) -> Option<(u64, u64)> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// User plus system time of a /proc/PID/stat line, in clock ticks.
pub fn cpu_ticks_from_stat(stat: &str) -> Option<u64> {
    let (utime, stime) = user_system_ticks_from_stat(stat)?;
    utime.checked_add(stime)
}

/// System time a live process has used, in ns (clock-tick resolution, 10 ms at 100 Hz,
/// and sampled: the kernel charges each scheduler tick to user or system time).
pub fn system_time_ns(pid: u32) -> Option<u64> {
    let (_, stime) =
        user_system_ticks_from_stat(&read_proc_text(format!("/proc/{pid}/stat")).ok()?)?;
    // SAFETY: sysconf has no preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    ticks_to_ns(stime, per_second)
}

/// Clock ticks → ns, None for a zero tick rate or past u64 (584 years). In u128: at
/// 100 Hz, `ticks × 10⁹` passes u64 after 5.8 CPU-years — 8 days of a 256-core node.
fn ticks_to_ns(ticks: u64, per_second: u64) -> Option<u64> {
    if per_second == 0 {
        return None;
    }
    u64::try_from(u128::from(ticks) * 1_000_000_000 / u128::from(per_second)).ok()
}

/// The start time of a live process (see [`ProcessInfo::start_time`]).
pub fn process_start_time(pid: u32) -> Option<u64> {
    start_time_from_stat(&read_proc_text(format!("/proc/{pid}/stat")).ok()?)
}

/// A /proc file as text. Not `read_to_string`: the kernel copies bytes that are not
/// UTF-8 into these files — a command name cut at 15 bytes inside a character (a binary
/// named `платёжный-сервис`), a cgroup or mapped file's name — and a process whose
/// /proc/PID/stat could not be read as UTF-8 was never seen by the scan. The parsers
/// read only numbers and ASCII names, which the replacement characters leave intact.
pub fn read_proc_text(path: impl AsRef<Path>) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
    })
}

pub fn command_name(pid: u32) -> String {
    read_proc_text(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The file name of the executable `pid` ran when `exe` (its /proc/PID/exe) was opened
/// — a process that exec'd since is not named after its new program —: a bounded label,
/// unlike its full path or the pid.
pub fn binary_label_of(exe: &std::fs::File, pid: u32) -> String {
    use std::os::fd::AsRawFd as _;
    file_name_of_link(Path::new(&format!("/proc/self/fd/{}", exe.as_raw_fd())))
        .unwrap_or_else(|| command_name(pid))
}

fn file_name_of_link(link: &Path) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    let name = target.file_name()?.to_string_lossy().into_owned();
    Some(name.trim_end_matches(" (deleted)").to_string())
}

/// Path through which a process's executable is read and attached: /proc/PID/exe
/// names the exact inode, even if the file was deleted or lives in another mount
/// namespace (a container).
pub fn exe_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/exe"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 \
                    987654 1000 10 18446744073709551615";
        assert_eq!(start_time_from_stat(stat), Some(987654));
        assert_eq!(start_time_from_stat("4242 (truncated"), None);
        assert_eq!(start_time_from_stat("4242 (x) S 1"), None);
        assert_eq!(cpu_ticks_from_stat(stat), Some(3));
        assert_eq!(user_system_ticks_from_stat(stat), Some((1, 2)));
        assert_eq!(cpu_ticks_from_stat("4242 (x) S 1"), None);
    }

    #[test]
    fn cpu_time_that_overflows_is_none_not_a_panic() {
        // Found by fuzz/fuzz_targets/proc_stat.rs: utime + stime overflowed.
        let max = u64::MAX;
        let stat = format!("1 (x) S 0 0 0 0 -1 0 0 0 0 0 {max} {max} 0 0 20 0 1 0 5");
        assert_eq!(cpu_ticks_from_stat(&stat), None);
        assert_eq!(start_time_from_stat(&stat), Some(5));
        assert_eq!(ticks_to_ns(250, 100), Some(2_500_000_000));
        // 100 Hz: ticks × 10⁹ passes u64 here, the result does not.
        assert_eq!(
            ticks_to_ns(20_000_000_000, 100),
            Some(200_000_000_000_000_000)
        );
        assert_eq!(ticks_to_ns(max, 100), None);
        assert_eq!(ticks_to_ns(1, 0), None);
    }

    #[test]
    fn a_command_name_cut_inside_a_character_is_still_scanned() {
        // The kernel keeps the first 15 bytes of the executable's name: here the first
        // byte of 'ы'. /proc/PID/stat is then not UTF-8, and the scan used to skip it.
        let dir = std::env::temp_dir().join(format!("mapwatch-comm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("платёжный-сервис");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/bin/sleep", &link).unwrap();
        let mut child = std::process::Command::new(&link).arg("10").spawn().unwrap();
        let pid = child.id();
        // Polled: once in ~20 runs, the name read right after spawn was not yet the new one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let comm = loop {
            let comm = std::fs::read(format!("/proc/{pid}/comm")).unwrap();
            if std::str::from_utf8(&comm).is_err() || std::time::Instant::now() > deadline {
                break comm;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let found = process_info(Path::new("/proc"), pid);
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            std::str::from_utf8(&comm).is_err(),
            "comm {:?}",
            String::from_utf8_lossy(&comm)
        );
        assert!(found.is_some_and(|p| p.start_time > 0));
    }

    #[test]
    fn scan_sees_this_process() {
        let me = std::process::id();
        let all = scan_processes(Path::new("/proc")).expect("reading /proc");
        let mine = all.iter().find(|p| p.pid == me).expect("own pid in /proc");
        assert_eq!(Some(mine.start_time), process_start_time(me));
        assert_eq!(
            mine.exe,
            Some(FileIdentity::of(&std::env::current_exe().unwrap()).unwrap())
        );
        assert!(process_info(Path::new("/proc"), u32::MAX).is_none());
    }
}
