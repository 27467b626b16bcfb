//! `mapwatch report FILE`: a record file is whatever is on disk — cut off, corrupted, or
//! not ours. Reading it never panics (a damaged tail is kept as `damage`), and a file
//! that reads is analysed and rendered in every format without a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mapwatch::{
    record::read::read_bytes,
    report::{analyse::analyse, diagnostics, gate, markdown, pprof, svg},
};

fuzz_target!(|data: &[u8]| {
    let Ok(recording) = read_bytes(data) else {
        return;
    };
    let report = analyse(&recording);
    let _ = markdown::render(&report, 10);
    let _ = serde_json::to_vec(&report).expect("a report serializes");
    let _ = svg::render(&report, 10);
    let _ = pprof::render(&report);
    let raw = |l: &mapwatch::report::model::Location| l.file.clone();
    let _ = diagnostics::sarif(&report, &raw);
    let _ = diagnostics::vet(&report, &raw);
    let conditions = gate::parse("slice_grow_bytes_rate>1MB/s,map_grow>1,stw_p99>1ms").unwrap();
    let _ = gate::evaluate(&conditions, &report);
});
