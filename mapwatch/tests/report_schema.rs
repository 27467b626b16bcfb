//! The JSON report of a recording (written with the record writer, read back and
//! analysed: no root needed) matches docs/report.schema.json — and a report that does
//! not is caught.
mod schema;

use mapwatch::{
    record::{
        format::{Entry, Header, ProbeInfo, Summary, TargetInfo},
        read::read_bytes,
        write::RecordWriter,
    },
    report::analyse::analyse,
};

fn header(maps: &str) -> Header {
    Header {
        mapwatch_version: "test".into(),
        start_unix_s: 1.7e9,
        start_monotonic_ns: 0,
        duration_asked_s: None,
        target: TargetInfo {
            pid: 7,
            binary: "/srv/app".into(),
            build_id: "b".into(),
            go_version: "go1.26.6".into(),
            map_implementation: maps.into(),
            command: Some(vec!["/srv/app".into(), "-x".into()]),
        },
        probes: vec![ProbeInfo {
            probe: "growslice".into(),
            sites: 1,
            duty_cycle: 1.0,
        }],
    }
}

/// 40 requests, each growing a slice from nil to 100 elements (chained by growslice's
/// results) and one map to 7 growths, with GC cycles and pauses in between.
fn recording() -> Vec<u8> {
    let mut w = RecordWriter::create(Vec::new(), &header("swiss")).unwrap();
    let (mut t, mut ptr) = (0u64, 0x1000u64);
    for request in 0..40u64 {
        let site = w.site("main.handle", "/src/app/handler.go", 19);
        let caller = w.site("main.main", "/src/app/main.go", 12);
        let elem = w.name("main.Item");
        let (mut old_ptr, mut old_cap) = (0, 0);
        while old_cap < 100 {
            let new_cap = if old_cap == 0 { 1 } else { old_cap * 2 };
            t += 1000;
            w.push(Entry::SliceGrowth {
                t,
                goroutine: 1,
                site,
                elem_type: elem,
                elem_size: Some(40),
                old_ptr,
                old_len: old_cap,
                old_cap,
                new_len: old_cap + 1,
                new_cap: Some(new_cap),
                new_bytes: Some(new_cap * 40),
                frames: vec![vec![site], vec![caller]],
            });
            ptr += 0x1000;
            w.push(Entry::SliceGrown {
                t,
                goroutine: 1,
                new_ptr: ptr,
                new_cap,
            });
            (old_ptr, old_cap) = (ptr, new_cap);
        }
        let make = w.site("main.handle", "/src/app/handler.go", 29);
        let map_type = w.name("map[int64]int");
        w.push(Entry::MakeMap {
            t,
            goroutine: 1,
            site: make,
            map_type,
            hint: 0,
        });
        let map = 0x9000_0000 + request * 0x100;
        w.push(Entry::MapMade {
            t,
            goroutine: 1,
            map,
        });
        let runtime = w.site("runtime.mapassign_fast64", "/go/src/runtime/map.go", 300);
        let insert = w.site("main.handle", "/src/app/handler.go", 34);
        let kind = w.name("table_grow");
        for growth in 0..7u64 {
            t += 1000;
            w.push(Entry::MapGrowth {
                t,
                goroutine: 1,
                site: runtime,
                kind,
                map,
                map_type,
                size: Some(8 << growth),
                load_factor: Some(0.875),
                overflow_buckets: None,
                slots_after: Some(16 << growth),
                frames: vec![vec![runtime], vec![insert]],
            });
        }
        if request % 10 == 9 {
            let reason = w.name("GC sweep termination");
            w.push(Entry::StwPause {
                t,
                duration_ns: 50_000 + request * 1000,
                reason,
            });
            w.push(Entry::GcCycle { t });
            w.write_block().unwrap();
        }
    }
    w.finish(Summary {
        duration_ns: t + 1_000_000,
        stopped_because: "duration elapsed".into(),
        events_lost: 0,
        observations_dropped: 0,
    })
    .unwrap()
}

#[test]
fn the_json_report_matches_its_schema() {
    let recording = read_bytes(&recording()).unwrap();
    let report = analyse(&recording);
    assert_eq!(report.slice_sites[0].instances, 40);
    assert!(report.slice_sites[0].advice.is_advised());
    assert!(report.map_sites[0].advice.is_advised());
    let json = serde_json::to_value(&report).unwrap();
    schema::assert_valid_report(&json);

    // An empty capture too (no sites, no pauses, no end record).
    let empty = RecordWriter::create(Vec::new(), &header("classic")).unwrap();
    let bytes = empty.finish(Summary::default()).unwrap();
    let report = analyse(&read_bytes(&bytes[..bytes.len() - 1]).unwrap());
    schema::assert_valid_report(&serde_json::to_value(&report).unwrap());
}

#[test]
fn a_report_that_drifts_from_the_schema_is_caught() {
    let report = analyse(&read_bytes(&recording()).unwrap());
    let mut json = serde_json::to_value(&report).unwrap();
    json["summary"]["new_field"] = 1.into();
    let caught = std::panic::catch_unwind(|| schema::assert_valid_report(&json));
    assert!(caught.is_err(), "an undocumented field passed the schema");
}

/// The checked-in captures (fuzz seeds, tests/corpus/record) read in this build's
/// format: a real `mapwatch record` of the slicegrow fixture, and the same cut off.
#[test]
fn the_checked_in_captures_read_and_report() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/record");
    let whole = std::fs::read(dir.join("slicegrow-go1.22.mapwatch")).unwrap();
    let recording = read_bytes(&whole).expect("the capture reads");
    assert_eq!(recording.damage, None);
    let report = analyse(&recording);
    // The fixture's own count (fixtures/README.md): 149 growths in its workload.
    let workload: u64 = report
        .slice_sites
        .iter()
        .filter(|s| {
            s.location
                .as_ref()
                .is_some_and(|l| l.function.starts_with("main."))
        })
        .map(|s| s.growths)
        .sum();
    assert_eq!(workload, 149);
    schema::assert_valid_report(&serde_json::to_value(&report).unwrap());

    let cut = std::fs::read(dir.join("cut-off.mapwatch")).unwrap();
    let recording = read_bytes(&cut).expect("a cut-off capture still reads");
    assert!(recording.damage.is_some());
    schema::assert_valid_report(&serde_json::to_value(analyse(&recording)).unwrap());
}
