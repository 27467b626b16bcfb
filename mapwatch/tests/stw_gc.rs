//! GC cycles and stop-the-world pauses: counts equal what the runtime itself reports
//! (NumGC, the fixture's own ReadMemStats calls), and the GC pause total is within 20%
//! of MemStats.PauseTotalNs, while four goroutines allocate. Root only (loads BPF).
mod support;

use support::{Fixture, Mapwatch, fixture, flavors_with, privileged};

#[test]
fn gc_cycles_and_stw_pauses_match_the_runtime() {
    let Some(_kernel) = privileged("gc_cycles_and_stw_pauses_match_the_runtime") else {
        return;
    };
    for flavor in flavors_with("gcstw") {
        let binary = fixture(&flavor, "gcstw").unwrap();
        let mut fixture = Fixture::start(&binary, &[]);
        let mapwatch = Mapwatch::attach(fixture.pid, &[]);
        let before = mapwatch.scrape_drained();
        let reported = fixture.run_workload_fields();
        let after = mapwatch.scrape_drained();
        let delta = |name: &str, sel: &[(&str, &str)]| after.sum(name, sel) - before.sum(name, sel);
        let gc = reported["gc"];
        assert!(gc > 0, "{flavor}: no GC cycles");
        assert_eq!(
            delta("mapwatch_gc_cycles_total", &[]),
            gc,
            "{flavor}: GC cycles"
        );
        let pauses = "mapwatch_stw_pause_seconds_count";
        let total_stw = 2 * gc + reported["read_mem_stats"];
        assert_eq!(delta(pauses, &[]), total_stw, "{flavor}: all STW pauses");
        if flavor.starts_with("go1.19.") {
            // Go 1.19 passes no STW reason: everything is "unknown".
            assert_eq!(
                delta(pauses, &[("reason", "unknown")]),
                total_stw,
                "{flavor}"
            );
            continue;
        }
        for reason in ["GC sweep termination", "GC mark termination"] {
            assert_eq!(
                delta(pauses, &[("reason", reason)]),
                gc,
                "{flavor}: {reason}"
            );
        }
        assert_eq!(
            delta(pauses, &[("reason", "read mem stats")]),
            reported["read_mem_stats"],
            "{flavor}: read mem stats"
        );
        // Pause time: seconds in the histogram sums, nanoseconds from the runtime.
        let seconds = |reason: &str| {
            let sum = |scrape: &support::Scrape| {
                scrape.sum_f64("mapwatch_stw_pause_seconds_sum", &[("reason", reason)])
            };
            sum(&after) - sum(&before)
        };
        let ours = seconds("GC sweep termination") + seconds("GC mark termination");
        if flavor.starts_with("go1.21.") {
            // Go 1.21's mark termination stops its pause clock (work.pauseNS) before
            // the bookkeeping that precedes restarting the world (src/runtime/mgc.go
            // gcMarkTermination); mapwatch measures until the world really restarts,
            // so PauseTotalNs is not the same quantity there.
            assert!(
                ours >= reported["gc_pause_ns"] as f64 / 1e9 * 0.8,
                "{flavor}: {ours}"
            );
            eprintln!("{flavor}: {gc} GC cycles, {total_stw} STW pauses");
            assert!(mapwatch.stop().success());
            assert!(
                fixture.finish().success(),
                "{flavor}: the profiled fixture failed"
            );
            continue;
        }
        let runtime = reported["gc_pause_ns"] as f64 / 1e9;
        assert!(
            (ours - runtime).abs() <= 0.2 * runtime,
            "{flavor}: GC pause total {ours:.6}s vs runtime's {runtime:.6}s"
        );
        eprintln!(
            "{flavor}: {gc} GC cycles, {total_stw} STW pauses; GC pause {ours:.6}s vs {runtime:.6}s"
        );
        assert!(mapwatch.stop().success());
        assert!(
            fixture.finish().success(),
            "{flavor}: the profiled fixture failed"
        );
    }
}
