//! Which workloads keep their detail under the node's series budget: pure arithmetic
//! on series counts, so it is tested without a registry.
use std::collections::{HashMap, HashSet};

/// How much of a workload's detail is exported, coarsest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Counted under the aggregate workload (every workload label `other`), its sites
    /// and element types as `other`; its per-workload gauges are not exported.
    Aggregated,
    /// Its own workload labels, its sites and element types folded into `other`.
    Folded,
    /// Everything, up to the per-workload label caps.
    Detail,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Detail, Tier::Folded, Tier::Aggregated];

    /// The `tier` label of `mapwatch_series_budget_workloads`.
    pub fn label(self) -> &'static str {
        match self {
            Tier::Detail => "detail",
            Tier::Folded => "folded",
            Tier::Aggregated => "aggregated",
        }
    }

    /// 2 for detail down to 0: how strongly a workload holds on to its tier.
    fn level(self) -> i32 {
        match self {
            Tier::Aggregated => 0,
            Tier::Folded => 1,
            Tier::Detail => 2,
        }
    }
}

/// A workload's recent growth activity divides by this per tier it would have to
/// climb to displace one that holds it: a change of tier steps a series (folded
/// counts jump into `other`; a promoted series restarts at 0), so two workloads of
/// about equal activity must not swap places at every scrape.
const HYSTERESIS: f64 = 2.0;

/// One workload as the plan sees it.
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    /// Recent growth activity (events, decayed over about a minute).
    pub activity: f64,
    /// Its tier so far; None for a workload new since the last plan.
    pub current: Option<Tier>,
    /// Series it exports in each tier.
    pub detail: usize,
    pub folded: usize,
    /// The aggregate's series it would add to, each as (identity hash, series).
    pub aggregated: Vec<(u64, usize)>,
}

impl Candidate {
    fn rank(&self) -> f64 {
        let level = self.current.map_or(Tier::Detail.level(), Tier::level);
        self.activity * HYSTERESIS.powi(level)
    }
}

/// Tiers for `candidates` that keep the node's series within `budget`: `fixed` series
/// are exported whatever the plan (families without workload labels, counts already
/// in the aggregate, whose identities are `aggregate`).
///
/// From everything aggregated, the most active workloads get their detail back one by
/// one while it fits, then the next ones their own workload labels (folded): so the
/// least active are folded first and aggregated after that, and the busiest keep
/// their detail whatever the number of workloads. If even everything aggregated does
/// not fit, everything stays aggregated: the closest the plan can get. Candidates of
/// equal rank are taken in their order (the caller sorts them).
pub fn plan(
    candidates: &[Candidate],
    fixed: usize,
    aggregate: HashSet<u64>,
    budget: usize,
) -> Vec<Tier> {
    let mut tiers = vec![Tier::Aggregated; candidates.len()];
    // How many aggregated workloads export each series of the aggregate.
    let mut shared: HashMap<u64, (usize, usize)> = HashMap::new();
    let mut total = fixed;
    for c in candidates {
        for &(identity, series) in &c.aggregated {
            let entry = shared.entry(identity).or_insert((0, series));
            if entry.0 == 0 && !aggregate.contains(&identity) {
                total += series;
            }
            entry.0 += 1;
        }
    }
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| candidates[b].rank().total_cmp(&candidates[a].rank()));
    for (tier, own) in [
        (
            Tier::Detail,
            (|c: &Candidate| c.detail) as fn(&Candidate) -> usize,
        ),
        (Tier::Folded, |c: &Candidate| c.folded),
    ] {
        for &i in &order {
            if tiers[i] != Tier::Aggregated {
                continue;
            }
            let c = &candidates[i];
            let left = c
                .aggregated
                .iter()
                .filter(|(id, _)| shared[id].0 == 1 && !aggregate.contains(id))
                .map(|(_, series)| series)
                .sum::<usize>();
            let after = total - left + own(c);
            if after > budget {
                break;
            }
            total = after;
            for (id, _) in &c.aggregated {
                if let Some(entry) = shared.get_mut(id) {
                    entry.0 -= 1;
                }
            }
            tiers[i] = tier;
        }
    }
    tiers
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A workload of `detail` series, `folded` once folded, sharing the aggregate's
    /// series 0..folded.
    fn workload(activity: f64, detail: usize, folded: usize) -> Candidate {
        Candidate {
            activity,
            current: Some(Tier::Detail),
            detail,
            folded,
            aggregated: (0..folded as u64).map(|i| (i, 1)).collect(),
        }
    }

    #[test]
    fn everything_keeps_its_detail_within_the_budget() {
        let candidates = vec![workload(1.0, 200, 100); 5];
        assert_eq!(
            plan(&candidates, 50, HashSet::new(), 1050),
            vec![Tier::Detail; 5]
        );
    }

    #[test]
    fn the_least_active_are_folded_first_then_aggregated() {
        let candidates = vec![
            workload(10.0, 200, 100),
            workload(1000.0, 200, 100),
            workload(1.0, 200, 100),
            workload(100.0, 200, 100),
        ];
        // The two busiest with detail (400) and the others folded (200).
        assert_eq!(
            plan(&candidates, 50, HashSet::new(), 650),
            [Tier::Folded, Tier::Detail, Tier::Folded, Tier::Detail]
        );
        // The two busiest with detail (400), the aggregate (100).
        assert_eq!(
            plan(&candidates, 50, HashSet::new(), 600),
            [
                Tier::Aggregated,
                Tier::Detail,
                Tier::Aggregated,
                Tier::Detail
            ]
        );
        // The busiest with detail (200), the next folded (100), the aggregate (100).
        assert_eq!(
            plan(&candidates, 50, HashSet::new(), 450),
            [
                Tier::Aggregated,
                Tier::Detail,
                Tier::Aggregated,
                Tier::Folded
            ]
        );
    }

    #[test]
    fn the_busiest_keeps_its_detail_whatever_the_number_of_workloads() {
        let mut candidates = vec![workload(1.0, 220, 150); 1000];
        candidates[617].activity = 1e6;
        let tiers = plan(&candidates, 100, HashSet::new(), 2000);
        assert_eq!(tiers[617], Tier::Detail);
        let exported = 100
            + 150
            + tiers
                .iter()
                .zip(&candidates)
                .map(|(t, c)| match t {
                    Tier::Detail => c.detail,
                    Tier::Folded => c.folded,
                    Tier::Aggregated => 0,
                })
                .sum::<usize>();
        assert!(exported <= 2000, "{exported}");
    }

    #[test]
    fn a_workload_must_be_clearly_busier_to_displace_one_with_detail() {
        let holder = workload(10.0, 200, 100);
        let mut newcomer = workload(15.0, 200, 100);
        newcomer.current = Some(Tier::Folded);
        // 1.5 times as busy: not enough to take the holder's detail.
        let tiers = plan(&[holder.clone(), newcomer.clone()], 0, HashSet::new(), 300);
        assert_eq!(tiers, [Tier::Detail, Tier::Folded]);
        newcomer.activity = 50.0;
        let tiers = plan(&[holder, newcomer], 0, HashSet::new(), 300);
        assert_eq!(tiers, [Tier::Folded, Tier::Detail]);
    }

    #[test]
    fn a_budget_below_the_aggregate_aggregates_everything() {
        let candidates = vec![workload(1.0, 200, 100); 3];
        assert_eq!(
            plan(&candidates, 500, HashSet::new(), 100),
            vec![Tier::Aggregated; 3]
        );
    }
}
