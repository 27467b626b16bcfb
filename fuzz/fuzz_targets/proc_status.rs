//! /proc/self/status: the effective capability set (`CapEff:`), which decides whether
//! mapwatch refuses to start and which advice an unreadable binary gets.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mapwatch::attach::privileges::capabilities_from_status;

fuzz_target!(|data: &[u8]| {
    let _ = capabilities_from_status(&String::from_utf8_lossy(data));
});
