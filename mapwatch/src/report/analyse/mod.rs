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
mod maps;
mod slices;

use std::collections::{HashMap, VecDeque};

use super::{
    advice,
    model::{
        CaptureInfo, Distribution, Location, Pause, Report, SCHEMA_VERSION, Stack, Summary,
        Timeline,
    },
};
use crate::{
    aggregate::pearson,
    record::{
        format::{Entry, SiteId},
        read::Recording,
    },
};

use maps::{MapGrowth, MapInstances};
use slices::{Growth, SliceChains};

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
