//! A process's CPU time to the nanosecond, for the overhead budget's weights.
//!
//! /proc/PID/stat counts CPU time in clock ticks (10 ms at 100 Hz): a duty-cycle window
//! of 50 ms holds five of them, too few to weigh its records by. The scheduler keeps
//! each thread's run time in ns (`/proc/PID/task/TID/schedstat`, first field:
//! `se.sum_exec_runtime`); summed over the threads it is the process's CPU time,
//! probes included (a uprobe runs in the context of the thread that hit it).
//!
//! The system part of it only comes in ticks (/proc/PID/stat): the budget learns from it,
//! over many windows, how much of a probe hit's cost the kernel takes (the trap and the
//! BPF program run in kernel mode), so it is read along but never divided by one window.
use std::collections::HashMap;

use super::procs::{read_proc_text, system_time_ns};

/// A process's CPU time, ns: all of it (schedstat, exact) and its system part (ticks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTime {
    pub total_ns: u64,
    pub system_ns: u64,
}

/// Reads one process's CPU time. Remembers each thread's last value: a thread that
/// exited keeps counting with what it had used when last seen (the time it ran since
/// is lost, which only makes one reading a little low).
#[derive(Debug, Default)]
pub struct CpuClock {
    threads: HashMap<u32, u64>,
    retired: u64,
}

impl CpuClock {
    /// The process's CPU time so far (as far as this clock has seen its threads), or
    /// None if it is gone.
    pub fn read(&mut self, pid: u32) -> Option<CpuTime> {
        let system_ns = system_time_ns(pid)?;
        let total_ns = self.read_total(pid)?;
        Some(CpuTime {
            total_ns,
            system_ns,
        })
    }

    fn read_total(&mut self, pid: u32) -> Option<u64> {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let mut now: HashMap<u32, u64> = HashMap::with_capacity(self.threads.len() + 1);
        for entry in tasks.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(text) = read_proc_text(format!("/proc/{pid}/task/{tid}/schedstat")) else {
                continue; // exited between the listing and the read
            };
            if let Some(ns) = run_time_ns(&text) {
                now.insert(tid, ns);
            }
        }
        if now.is_empty() {
            return None;
        }
        for (tid, last) in &self.threads {
            match now.get(tid) {
                // A thread id reused by a new thread starts again from 0.
                Some(&ns) if ns >= *last => {}
                _ => self.retired += last,
            }
        }
        let running: u64 = now.values().sum();
        self.threads = now;
        Some(self.retired + running)
    }
}

/// The first field of a schedstat line: time spent on the CPU, ns.
fn run_time_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_run_time_is_its_first_field() {
        assert_eq!(run_time_ns("227968127 42662494 372\n"), Some(227_968_127));
        assert_eq!(run_time_ns(""), None);
        assert_eq!(run_time_ns("x 1 2"), None);
    }

    #[test]
    fn this_process_uses_cpu_and_its_clock_never_goes_back() {
        let mut clock = CpuClock::default();
        let pid = std::process::id();
        let first = clock.read(pid).expect("own schedstat").total_ns;
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
        let second = clock.read(pid).expect("own schedstat").total_ns;
        assert!(second > first, "{first} then {second}");
        let third = clock.read(pid).unwrap();
        assert!(third.total_ns >= second);
        assert!(third.system_ns <= third.total_ns + 10_000_000);
        assert_eq!(CpuClock::default().read(u32::MAX), None);
    }
}
