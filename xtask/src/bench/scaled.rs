//! Scaled counts against the truth. The overhead budget's tests (mapwatch/tests/budget.rs:
//! budgetloop paced, CPU-bound below saturation and saturated, under `mapwatch attach
//! --overhead-budget`) each assert ±10% on one run; run here several times, their
//! "scaled X vs exact Y (ratio R, …)" lines show where an estimate lands and how far
//! runs spread (the spread is the A/A control: the truth does not move). The tests are
//! run, not copied: the numbers are those of the code CI checks.
use super::{
    Bench,
    stats::{Summary, show},
};
use crate::{fixtures, util::cargo};

/// (test file, test, the load it runs) in mapwatch/tests.
const TESTS: [(&str, &str, &str); 6] = [
    (
        "budget",
        "scaled_counts_estimate_the_exact_count",
        "paced 50k growths/s, ~no work per growth (open loop), 1.5% budget",
    ),
    (
        "budget",
        "scaled_counts_are_right_on_a_cpu_bound_loop_below_saturation",
        "paced 50k growths/s, 1.5 µs of work each (CPU to spare), 1% budget",
    ),
    (
        "budget",
        "scaled_counts_are_right_on_a_saturated_cpu_bound_loop",
        "as fast as it can, 1.5 µs of work each (saturated, 200 s), 1% budget",
    ),
    (
        "budget",
        "scaled_counts_are_right_on_a_saturated_loop_whose_calibration_is_far_off",
        "the same, its per-hit cost calibrated 2× too low (`MAPWATCH_HIT_COST_FACTOR=0.5`)",
    ),
    (
        "budget_service",
        "scaled_slice_and_map_growth_on_a_saturated_service",
        "service fixture, closed loop (saturated), `run` defaults; slices",
    ),
    (
        "budget_service",
        "scaled_slice_and_map_growth_on_a_paced_service",
        "service fixture, 5k requests/s, `run` defaults; slices",
    ),
];

/// The ratio in a test's "scaled X vs exact Y (ratio R, …)" line.
fn ratio_of(output: &str) -> Option<f64> {
    let line = output
        .lines()
        .find(|l| l.contains("scaled ") && l.contains("(ratio "))?;
    line.split("(ratio ")
        .nth(1)?
        .split([',', ')'])
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Runs without the machine-wide lock held: each test takes it.
pub fn section(bench: &Bench) -> anyhow::Result<String> {
    let rounds = if bench.quick { 1 } else { 3 };
    let fixtures = fixtures::fixtures_dir();
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); TESTS.len()];
    let mut failed = vec![0usize; TESTS.len()];
    for round in 0..rounds {
        for (index, (file, test, _)) in TESTS.iter().enumerate() {
            println!("    round {}/{rounds}: {test}", round + 1);
            let (passed, output) = cargo(&[
                "test",
                "-p",
                "mapwatch",
                "--test",
                file,
                "--",
                "--exact",
                test,
                "--include-ignored",
                "--nocapture",
            ])
            .env("MAPWATCH_FIXTURES", &fixtures)
            .capture()?;
            match ratio_of(&output) {
                Some(ratio) => ratios[index].push(ratio),
                None => anyhow::bail!("{test} printed no ratio:\n{output}"),
            }
            if !passed {
                failed[index] += 1;
            }
        }
    }
    let rows: Vec<String> = TESTS
        .iter()
        .zip(&ratios)
        .zip(&failed)
        .map(|(((_, test, load), ratios), failed)| {
            let each: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
            format!(
                "| {load} | {} | {} | {failed} | `{test}` |",
                show(Summary::of(ratios), 3),
                each.join(", ")
            )
        })
        .collect();
    Ok(format!(
        "## Scaled counts against the truth\n\n\
         Growslice counts exported under a duty cycle ÷ the fixture's own count, {rounds} \
         run(s) of each test of mapwatch/tests/budget.rs and budget_service.rs (2–5 min each; \
         CI asserts ±10% on one run, ±15% on the saturated service). The spread between \
         runs is the control.\n\n\
         | load | scaled ÷ true, median (min–max) | each run | runs outside ±10% | test |\n\
         |---|---|---|---|---|\n{}\n",
        rows.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_is_read_from_the_tests_line() {
        let line = "scaled 5120557 vs exact 4999982 (ratio 1.024, +2.4%), 28 windows";
        assert_eq!(ratio_of(line), Some(1.024));
        assert_eq!(ratio_of("no such line"), None);
    }
}
