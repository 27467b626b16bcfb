//! The kernel's per-slot hit and lost-record counters, and the per-probe totals that
//! outlive detached slots.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use tracing::warn;

/// Kernel-side per-slot counters, read at scrape time (never copied on a timer), and
/// the totals of probes already detached, so that per-probe totals never go backwards
/// when a process exits and its slots are reused.
pub struct KernelCounters {
    hits: PerCpuArray<MapData, u64>,
    lost: PerCpuArray<MapData, u64>,
    paused: PerCpuArray<MapData, u64>,
    /// Attached slots and the probe each belongs to.
    live: BTreeMap<u32, &'static str>,
    retired: BTreeMap<&'static str, SlotCounts>,
    cpus: usize,
}

/// Totals of one slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotCounts {
    pub hits: u64,
    pub lost: u64,
    /// Traps while the overhead budget had the slot paused (not in `hits`).
    pub paused: u64,
}

impl std::ops::AddAssign for SlotCounts {
    fn add_assign(&mut self, other: SlotCounts) {
        self.hits += other.hits;
        self.lost += other.lost;
        self.paused += other.paused;
    }
}

impl KernelCounters {
    pub(super) fn new(
        hits: PerCpuArray<MapData, u64>,
        lost: PerCpuArray<MapData, u64>,
        paused: PerCpuArray<MapData, u64>,
    ) -> Result<KernelCounters, aya::maps::MapError> {
        Ok(KernelCounters {
            hits,
            lost,
            paused,
            live: BTreeMap::new(),
            retired: BTreeMap::new(),
            cpus: aya::util::nr_cpus().map_err(|(_, e)| aya::maps::MapError::IoError(e))?,
        })
    }

    pub fn read(&self, slot: u32) -> Result<SlotCounts, aya::maps::MapError> {
        let sum = |map: &PerCpuArray<MapData, u64>| -> Result<u64, aya::maps::MapError> {
            Ok(map.get(&slot, 0)?.iter().sum())
        };
        Ok(SlotCounts {
            hits: sum(&self.hits)?,
            lost: sum(&self.lost)?,
            paused: sum(&self.paused)?,
        })
    }

    /// Hits and lost records per probe name, over everything ever attached.
    pub fn totals(&self) -> BTreeMap<&'static str, SlotCounts> {
        let mut totals = self.retired.clone();
        for (&slot, &probe) in &self.live {
            match self.read(slot) {
                Ok(counts) => {
                    let total = totals.entry(probe).or_default();
                    *total += counts;
                }
                Err(e) => warn!(slot, "reading kernel counters: {e}"),
            }
        }
        totals
    }

    /// Starts counting `slot` for `probe` from zero (a reused slot keeps its old counts
    /// in the kernel until reset).
    pub(super) fn track(
        &mut self,
        slot: u32,
        probe: &'static str,
    ) -> Result<(), aya::maps::MapError> {
        let zeros = || PerCpuValues::try_from(vec![0u64; self.cpus]);
        for map in [&mut self.hits, &mut self.lost, &mut self.paused] {
            map.set(slot, zeros().map_err(aya::maps::MapError::IoError)?, 0)?;
        }
        self.live.insert(slot, probe);
        Ok(())
    }

    /// Moves a detached slot's final counts into the per-probe totals.
    pub(super) fn retire(&mut self, slot: u32) {
        let Some(probe) = self.live.remove(&slot) else {
            return;
        };
        match self.read(slot) {
            Ok(counts) => {
                let total = self.retired.entry(probe).or_default();
                *total += counts;
            }
            Err(e) => warn!(slot, "reading kernel counters of a detached probe: {e}"),
        }
    }
}

/// Copies the kernel's per-probe counts into the registry right before each scrape.
pub fn scrape_hook(counters: Arc<Mutex<KernelCounters>>) -> crate::metrics::http::ScrapeHook {
    Arc::new(move |metrics: &crate::metrics::Metrics| {
        let totals = counters.lock().expect("kernel counters").totals();
        for (probe, counts) in totals {
            crate::metrics::Metrics::sync_counter(&metrics.probe_hits_total, &[probe], counts.hits);
            crate::metrics::Metrics::sync_counter(
                &metrics.events_lost_total,
                &[probe],
                counts.lost,
            );
        }
    })
}
