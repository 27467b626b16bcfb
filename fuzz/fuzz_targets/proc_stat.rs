//! /proc/PID/stat: the start time (a reused pid is a new process) and the CPU ticks (the
//! budget's share of a process's own CPU). The command name in it is the process's
//! choice: spaces, parentheses, bytes that are not UTF-8.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mapwatch::discover::procs::{cpu_ticks_from_stat, start_time_from_stat};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = start_time_from_stat(&text);
    let _ = cpu_ticks_from_stat(&text);
});
