//! What a capture (`mapwatch record`) keeps of each record: the aggregator's decoded
//! view — capacities derived, pauses paired, growsliceBuf's outer append site found —
//! with addresses left raw, for the recorder to name with its own symbolizer off the
//! aggregator's path. Sent in batches, one per batch of records; a batch the recorder
//! cannot take in time is counted, never waited for (the aggregator also feeds the
//! metrics and the budget).
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::mpsc;

/// One decoded event of one process, on CLOCK_MONOTONIC.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub pid: u32,
    pub ktime_ns: u64,
    pub what: Observation,
    /// Return addresses beyond the caller's, innermost first (slots with a stack depth).
    pub stack: Option<Box<[u64]>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// growslice at entry.
    SliceGrowth {
        goroutine: u64,
        /// The append site's return address (growsliceBuf's caller in Go 1.26+).
        caller_pc: u64,
        elem_type: u64,
        /// None when the element type's layout could not be read.
        elem_size: Option<u64>,
        old_ptr: u64,
        old_len: u64,
        old_cap: u64,
        new_len: u64,
        new_cap: Option<u64>,
        new_bytes: Option<u64>,
    },
    /// growslice's RET (exact mode): the new backing array, which the same slice's next
    /// growth copies from.
    SliceGrown {
        goroutine: u64,
        new_ptr: u64,
        new_cap: u64,
    },
    /// A map grows (classic hashGrow or a Swiss table grow/split), at entry.
    MapGrowth {
        kind: &'static str,
        goroutine: u64,
        caller_pc: u64,
        map: u64,
        /// The map's type descriptor (its name says key and value types).
        map_type: u64,
        /// Entries in the map (classic `count`, Swiss `used`); None if unreadable.
        size: Option<u64>,
        load_factor: Option<f64>,
        /// Classic maps: overflow buckets at growth.
        overflow_buckets: Option<u64>,
        /// Slots after the growth, where known.
        slots_after: Option<u64>,
    },
    /// makemap / makemap_small at entry.
    MakeMap {
        goroutine: u64,
        caller_pc: u64,
        map_type: u64,
        hint: u64,
    },
    /// makemap's RET (exact mode): the map the make on this goroutine returned.
    MapMade { goroutine: u64, map: u64 },
    /// A stop-the-world pause, from its start to the world restarting.
    StwPause {
        started_ns: u64,
        duration_ns: u64,
        reason: &'static str,
    },
    /// gcMarkTermination: a GC cycle ends.
    GcCycle,
}

/// The aggregator's end of a capture's channel.
#[derive(Clone)]
pub struct Observer {
    to: mpsc::Sender<Vec<Observed>>,
    dropped: Arc<AtomicU64>,
}

impl Observer {
    /// An observer and the receiver of its batches; up to `batches` wait unread.
    pub fn channel(batches: usize) -> (Observer, mpsc::Receiver<Vec<Observed>>) {
        let (to, from) = mpsc::channel(batches);
        (
            Observer {
                to,
                dropped: Arc::default(),
            },
            from,
        )
    }

    pub fn send(&self, batch: Vec<Observed>) {
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.to.try_send(batch) {
            let lost = match e {
                mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => {
                    b.len()
                }
            };
            self.dropped.fetch_add(lost as u64, Ordering::Relaxed);
        }
    }

    /// Observations the recorder did not take in time (or after it stopped).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
