//! Machine code of a function: stack-check end and RETs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(layout) = mapwatch::goelf::decode::analyze_function(data, 0x401000) {
        // Probes may only ever land on instruction boundaries inside the function.
        assert!(layout.is_boundary(layout.entry_offset()));
        assert!(layout.rets.iter().all(|&r| layout.is_boundary(r) && r < data.len() as u64));
    }
});
