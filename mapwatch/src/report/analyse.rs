//! Recording → [`Report`]: growths per site, the growth chains of slice instances, the
//! growths of each map, pauses and GC cycles; advice comes from `advice.rs`.
//!
//! A slice instance is a chain of growths: growslice's result (its RET, recorded as
//! `SliceGrown` on the same goroutine right after the entry) is the array the same
//! slice's next growth copies from, so growth n+1's (old pointer, old capacity) equals
//! growth n's (new pointer, new capacity). A chain starts at a growth from nil, or from
//! an array no recorded growth made (a make, a literal, or a growth before the capture).
//! Limit: an array freed and its address reused for a slice of the same capacity could
//! join a dead chain; records without results (no RET probe) make one-growth chains.
//! A map instance is its header address; a growth whose size is below the previous
//! one's at that address is a new map there (the old one was freed).
use std::collections::{BTreeMap, HashMap, VecDeque};

use super::{
    advice,
    model::{
        CaptureInfo, Distribution, Location, MapSite, Pause, Report, SCHEMA_VERSION, SliceSite,
        Stack, Summary, Timeline,
    },
};
use crate::{
    aggregate::pearson,
    record::{
        format::{Entry, SiteId},
        read::Recording,
    },
};

/// Timelines have at most this many buckets (of whole seconds, at least 1 s).
const MAX_BUCKETS: u64 = 120;

pub fn analyse(recording: &Recording) -> Report {
    let duration_ns = duration_ns(recording);
    let duration_s = duration_ns as f64 / 1e9;
    let per_s = |n: f64| {
        if duration_s > 0.0 {
            n / duration_s
        } else {
            0.0
        }
    };
    let bucket_s = (duration_ns / 1_000_000_000).div_ceil(MAX_BUCKETS).max(1);
    let buckets = (duration_ns.div_ceil(bucket_s * 1_000_000_000)).max(1) as usize;
    let bucket_of = |t: u64| ((t / (bucket_s * 1_000_000_000)) as usize).min(buckets - 1);
    let mut timeline = Timeline {
        bucket_s: bucket_s as f64,
        slice_growths: vec![0; buckets],
        map_growths: vec![0; buckets],
        slice_bytes_copied: vec![0; buckets],
        gc_cycles: vec![0; buckets],
    };

    let mut slices = SliceChains::default();
    let mut maps = MapInstances::default();
    let mut pauses = Vec::new();
    let mut cycles = Cycles::default();
    for event in &recording.events {
        match *event {
            Entry::SliceGrowth {
                t,
                goroutine,
                site,
                elem_type,
                elem_size,
                old_ptr,
                old_len,
                old_cap,
                new_cap,
                new_bytes,
                ref frames,
                ..
            } => {
                let copied = elem_size.map_or(0, |size| old_len.saturating_mul(size));
                let b = bucket_of(t);
                timeline.slice_growths[b] += 1;
                timeline.slice_bytes_copied[b] =
                    timeline.slice_bytes_copied[b].saturating_add(copied);
                cycles.growth_bytes = cycles.growth_bytes.saturating_add(new_bytes.unwrap_or(0));
                slices.growth(Growth {
                    goroutine,
                    site,
                    elem_type,
                    elem_size,
                    old_ptr,
                    old_cap,
                    new_cap,
                    new_bytes: new_bytes.unwrap_or(0),
                    copied,
                    stack: flatten(site, frames),
                });
            }
            Entry::SliceGrown {
                goroutine,
                new_ptr,
                new_cap,
                ..
            } => slices.grown(goroutine, new_ptr, new_cap),
            Entry::MapGrowth {
                t,
                site,
                kind,
                map,
                map_type,
                size,
                load_factor,
                overflow_buckets,
                slots_after,
                ref frames,
                ..
            } => {
                timeline.map_growths[bucket_of(t)] += 1;
                let frames = flatten(site, frames);
                maps.growth(MapGrowth {
                    site: user_frame(recording, &frames),
                    frames,
                    kind: recording.name(kind).to_string(),
                    map,
                    map_type,
                    size,
                    load_factor,
                    overflow_buckets,
                    capacity_after: slots_after.map(|slots| {
                        capacity_of(&recording.header.target.map_implementation, slots)
                    }),
                });
            }
            Entry::MakeMap {
                goroutine,
                site,
                hint,
                ..
            } => maps.make(goroutine, site, hint),
            Entry::MapMade { goroutine, map, .. } => maps.made(goroutine, map),
            Entry::StwPause {
                t,
                duration_ns,
                reason,
            } => {
                cycles.stw_ns = cycles.stw_ns.saturating_add(duration_ns);
                pauses.push(Pause {
                    t_s: t as f64 / 1e9,
                    duration_ms: duration_ns as f64 / 1e6,
                    reason: recording.name(reason).to_string(),
                });
            }
            Entry::GcCycle { t } => {
                timeline.gc_cycles[bucket_of(t)] += 1;
                cycles.end();
            }
            Entry::Name { .. } | Entry::Site { .. } | Entry::End(_) => {}
        }
    }

    let slice_sites = slices.sites(recording, duration_s);
    let map_sites = maps.sites(recording);
    let mut durations: Vec<f64> = pauses.iter().map(|p| p.duration_ms).collect();
    durations.sort_by(f64::total_cmp);
    let slice_growths = total(slice_sites.iter().map(|s| s.growths));
    let map_growths = total(map_sites.iter().map(|s| s.growths));
    let bytes_copied = total(slice_sites.iter().map(|s| s.bytes_copied));
    let summary = Summary {
        slice_growths,
        slice_growths_per_s: per_s(slice_growths as f64),
        slice_bytes_allocated: total(slice_sites.iter().map(|s| s.bytes_allocated)),
        slice_bytes_copied: bytes_copied,
        slice_bytes_copied_per_s: per_s(bytes_copied as f64),
        map_growths,
        map_growths_per_s: per_s(map_growths as f64),
        gc_cycles: cycles.count,
        stw_pauses: pauses.len() as u64,
        stw_p50_ms: quantile_f64(&durations, 0.50),
        stw_p99_ms: quantile_f64(&durations, 0.99),
        stw_max_ms: durations.last().copied().unwrap_or(0.0),
        stw_total_ms: durations.iter().sum(),
        growth_stw_correlation: (cycles.history.len() >= 3).then(|| pearson(&cycles.history)),
    };
    Report {
        schema_version: SCHEMA_VERSION,
        capture: capture_info(recording, duration_s),
        summary,
        slice_sites,
        map_sites,
        timeline,
        stw_pauses: pauses,
    }
}

/// The capture's length: the end record's, else the last event's time.
fn duration_ns(recording: &Recording) -> u64 {
    if let Some(summary) = &recording.summary {
        return summary.duration_ns;
    }
    recording
        .events
        .iter()
        .filter_map(|e| match *e {
            Entry::SliceGrowth { t, .. }
            | Entry::SliceGrown { t, .. }
            | Entry::MapGrowth { t, .. }
            | Entry::MakeMap { t, .. }
            | Entry::MapMade { t, .. }
            | Entry::StwPause { t, .. }
            | Entry::GcCycle { t } => Some(t),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

fn capture_info(recording: &Recording, duration_s: f64) -> CaptureInfo {
    let header = &recording.header;
    let summary = recording.summary.clone().unwrap_or_default();
    CaptureInfo {
        binary: header.target.binary.clone(),
        build_id: header.target.build_id.clone(),
        go_version: header.target.go_version.clone(),
        map_implementation: header.target.map_implementation.clone(),
        pid: header.target.pid,
        command: header.target.command.clone(),
        start_unix_s: header.start_unix_s,
        duration_s,
        stopped_because: recording
            .summary
            .as_ref()
            .map(|s| s.stopped_because.clone()),
        complete: recording.damage.is_none()
            && summary.events_lost == 0
            && summary.observations_dropped == 0,
        damage: recording.damage.clone(),
        events_lost: summary.events_lost,
        observations_dropped: summary.observations_dropped,
    }
}

/// Entries a map holds before its next growth, from its slots: a classic bucket holds
/// 8 and grows past 6.5 per bucket on average (loadFactorNum/Den, src/runtime/map.go);
/// a Swiss table grows past 7/8 full (maxAvgGroupLoad, internal/runtime/maps/table.go).
fn capacity_of(map_implementation: &str, slots: u64) -> u64 {
    if map_implementation == "swiss" {
        slots.saturating_mul(7) / 8
    } else {
        slots.saturating_mul(13) / 16
    }
}

/// GC cycles: growth bytes and STW time per cycle, for their correlation.
#[derive(Default)]
struct Cycles {
    count: u64,
    growth_bytes: u64,
    stw_ns: u64,
    history: VecDeque<(f64, f64)>,
}

impl Cycles {
    fn end(&mut self) {
        self.count += 1;
        self.history
            .push_back((self.growth_bytes as f64, self.stw_ns as f64 / 1e9));
        self.growth_bytes = 0;
        self.stw_ns = 0;
    }
}

/// A frame of a stack, and whether it is inlined into the next one (both at one
/// return address).
type Frame = (SiteId, bool);

/// The recorded return addresses' frames in one list, innermost first; the site alone
/// when none were recorded.
fn flatten(site: SiteId, addresses: &[Vec<SiteId>]) -> Vec<Frame> {
    let mut frames: Vec<Frame> = Vec::new();
    for address in addresses {
        for (i, &id) in address.iter().enumerate() {
            frames.push((id, i + 1 < address.len()));
        }
    }
    if frames.is_empty() {
        frames.push((site, false));
    }
    frames
}

/// The first frame outside the Go runtime: the line whose insert grew a map. Without
/// recorded callers (or if all are the runtime's), the innermost frame.
fn user_frame(recording: &Recording, frames: &[Frame]) -> SiteId {
    frames
        .iter()
        .map(|&(id, _)| id)
        .find(|&id| {
            recording
                .site(id)
                .is_some_and(|s| !advice::is_runtime(recording.name(s.function)))
        })
        .unwrap_or(frames[0].0)
}

/// Growths and bytes per distinct stack.
type Stacks = HashMap<Vec<Frame>, (u64, u64)>;

fn stacks_of(recording: &Recording, stacks: &Stacks) -> Vec<Stack> {
    let mut out: Vec<Stack> = stacks
        .iter()
        .filter(|(frames, _)| frames.len() > 1)
        .map(|(frames, &(growths, bytes))| Stack {
            frames: frames
                .iter()
                .map(|&(id, _)| {
                    location(recording, id).unwrap_or_else(|| Location {
                        function: "?".to_string(),
                        file: "?".to_string(),
                        line: 0,
                    })
                })
                .collect(),
            inlined: frames.iter().map(|&(_, inlined)| inlined).collect(),
            growths,
            bytes,
        })
        .collect();
    out.sort_by(|a, b| {
        b.growths
            .cmp(&a.growths)
            .then_with(|| a.frames.cmp(&b.frames))
    });
    out
}

struct Growth {
    stack: Vec<Frame>,
    goroutine: u64,
    site: SiteId,
    elem_type: u32,
    elem_size: Option<u64>,
    old_ptr: u64,
    old_cap: u64,
    new_cap: Option<u64>,
    new_bytes: u64,
    copied: u64,
}

/// One slice instance: its growths (site, new capacity, bytes copied), in order.
struct Chain {
    started_non_empty: bool,
    growths: Vec<(SiteId, u64, u64)>,
}

/// A slice instance as one site saw it.
struct Instance {
    caps: Vec<u64>,
    copied: Vec<u64>,
    final_cap: u64,
    started_non_empty: bool,
}

#[derive(Default)]
struct SitePart {
    growths: u64,
    bytes_allocated: u64,
    bytes_copied: u64,
    elem_types: BTreeMap<u32, u64>,
    elem_size: Option<u64>,
    stacks: Stacks,
}

#[derive(Default)]
struct SliceChains {
    chains: Vec<Chain>,
    /// By goroutine: the chain of its growth waiting for growslice's result.
    waiting: HashMap<u64, usize>,
    /// By (array, capacity) a growth returned: the chain it continues.
    by_result: HashMap<(u64, u64), usize>,
    per_site: HashMap<SiteId, SitePart>,
}

impl SliceChains {
    fn growth(&mut self, g: Growth) {
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

    fn grown(&mut self, goroutine: u64, new_ptr: u64, new_cap: u64) {
        if let Some(chain) = self.waiting.remove(&goroutine) {
            // The result is the truth where the entry derived the capacity.
            if let Some(last) = self.chains[chain].growths.last_mut() {
                last.1 = new_cap;
            }
            self.by_result.insert((new_ptr, new_cap), chain);
        }
    }

    fn sites(self, recording: &Recording, duration_s: f64) -> Vec<SliceSite> {
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

struct MapGrowth {
    site: SiteId,
    frames: Vec<Frame>,
    kind: String,
    map: u64,
    map_type: u32,
    size: Option<u64>,
    load_factor: Option<f64>,
    overflow_buckets: Option<u64>,
    capacity_after: Option<u64>,
}

/// One map's growths.
#[derive(Default)]
struct MapInstance {
    site: SiteId,
    map_type: u32,
    growths: u64,
    last_size: u64,
    capacity: u64,
    /// (make site, hint), when its make was seen.
    made: Option<(SiteId, u64)>,
}

#[derive(Default)]
struct MapSitePart {
    kinds: BTreeMap<String, u64>,
    growths: u64,
    load_factors: (f64, u64),
    overflow: (f64, u64),
    stacks: Stacks,
}

#[derive(Default)]
struct MapInstances {
    maps: Vec<MapInstance>,
    live: HashMap<u64, usize>,
    per_site: HashMap<SiteId, MapSitePart>,
    /// By goroutine: a make waiting for its result (site, hint).
    making: HashMap<u64, (SiteId, u64)>,
    /// By map address: the make that returned it, until the map first grows.
    made: HashMap<u64, (SiteId, u64)>,
}

impl MapInstances {
    fn make(&mut self, goroutine: u64, site: SiteId, hint: u64) {
        self.making.insert(goroutine, (site, hint));
    }

    fn made(&mut self, goroutine: u64, map: u64) {
        if let Some(make) = self.making.remove(&goroutine) {
            self.made.insert(map, make);
            // A map made at an address retires the one that was there.
            self.live.remove(&map);
        }
    }

    fn growth(&mut self, g: MapGrowth) {
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

    fn sites(self, recording: &Recording) -> Vec<MapSite> {
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

/// Sites by growths, most first; by location among equals, so reports are stable.
fn most_growths_first(
    (a_growths, a_at): (u64, &Option<Location>),
    (b_growths, b_at): (u64, &Option<Location>),
) -> std::cmp::Ordering {
    b_growths.cmp(&a_growths).then_with(|| a_at.cmp(b_at))
}

fn location(recording: &Recording, site: SiteId) -> Option<Location> {
    recording.site(site).map(|s| Location {
        function: recording.name(s.function).to_string(),
        file: recording.name(s.file).to_string(),
        line: s.line,
    })
}

/// A sum of counts read from a file: hostile ones saturate rather than overflow.
fn total(counts: impl Iterator<Item = u64>) -> u64 {
    counts.fold(0, u64::saturating_add)
}

fn rate(n: u64, duration_s: f64) -> f64 {
    if duration_s > 0.0 {
        n as f64 / duration_s
    } else {
        0.0
    }
}

/// Nearest-rank quantiles of the values.
pub fn distribution(values: impl Iterator<Item = u64>) -> Distribution {
    let mut values: Vec<u64> = values.collect();
    if values.is_empty() {
        return Distribution::default();
    }
    values.sort_unstable();
    let n = values.len();
    let rank = |q: f64| values[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
    Distribution {
        count: n as u64,
        p50: rank(0.50),
        p95: rank(0.95),
        max: values[n - 1],
        mean: values.iter().map(|&v| v as f64).sum::<f64>() / n as f64,
    }
}

fn quantile_f64(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let n = sorted.len();
    sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1]
}
