//! Map instances: by header address, tied to their make site and hint when makemap's
//! result was recorded; per inserting site the distributions the advice reads.
use std::collections::{BTreeMap, HashMap};

use super::{Frame, Stacks, distribution, location, most_growths_first, stacks_of};
use crate::{
    record::{format::SiteId, read::Recording},
    report::{advice, model::MapSite},
};

pub(super) struct MapGrowth {
    pub(super) site: SiteId,
    pub(super) frames: Vec<Frame>,
    pub(super) kind: String,
    pub(super) map: u64,
    pub(super) map_type: u32,
    pub(super) size: Option<u64>,
    pub(super) load_factor: Option<f64>,
    pub(super) overflow_buckets: Option<u64>,
    pub(super) capacity_after: Option<u64>,
}

/// One map's growths.
#[derive(Default)]
pub(super) struct MapInstance {
    site: SiteId,
    map_type: u32,
    growths: u64,
    last_size: u64,
    capacity: u64,
    /// (make site, hint), when its make was seen.
    made: Option<(SiteId, u64)>,
}

#[derive(Default)]
pub(super) struct MapSitePart {
    kinds: BTreeMap<String, u64>,
    growths: u64,
    load_factors: (f64, u64),
    overflow: (f64, u64),
    stacks: Stacks,
}

#[derive(Default)]
pub(super) struct MapInstances {
    maps: Vec<MapInstance>,
    live: HashMap<u64, usize>,
    per_site: HashMap<SiteId, MapSitePart>,
    /// By goroutine: a make waiting for its result (site, hint).
    making: HashMap<u64, (SiteId, u64)>,
    /// By map address: the make that returned it, until the map first grows.
    made: HashMap<u64, (SiteId, u64)>,
}

impl MapInstances {
    pub(super) fn make(&mut self, goroutine: u64, site: SiteId, hint: u64) {
        self.making.insert(goroutine, (site, hint));
    }

    pub(super) fn made(&mut self, goroutine: u64, map: u64) {
        if let Some(make) = self.making.remove(&goroutine) {
            self.made.insert(map, make);
            // A map made at an address retires the one that was there.
            self.live.remove(&map);
        }
    }

    pub(super) fn growth(&mut self, g: MapGrowth) {
        let size = g.size.unwrap_or(0);
        let existing = self
            .live
            .get(&g.map)
            .copied()
            .filter(|&i| size >= self.maps[i].last_size);
        let instance = existing.unwrap_or_else(|| {
            self.maps.push(MapInstance {
                site: g.site,
                map_type: g.map_type,
                made: self.made.remove(&g.map),
                ..Default::default()
            });
            self.live.insert(g.map, self.maps.len() - 1);
            self.maps.len() - 1
        });
        let map = &mut self.maps[instance];
        map.growths += 1;
        map.last_size = size;
        map.capacity = g.capacity_after.unwrap_or(map.capacity);
        let part = self.per_site.entry(g.site).or_default();
        part.growths += 1;
        *part.kinds.entry(g.kind).or_default() += 1;
        part.stacks.entry(g.frames).or_default().0 += 1;
        if let Some(lf) = g.load_factor {
            part.load_factors.0 += lf;
            part.load_factors.1 += 1;
        }
        if let Some(o) = g.overflow_buckets {
            part.overflow.0 += o as f64;
            part.overflow.1 += 1;
        }
    }

    pub(super) fn sites(self, recording: &Recording) -> Vec<MapSite> {
        let mut instances: HashMap<SiteId, Vec<&MapInstance>> = HashMap::new();
        for map in &self.maps {
            instances.entry(map.site).or_default().push(map);
        }
        let mean = |(sum, n): (f64, u64)| (n > 0).then(|| sum / n as f64);
        let mut sites: Vec<MapSite> = self
            .per_site
            .into_iter()
            .map(|(site, part)| {
                let maps = instances.remove(&site).unwrap_or_default();
                let location = location(recording, site);
                // Map types seen here, most maps first (key and value types for people).
                let mut types: BTreeMap<u32, u64> = BTreeMap::new();
                for m in &maps {
                    *types.entry(m.map_type).or_default() += 1;
                }
                let mut types: Vec<(u32, u64)> = types.into_iter().collect();
                types.sort_by_key(|&(_, maps)| std::cmp::Reverse(maps));
                let map_types: Vec<String> = types
                    .iter()
                    .map(|&(id, _)| recording.name(id).to_string())
                    .collect();
                let map_type = map_types.first().cloned();
                let growths_per_map = distribution(maps.iter().map(|m| m.growths));
                let capacity_reached = distribution(maps.iter().map(|m| m.capacity));
                let made: Vec<(SiteId, u64)> = maps.iter().filter_map(|m| m.made).collect();
                let hint = (!made.is_empty()).then(|| distribution(made.iter().map(|m| m.1)));
                let mut make_sites: HashMap<SiteId, u64> = HashMap::new();
                for (site, _) in &made {
                    *make_sites.entry(*site).or_default() += 1;
                }
                let made_at = make_sites
                    .into_iter()
                    .max_by_key(|&(site, n)| (n, std::cmp::Reverse(site)))
                    .and_then(|(site, _)| self::location(recording, site));
                let facts = advice::MapFacts {
                    location: location.as_ref(),
                    made_at: made_at.as_ref(),
                    max_hint: hint.map(|h| h.max),
                    map_type: map_type.as_deref(),
                    growths: part.growths,
                    growths_per_map,
                    capacity_reached,
                };
                MapSite {
                    advice: advice::for_map(&facts),
                    location,
                    map_types,
                    kinds: part.kinds,
                    growths: part.growths,
                    maps: maps.len() as u64,
                    growths_per_map,
                    size_at_last_growth: distribution(maps.iter().map(|m| m.last_size)),
                    capacity_reached,
                    hint,
                    made_at,
                    mean_load_factor_at_growth: mean(part.load_factors),
                    mean_overflow_buckets_at_growth: mean(part.overflow),
                    stacks: stacks_of(recording, &part.stacks),
                }
            })
            .collect();
        sites
            .sort_by(|a, b| most_growths_first((a.growths, &a.location), (b.growths, &b.location)));
        sites
    }
}
