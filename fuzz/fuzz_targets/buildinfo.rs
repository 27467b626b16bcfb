//! The `.go.buildinfo` blob, both formats; pointers resolve into the input itself.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let read = |addr: u64, len: u64| data.get(usize::try_from(addr).ok()?..usize::try_from(addr.checked_add(len)?).ok()?);
    let _ = mapwatch::goelf::buildinfo::parse(data, read);
});
