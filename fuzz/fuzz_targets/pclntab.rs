//! The Go function table: names, ranges, PC → file:line on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mapwatch::goelf::pclntab::Pclntab;

fuzz_target!(|data: &[u8]| {
    let Ok(table) = Pclntab::parse(data, 0x401000) else { return };
    for function in table.functions().take(64) {
        let Ok(function) = function else { break };
        let _ = table.source_line(function.entry);
        let _ = table.function_at(function.end.saturating_sub(1));
    }
    let _ = table.find_function("runtime.growslice");
});
