//! Runtime type descriptor → Go type name (growslice's element type). Input: types_base,
//! the descriptor's address and where the memory starts (three u64 LE), then the memory:
//! a hostile ELF file puts its segments at any address, up to the top of the range.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mapwatch::goelf::types::{TypeLayout, type_name};

fuzz_target!(|data: &[u8]| {
    let Some((header, memory)) = data.split_first_chunk::<24>() else {
        return;
    };
    let word = |i: usize| u64::from_le_bytes(header[8 * i..8 * i + 8].try_into().unwrap());
    let (types_base, type_vaddr, memory_base) = (word(0), word(1), word(2));
    // Like GoBinary::read: exactly `len` bytes, or None.
    let read = |addr: u64, len: u64| {
        let start = usize::try_from(addr.checked_sub(memory_base)?).ok()?;
        memory.get(start..start.checked_add(usize::try_from(len).ok()?)?)
    };
    // abi.Type's TFlag and Str in every supported Go version.
    let layout = TypeLayout { tflag: 20, str: 40 };
    if let Ok(name) = type_name(read, types_base, type_vaddr, layout) {
        assert!(
            name.len() <= 1 << 16,
            "a name longer than the reader allows"
        );
    }
});
