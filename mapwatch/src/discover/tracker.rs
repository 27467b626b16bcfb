//! Which processes the daemon knows and which it has attached: turns /proc scans (and
//! single-process notices) into changes to act on. Pure: no I/O, so every case of pid
//! reuse, exec and exit is unit-tested.
use std::collections::{HashMap, HashSet};

use super::procs::FileIdentity;
use super::procs::ProcessInfo;

/// Something the daemon must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A process not seen before (or a new process reusing a pid): examine it.
    Appeared(ProcessInfo),
    /// The same process now runs another executable: detach (if attached) and examine
    /// it again — its old probe offsets are stale.
    Execed(ProcessInfo),
    /// The process is gone; `attached` says whether it had probes to detach.
    Exited { pid: u32, attached: bool },
}

#[derive(Debug, Clone, Copy)]
struct Known {
    start_time: u64,
    exe: Option<FileIdentity>,
    attached: bool,
}

#[derive(Debug, Default)]
pub struct Tracker {
    known: HashMap<u32, Known>,
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// Changes since the last scan, given every process that exists now.
    pub fn reconcile(&mut self, scan: &[ProcessInfo]) -> Vec<Change> {
        let present: HashSet<u32> = scan.iter().map(|p| p.pid).collect();
        let mut gone: Vec<u32> = self
            .known
            .keys()
            .copied()
            .filter(|pid| !present.contains(pid))
            .collect();
        gone.sort_unstable();
        let mut changes: Vec<Change> = gone
            .into_iter()
            .filter_map(|pid| self.exited(pid))
            .collect();
        for process in scan {
            changes.extend(self.observe(process.clone()));
        }
        changes
    }

    /// One process as it is now (from a scan or an exec notice).
    pub fn observe(&mut self, process: ProcessInfo) -> Vec<Change> {
        let fresh = Known {
            start_time: process.start_time,
            exe: process.exe,
            attached: false,
        };
        match self.known.insert(process.pid, fresh) {
            None => vec![Change::Appeared(process)],
            Some(old) if old.start_time != process.start_time => vec![
                Change::Exited {
                    pid: process.pid,
                    attached: old.attached,
                },
                Change::Appeared(process),
            ],
            Some(old) if old.exe != process.exe => {
                // The old probes went with the old image (exec replaces the address
                // space, and the kernel removes its uprobes); the link still needs
                // closing, which Execed tells the daemon to do.
                vec![Change::Execed(process)]
            }
            Some(old) => {
                self.known.insert(process.pid, old);
                Vec::new()
            }
        }
    }

    /// The process exited (from a scan or an exit notice); None if it was unknown.
    pub fn exited(&mut self, pid: u32) -> Option<Change> {
        let old = self.known.remove(&pid)?;
        Some(Change::Exited {
            pid,
            attached: old.attached,
        })
    }

    /// Records that `pid` (as observed last) now has probes attached, planned for the
    /// executable `exe`. The daemon identifies the executable again when it attaches,
    /// later than the scan or notice that reported the process: if the process exec'd
    /// in between, the probes are for the newer executable, and an exec back to the
    /// one observed first must be seen as a change.
    pub fn attached_to(&mut self, pid: u32, exe: FileIdentity) {
        if let Some(known) = self.known.get_mut(&pid) {
            known.attached = true;
            known.exe = Some(exe);
        }
    }

    /// Records that `pid` no longer has probes attached.
    pub fn detached(&mut self, pid: u32) {
        if let Some(known) = self.known.get_mut(&pid) {
            known.attached = false;
        }
    }

    pub fn attached_pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.known
            .iter()
            .filter(|(_, k)| k.attached)
            .map(|(pid, _)| *pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe(ino: u64) -> FileIdentity {
        FileIdentity { dev: 1, ino }
    }

    fn process(pid: u32, start_time: u64, ino: u64) -> ProcessInfo {
        ProcessInfo {
            pid,
            start_time,
            exe: Some(exe(ino)),
        }
    }

    #[test]
    fn first_scan_reports_every_process_once() {
        let mut tracker = Tracker::new();
        let scan = [process(1, 10, 100), process(2, 20, 200)];
        assert_eq!(
            tracker.reconcile(&scan),
            vec![
                Change::Appeared(scan[0].clone()),
                Change::Appeared(scan[1].clone())
            ]
        );
        assert_eq!(tracker.reconcile(&scan), vec![]);
    }

    #[test]
    fn exit_reports_whether_probes_must_be_detached() {
        let mut tracker = Tracker::new();
        tracker.reconcile(&[process(1, 10, 100), process(2, 20, 200)]);
        tracker.attached_to(2, exe(200));
        assert_eq!(
            tracker.reconcile(&[]),
            vec![
                Change::Exited {
                    pid: 1,
                    attached: false
                },
                Change::Exited {
                    pid: 2,
                    attached: true
                }
            ]
        );
        assert_eq!(tracker.attached_pids().count(), 0);
    }

    #[test]
    fn a_reused_pid_is_a_new_process() {
        let mut tracker = Tracker::new();
        tracker.reconcile(&[process(7, 10, 100)]);
        tracker.attached_to(7, exe(100));
        let reused = process(7, 99, 100);
        assert_eq!(
            tracker.reconcile(std::slice::from_ref(&reused)),
            vec![
                Change::Exited {
                    pid: 7,
                    attached: true
                },
                Change::Appeared(reused)
            ]
        );
        assert_eq!(tracker.attached_pids().count(), 0);
    }

    #[test]
    fn exec_is_a_change_of_executable_in_the_same_process() {
        let mut tracker = Tracker::new();
        tracker.reconcile(&[process(7, 10, 100)]);
        tracker.attached_to(7, exe(100));
        let execed = process(7, 10, 101);
        assert_eq!(
            tracker.observe(execed.clone()),
            vec![Change::Execed(execed.clone())]
        );
        // The re-examined process starts unattached; seeing it again changes nothing.
        assert_eq!(tracker.attached_pids().count(), 0);
        assert_eq!(tracker.observe(execed), vec![]);
    }

    #[test]
    fn exit_notice_then_scan_does_not_report_twice() {
        let mut tracker = Tracker::new();
        tracker.reconcile(&[process(3, 10, 100)]);
        assert!(tracker.exited(3).is_some());
        assert_eq!(tracker.reconcile(&[]), vec![]);
        assert_eq!(tracker.exited(3), None);
    }

    #[test]
    fn attachment_survives_rescans() {
        let mut tracker = Tracker::new();
        tracker.reconcile(&[process(3, 10, 100)]);
        tracker.attached_to(3, exe(100));
        tracker.reconcile(&[process(3, 10, 100)]);
        assert_eq!(tracker.attached_pids().collect::<Vec<_>>(), vec![3]);
    }

    /// The exit notice of a process may be lost (the notices ring was full) and its pid
    /// reused by a new process of the same binary; the new one is seen first through
    /// its exec notice. Same pid, same executable, another start time: the old process
    /// exits (its probes detached) and the new one is examined afresh, unattached.
    #[test]
    fn a_reused_pid_seen_through_an_exec_notice_is_a_new_process() {
        let mut tracker = Tracker::new();
        tracker.observe(process(7, 10, 100));
        tracker.attached_to(7, exe(100));
        let reused = process(7, 11, 100);
        assert_eq!(
            tracker.observe(reused.clone()),
            vec![
                Change::Exited {
                    pid: 7,
                    attached: true
                },
                Change::Appeared(reused)
            ]
        );
        assert_eq!(tracker.attached_pids().count(), 0);
        tracker.detached(7);
        assert_eq!(
            tracker.attached_pids().count(),
            0,
            "nothing to detach twice"
        );
    }

    /// Observed running A, attached once it already ran B (it exec'd before the daemon
    /// opened its executable): an exec back to A is a change, not "still A".
    #[test]
    fn the_executable_attached_to_is_what_the_next_exec_is_compared_with() {
        let mut tracker = Tracker::new();
        tracker.observe(process(7, 10, 100));
        tracker.attached_to(7, exe(200));
        let back = process(7, 10, 100);
        assert_eq!(tracker.observe(back.clone()), vec![Change::Execed(back)]);
    }
}
