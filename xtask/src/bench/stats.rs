//! Summaries of interleaved samples: medians with their min..max, never a mean (one
//! slow round on a shared VM must not move the result).

/// Median and range of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub count: usize,
}

impl Summary {
    /// None for no samples; NaNs are dropped first.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            count: n,
        })
    }

    /// "12.3 (11.0–14.1)" with `decimals` digits.
    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

/// Formats an optional summary; "—" when there were no samples.
pub fn show(summary: Option<Summary>, decimals: usize) -> String {
    summary.map_or_else(|| "—".to_string(), |s| s.show(decimals))
}

/// Per-round ratios `sample[i] / baseline[i]` of two configurations measured in the
/// same rounds: interleaving makes each pair share the machine's state of the moment.
pub fn paired_ratios(samples: &[f64], baseline: &[f64]) -> Vec<f64> {
    samples
        .iter()
        .zip(baseline)
        .filter(|(_, b)| **b > 0.0)
        .map(|(s, b)| s / b)
        .collect()
}

/// The order of configurations in round `round`: rotated each round, so no
/// configuration always runs first (warm-up) or right after the same neighbour.
pub fn round_order(configs: usize, round: usize) -> Vec<usize> {
    (0..configs).map(|i| (i + round) % configs).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let odd = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!(
            (odd.median, odd.min, odd.max, odd.count),
            (3.0, 1.0, 5.0, 3)
        );
        let even = Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(even.median, 2.5);
    }

    #[test]
    fn no_samples_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
        assert_eq!(show(None, 1), "—");
    }

    #[test]
    fn show_formats_median_and_range() {
        let s = Summary::of(&[1.0, 2.0, 4.0]).unwrap();
        assert_eq!(s.show(1), "2.0 (1.0–4.0)");
    }

    #[test]
    fn ratios_pair_rounds_and_skip_zero_baselines() {
        assert_eq!(
            paired_ratios(&[2.0, 3.0, 5.0], &[1.0, 0.0, 2.0]),
            vec![2.0, 2.5]
        );
    }

    #[test]
    fn every_configuration_leads_one_round() {
        let firsts: Vec<usize> = (0..4).map(|r| round_order(4, r)[0]).collect();
        assert_eq!(firsts, vec![0, 1, 2, 3]);
        let mut order = round_order(4, 2);
        order.sort();
        assert_eq!(order, vec![0, 1, 2, 3]);
    }
}
