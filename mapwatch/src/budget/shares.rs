//! Sharing the budget: the limits, and how they are split by water-filling — the node
//! budget among processes, then a process's budget among its groups, rare ones first.
use super::{cycles::MIN_FRACTION, groups::Priority};

/// The controller's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// CPU the probes of one process may cost, in cores (0.01 = 1% of one core).
    pub per_process: f64,
    /// And at most this share of the process's own CPU use (0.01 = 1%): a service
    /// that keeps half a core busy gets half of `per_process`. None: no such limit.
    pub share_of_process: Option<f64>,
    /// CPU the probes of all processes may cost together, in cores.
    pub node: Option<f64>,
    /// false: every probe stays attached (`attach --exact`, or `attach` without
    /// `--overhead-budget`); costs are still measured and reported.
    pub enforce: bool,
}

/// Shares `budget` among `demands` by water-filling: every demand gets at most an equal
/// share; what small demands leave is shared again among the others.
pub fn water_fill(budget: f64, demands: &[f64]) -> Vec<f64> {
    let mut given = vec![0.0; demands.len()];
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by(|&a, &b| demands[a].total_cmp(&demands[b]));
    let mut left = budget.max(0.0);
    for (served, &i) in order.iter().enumerate() {
        let share = left / (order.len() - served) as f64;
        given[i] = demands[i].max(0.0).min(share);
        left -= given[i];
    }
    given
}

/// Each process's budget, in cores, from what its groups cost while attached
/// (`demands`, as far as measured) and the most it may use (`limits`, see
/// [`BudgetConfig`]): its limit, or with a node budget, a water-filled share of the
/// node budget up to its limit.
pub(super) fn process_budgets(node: Option<f64>, demands: &[f64], limits: &[f64]) -> Vec<f64> {
    let Some(node) = node else {
        return limits.to_vec();
    };
    let demands: Vec<f64> = demands
        .iter()
        .zip(limits)
        .map(|(&demand, &limit)| demand.min(limit))
        .collect();
    let shares = water_fill(node, &demands);
    // A process under its share may use up to the per-process budget: its
    // demand may grow before the next step.
    let spare = node - shares.iter().sum::<f64>();
    shares
        .iter()
        .zip(&demands)
        .zip(limits)
        .map(|((&share, &d), &limit)| {
            if share >= d {
                (share + spare / demands.len().max(1) as f64).min(limit)
            } else {
                share
            }
        })
        .collect()
}

/// The fraction of time each group of a process may be attached, given the process's
/// `budget` and each group's (priority, on-cost; None until measured): 1 for a group
/// whose share covers its on-cost, else share ÷ on-cost (at least [`MIN_FRACTION`]).
pub(super) fn group_fractions(budget: f64, groups: &[(Priority, Option<f64>)]) -> Vec<f64> {
    let mut fractions = vec![1.0; groups.len()];
    let mut left = budget;
    // Rare groups are served first only while they are rare: when they alone
    // exceed the budget (map growth in a service that builds maps per request),
    // every group shares it alike, so slice growth is still seen.
    let rare_demand: f64 = groups
        .iter()
        .filter(|&&(priority, _)| priority == Priority::Rare)
        .filter_map(|&(_, on_cost)| on_cost)
        .sum();
    let passes: &[&[Priority]] = if rare_demand <= budget {
        &[&[Priority::Rare], &[Priority::Hot]]
    } else {
        &[&[Priority::Rare, Priority::Hot]]
    };
    for priorities in passes {
        let members: Vec<usize> = (0..groups.len())
            .filter(|&i| priorities.contains(&groups[i].0))
            .collect();
        let demands: Vec<f64> = members
            .iter()
            .map(|&i| groups[i].1.unwrap_or(0.0))
            .collect();
        let shares = water_fill(left, &demands);
        left -= shares.iter().sum::<f64>();
        for ((&i, share), demand) in members.iter().zip(shares).zip(demands) {
            fractions[i] = if demand <= 0.0 || share >= demand {
                1.0
            } else {
                (share / demand).max(MIN_FRACTION)
            };
        }
    }
    fractions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn water_filling_gives_small_demands_all_they_need() {
        let shares = water_fill(0.01, &[0.001, 0.5, 0.02]);
        assert!((shares[0] - 0.001).abs() < 1e-12);
        assert!((shares[1] - 0.0045).abs() < 1e-12);
        assert!((shares[2] - 0.0045).abs() < 1e-12);
        assert_eq!(water_fill(1.0, &[0.1, 0.2]), [0.1, 0.2]);
        assert!(water_fill(1.0, &[]).is_empty());
    }
}
