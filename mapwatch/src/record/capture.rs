//! The capture task: the aggregator's decoded events in, named and written as blocks of
//! a record file. It names addresses with its own symbolizer so that the aggregator's
//! path does no extra lookups.
use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use foldhash::{HashMap, HashMapExt as _};
use tokio::sync::{mpsc, watch};

use super::{
    format::{Entry, NameId, SiteId},
    write::{RecordWriter, WriteError},
};
use crate::{
    aggregate::observe::{Observation, Observed},
    symbolize::Symbolizer,
};

/// A block is written at least this often, so a killed capture loses at most this much.
const BLOCK_INTERVAL: Duration = Duration::from_secs(1);
/// …and when this many entries wait.
const BLOCK_ENTRIES: usize = 65536;

/// What the capture has written so far, for a progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub events: AtomicU64,
    pub slice_growths: AtomicU64,
    pub map_growths: AtomicU64,
    pub bytes_written: AtomicU64,
}

impl Progress {
    fn count(&self, what: &Observation) {
        self.events.fetch_add(1, Ordering::Relaxed);
        let counter = match what {
            Observation::SliceGrowth { .. } => &self.slice_growths,
            Observation::MapGrowth { .. } => &self.map_growths,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct Capture<W: Write> {
    writer: RecordWriter<W>,
    symbolizer: Symbolizer,
    pid: u32,
    start_ns: u64,
    sites: HashMap<u64, Vec<SiteId>>,
    types: HashMap<u64, NameId>,
    progress: Arc<Progress>,
}

impl<W: Write> Capture<W> {
    /// A capture of `pid`'s events from `start_ns` (CLOCK_MONOTONIC) on.
    pub fn new(
        writer: RecordWriter<W>,
        symbolizer: Symbolizer,
        pid: u32,
        start_ns: u64,
        progress: Arc<Progress>,
    ) -> Capture<W> {
        Capture {
            writer,
            symbolizer,
            pid,
            start_ns,
            sites: HashMap::new(),
            types: HashMap::new(),
            progress,
        }
    }

    /// Writes batches until the sender is gone or `stop` turns true, then what is left;
    /// returns the writer for [`RecordWriter::finish`].
    pub async fn run(
        mut self,
        mut batches: mpsc::Receiver<Vec<Observed>>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<RecordWriter<W>, WriteError> {
        let mut tick = tokio::time::interval(BLOCK_INTERVAL);
        loop {
            tokio::select! {
                batch = batches.recv() => match batch {
                    Some(batch) => {
                        self.add(batch);
                        if self.writer.pending() >= BLOCK_ENTRIES {
                            self.write_block()?;
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => self.write_block()?,
                _ = stop.changed() => {
                    // What was sent before the stop is all there is.
                    while let Ok(batch) = batches.try_recv() {
                        self.add(batch);
                    }
                    break;
                }
            }
        }
        self.write_block()?;
        Ok(self.writer)
    }

    fn write_block(&mut self) -> Result<(), WriteError> {
        self.writer.write_block()?;
        self.progress
            .bytes_written
            .store(self.writer.bytes(), Ordering::Relaxed);
        Ok(())
    }

    fn add(&mut self, batch: Vec<Observed>) {
        for observed in batch {
            if observed.pid != self.pid {
                continue;
            }
            self.progress.count(&observed.what);
            let entry = self.entry(observed);
            self.writer.push(entry);
        }
    }

    /// The source frames of a return address, innermost first (inlined calls give
    /// several); empty when it has no name.
    fn frames(&mut self, pc: u64) -> Vec<SiteId> {
        if let Some(ids) = self.sites.get(&pc) {
            return ids.clone();
        }
        let ids: Vec<SiteId> = self
            .symbolizer
            .call_frames(pc)
            .iter()
            .map(|site| self.writer.site(&site.function, &site.file, site.line))
            .collect();
        self.sites.insert(pc, ids.clone());
        ids
    }

    fn site(&mut self, pc: u64) -> SiteId {
        self.frames(pc).first().copied().unwrap_or(0)
    }

    fn type_name(&mut self, address: u64) -> NameId {
        if let Some(&id) = self.types.get(&address) {
            return id;
        }
        let id = self.writer.name(&self.symbolizer.type_name(address));
        self.types.insert(address, id);
        id
    }

    /// The caller's frames, then each recorded caller's.
    fn call_stack(&mut self, caller_pc: u64, callers: Option<Box<[u64]>>) -> Vec<Vec<SiteId>> {
        std::iter::once(caller_pc)
            .chain(callers.iter().flat_map(|c| c.iter().copied()))
            .map(|pc| self.frames(pc))
            .collect()
    }

    fn entry(&mut self, observed: Observed) -> Entry {
        let t = observed.ktime_ns.saturating_sub(self.start_ns);
        let callers = observed.stack;
        match observed.what {
            Observation::SliceGrowth {
                goroutine,
                caller_pc,
                elem_type,
                elem_size,
                old_ptr,
                old_len,
                old_cap,
                new_len,
                new_cap,
                new_bytes,
            } => Entry::SliceGrowth {
                t,
                goroutine,
                site: self.site(caller_pc),
                frames: self.call_stack(caller_pc, callers),
                elem_type: self.type_name(elem_type),
                elem_size,
                old_ptr,
                old_len,
                old_cap,
                new_len,
                new_cap,
                new_bytes,
            },
            Observation::SliceGrown {
                goroutine,
                new_ptr,
                new_cap,
            } => Entry::SliceGrown {
                t,
                goroutine,
                new_ptr,
                new_cap,
            },
            Observation::MapGrowth {
                kind,
                goroutine,
                caller_pc,
                map,
                map_type,
                size,
                load_factor,
                overflow_buckets,
                slots_after,
            } => Entry::MapGrowth {
                t,
                goroutine,
                site: self.site(caller_pc),
                frames: self.call_stack(caller_pc, callers),
                kind: self.writer.name(kind),
                map,
                map_type: self.type_name(map_type),
                size,
                load_factor,
                overflow_buckets,
                slots_after,
            },
            Observation::MakeMap {
                goroutine,
                caller_pc,
                map_type,
                hint,
            } => Entry::MakeMap {
                t,
                goroutine,
                site: self.site(caller_pc),
                map_type: self.type_name(map_type),
                hint,
            },
            Observation::StwPause {
                started_ns,
                duration_ns,
                reason,
            } => Entry::StwPause {
                t: started_ns.saturating_sub(self.start_ns),
                duration_ns,
                reason: self.writer.name(reason),
            },
            Observation::MapMade { goroutine, map } => Entry::MapMade { t, goroutine, map },
            Observation::GcCycle => Entry::GcCycle { t },
        }
    }
}
