//! /proc/PID/maps text and the load bias computed from it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mapwatch::goelf::procmaps::{load_bias, parse_maps};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let maps = parse_maps(&text);
    let _ = load_bias(&maps, 1, |offset| offset.checked_add(0x400000));
});
