//! The Go function table: names, ranges, PC → file:line and inlined frames on arbitrary
//! bytes (which also serve as the go:func.* data the inline trees are read from).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mapwatch::goelf::pclntab::Pclntab;

fuzz_target!(|data: &[u8]| {
    let Ok(table) = Pclntab::parse(data, 0x401000) else { return };
    for function in table.functions().take(64) {
        let Ok(function) = function else { break };
        let _ = table.source_line(function.entry);
        let _ = table.function_at(function.end.saturating_sub(1));
        let _ = table.frames(function.entry, Some(data));
        let _ = table.frames(function.end.saturating_sub(1), None);
    }
    let _ = table.find_function("runtime.growslice");
});
