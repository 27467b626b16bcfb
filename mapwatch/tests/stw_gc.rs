//! GC cycles and stop-the-world pauses: counts equal what the runtime itself reports
//! (NumGC, the fixture's own ReadMemStats calls), and the GC pause total is within 20%
//! of MemStats.PauseTotalNs, while four goroutines allocate. Root only (loads BPF).
mod support;

use support::{Measured, fixture, flavors_with, privileged};

const PAUSES: &str = "mapwatch_stw_pause_seconds_count";

#[test]
fn gc_cycles_and_stw_pauses_match_the_runtime() {
    let Some(_kernel) = privileged("gc_cycles_and_stw_pauses_match_the_runtime") else {
        return;
    };
    for flavor in flavors_with("gcstw") {
        let run = Measured::run(&fixture(&flavor, "gcstw").unwrap(), &[]);
        let gc = run.reported["gc"];
        assert!(gc > 0, "{flavor}: no GC cycles");
        assert_eq!(
            run.delta("mapwatch_gc_cycles_total", &[]),
            gc,
            "{flavor}: GC cycles"
        );
        let total_stw = 2 * gc + run.reported["read_mem_stats"];
        assert_eq!(
            run.delta(PAUSES, &[]),
            total_stw,
            "{flavor}: all STW pauses"
        );
        if flavor.starts_with("go1.19.") {
            // Go 1.19 passes no STW reason: everything is "unknown".
            assert_eq!(
                run.delta(PAUSES, &[("reason", "unknown")]),
                total_stw,
                "{flavor}"
            );
            run.finish(&flavor);
            continue;
        }
        for reason in ["GC sweep termination", "GC mark termination"] {
            assert_eq!(
                run.delta(PAUSES, &[("reason", reason)]),
                gc,
                "{flavor}: {reason}"
            );
        }
        let reads = run.reported["read_mem_stats"];
        assert_eq!(
            run.delta(PAUSES, &[("reason", "read mem stats")]),
            reads,
            "{flavor}: read mem stats"
        );
        // Pause time: seconds in the histogram sums, nanoseconds from the runtime.
        let seconds =
            |reason: &str| run.delta_f64("mapwatch_stw_pause_seconds_sum", &[("reason", reason)]);
        let ours = seconds("GC sweep termination") + seconds("GC mark termination");
        let runtime = run.reported["gc_pause_ns"] as f64 / 1e9;
        if flavor.starts_with("go1.21.") {
            // Go 1.21's mark termination stops its pause clock (work.pauseNS) before
            // the bookkeeping that precedes restarting the world (src/runtime/mgc.go
            // gcMarkTermination); mapwatch measures until the world really restarts,
            // so PauseTotalNs is a smaller quantity there.
            assert!(
                ours >= runtime * 0.8,
                "{flavor}: GC pause total {ours:.6}s vs runtime's {runtime:.6}s"
            );
        } else {
            assert!(
                (ours - runtime).abs() <= 0.2 * runtime,
                "{flavor}: GC pause total {ours:.6}s vs runtime's {runtime:.6}s"
            );
        }
        eprintln!(
            "{flavor}: {gc} GC cycles, {total_stw} STW pauses; GC pause {ours:.6}s vs {runtime:.6}s"
        );
        run.finish(&flavor);
    }
}
