//! Slice instances: growths chained by growslice's results (the module above says how),
//! and per append site the distributions the advice reads.
use std::collections::{BTreeMap, HashMap};

use super::{Frame, Stacks, distribution, location, most_growths_first, rate, stacks_of};
use crate::{
    record::{format::SiteId, read::Recording},
    report::{advice, model::SliceSite},
};

pub(super) struct Growth {
    pub(super) stack: Vec<Frame>,
    pub(super) goroutine: u64,
    pub(super) site: SiteId,
    pub(super) elem_type: u32,
    pub(super) elem_size: Option<u64>,
    pub(super) old_ptr: u64,
    pub(super) old_cap: u64,
    pub(super) new_cap: Option<u64>,
    pub(super) new_bytes: u64,
    pub(super) copied: u64,
}

/// One slice instance: its growths (site, new capacity, bytes copied), in order.
pub(super) struct Chain {
    started_non_empty: bool,
    growths: Vec<(SiteId, u64, u64)>,
}

/// A slice instance as one site saw it.
pub(super) struct Instance {
    caps: Vec<u64>,
    copied: Vec<u64>,
    final_cap: u64,
    started_non_empty: bool,
}

#[derive(Default)]
pub(super) struct SitePart {
    growths: u64,
    bytes_allocated: u64,
    bytes_copied: u64,
    elem_types: BTreeMap<u32, u64>,
    elem_size: Option<u64>,
    stacks: Stacks,
}

#[derive(Default)]
pub(super) struct SliceChains {
    chains: Vec<Chain>,
    /// By goroutine: the chain of its growth waiting for growslice's result.
    waiting: HashMap<u64, usize>,
    /// By (array, capacity) a growth returned: the chain it continues.
    by_result: HashMap<(u64, u64), usize>,
    per_site: HashMap<SiteId, SitePart>,
}

impl SliceChains {
    pub(super) fn growth(&mut self, g: Growth) {
        let continued = (g.old_ptr != 0 && g.old_cap != 0)
            .then(|| self.by_result.remove(&(g.old_ptr, g.old_cap)))
            .flatten();
        let chain = continued.unwrap_or_else(|| {
            self.chains.push(Chain {
                started_non_empty: g.old_cap != 0,
                growths: Vec::new(),
            });
            self.chains.len() - 1
        });
        let new_cap = g.new_cap.unwrap_or(0);
        self.chains[chain].growths.push((g.site, new_cap, g.copied));
        self.waiting.insert(g.goroutine, chain);
        let part = self.per_site.entry(g.site).or_default();
        part.growths += 1;
        part.bytes_allocated = part.bytes_allocated.saturating_add(g.new_bytes);
        part.bytes_copied = part.bytes_copied.saturating_add(g.copied);
        *part.elem_types.entry(g.elem_type).or_default() += 1;
        let stack = part.stacks.entry(g.stack).or_default();
        stack.0 += 1;
        stack.1 = stack.1.saturating_add(g.copied);
        part.elem_size = part.elem_size.or(g.elem_size);
    }

    pub(super) fn grown(&mut self, goroutine: u64, new_ptr: u64, new_cap: u64) {
        if let Some(chain) = self.waiting.remove(&goroutine) {
            // The result is the truth where the entry derived the capacity.
            if let Some(last) = self.chains[chain].growths.last_mut() {
                last.1 = new_cap;
            }
            self.by_result.insert((new_ptr, new_cap), chain);
        }
    }

    pub(super) fn sites(self, recording: &Recording, duration_s: f64) -> Vec<SliceSite> {
        // A slice appended to at several sites is an instance of each; at each, its
        // growths there and its final capacity count.
        let mut instances: HashMap<SiteId, Vec<Instance>> = HashMap::new();
        for chain in &self.chains {
            let final_cap = chain.growths.last().map_or(0, |g| g.1);
            let mut sites: Vec<SiteId> = chain.growths.iter().map(|g| g.0).collect();
            sites.sort_unstable();
            sites.dedup();
            for site in sites {
                let (caps, copied) = chain
                    .growths
                    .iter()
                    .filter(|g| g.0 == site)
                    .map(|g| (g.1, g.2))
                    .unzip();
                instances.entry(site).or_default().push(Instance {
                    caps,
                    copied,
                    final_cap,
                    started_non_empty: chain.started_non_empty,
                });
            }
        }
        let mut sites: Vec<SliceSite> = self
            .per_site
            .iter()
            .map(|(&site, part)| {
                let chains = instances.remove(&site).unwrap_or_default();
                let growths_per = distribution(chains.iter().map(|c| c.caps.len() as u64));
                let final_cap = distribution(chains.iter().map(|c| c.final_cap));
                let mut elem_types: Vec<(&u32, &u64)> = part.elem_types.iter().collect();
                elem_types.sort_by(|a, b| b.1.cmp(a.1));
                let location = location(recording, site);
                let elem_types: Vec<String> = elem_types
                    .into_iter()
                    .map(|(&id, _)| recording.name(id).to_string())
                    .collect();
                let instance_caps: Vec<(&[u64], &[u64])> = chains
                    .iter()
                    .map(|c| (c.caps.as_slice(), c.copied.as_slice()))
                    .collect();
                let started_non_empty = chains.iter().filter(|c| c.started_non_empty).count();
                let facts = advice::SliceFacts {
                    location: location.as_ref(),
                    elem_type: elem_types.first().map(String::as_str),
                    growths: part.growths,
                    instances: &instance_caps,
                    started_non_empty: started_non_empty as u64,
                    growths_per_instance: growths_per,
                    final_cap,
                    bytes_copied_per_s: rate(part.bytes_copied, duration_s),
                    duration_s,
                };
                SliceSite {
                    advice: advice::for_slice(&facts),
                    location,
                    elem_types,
                    elem_size: part.elem_size,
                    growths: part.growths,
                    bytes_allocated: part.bytes_allocated,
                    bytes_copied: part.bytes_copied,
                    bytes_copied_per_s: rate(part.bytes_copied, duration_s),
                    instances: chains.len() as u64,
                    growths_per_instance: growths_per,
                    final_cap,
                    started_non_empty: started_non_empty as u64,
                    stacks: stacks_of(recording, &part.stacks),
                }
            })
            .collect();
        sites
            .sort_by(|a, b| most_growths_first((a.growths, &a.location), (b.growths, &b.location)));
        sites
    }
}
