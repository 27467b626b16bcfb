//! The ring-buffer reader task: drains records in batches and hands them to the
//! aggregator through a bounded channel.
//!
//! It also tells the aggregator that a process is gone ([`Forget`]), after draining:
//! the records a process's probes wrote before they were detached are still in the
//! ring, and reach the aggregator ahead of the news, while the process's slots are
//! still registered to count them. Sent by whoever detached, the news overtook them:
//! a process that exited or exec'd within a drain interval of its last records lost
//! them as orphans (tests/placement.rs, tests/churn.rs).
//!
//! The BPF side wakes us only when a backlog builds up (batched wake-ups), so the
//! reader also drains on a short timer. When the aggregator falls behind, the bounded
//! channel makes the reader wait, the ring fills, and the kernel counts what it cannot
//! store in EVENTS_LOST: back-pressure ends in a counted loss, never a silent one.
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use mapwatch_common::{Event, MAX_STACK_DEPTH, StackedEvent};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot, watch},
};
use tracing::warn;

use super::BpfLogger;
use crate::aggregate::{Input, RecordStacks};

/// Upper bound on records per batch, so one busy burst cannot hold the channel long.
const MAX_BATCH: usize = 8192;

/// A process whose probes are all detached: once the ring is drained, the aggregator
/// is told ([`Input::ProcessGone`]), then `done` answers — the caller may register the
/// pid again (an exec'd process) only after that.
pub struct Forget {
    pub pid: u32,
    pub done: oneshot::Sender<()>,
}

pub async fn run(
    ring: RingBuf<MapData>,
    to_aggregator: mpsc::Sender<Input>,
    drain_interval: Duration,
    mut stop: watch::Receiver<bool>,
    mut forget: mpsc::Receiver<Forget>,
) -> std::io::Result<()> {
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns the RingBuf,
    // and always reports that same fd.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let mut ticker = tokio::time::interval(drain_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut gone = None;
        let stopping = tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                guard.clear_ready();
                false
            }
            _ = ticker.tick() => false,
            _ = stop.changed() => true,
            Some(request) = forget.recv() => {
                gone = Some(request);
                false
            }
        };
        // Drain until empty: after a stop the probes are already detached, so this
        // final pass collects every record they wrote.
        loop {
            let (batch, stacks) = drain(ring.get_mut());
            let full = batch.len() == MAX_BATCH;
            let input = match stacks {
                None => Input::Events(batch),
                Some(stacks) => Input::StackedEvents(batch, stacks),
            };
            if !input_is_empty(&input) && to_aggregator.send(input).await.is_err() {
                return Ok(());
            }
            if !full {
                break;
            }
        }
        if let Some(Forget { pid, done }) = gone {
            if to_aggregator.send(Input::ProcessGone(pid)).await.is_err() {
                return Ok(());
            }
            let _ = done.send(());
        }
        if stopping {
            return Ok(());
        }
    }
}

fn input_is_empty(input: &Input) -> bool {
    match input {
        Input::Events(batch) | Input::StackedEvents(batch, _) => batch.is_empty(),
        _ => false,
    }
}

/// A batch of records in ring order and, if any record carried a stack, the stacks by
/// position (records of both kinds stay in one batch: an entry and its RET pair by
/// order).
fn drain(ring: &mut RingBuf<MapData>) -> (Vec<Event>, Option<RecordStacks>) {
    let mut batch = Vec::new();
    let mut stacks: Option<RecordStacks> = None;
    while batch.len() < MAX_BATCH {
        let Some(item) = ring.next() else { break };
        // SAFETY (both reads): the record is exactly one Event or StackedEvent written
        // by the BPF program (#[repr(C)], all fields integers), told apart by size; the
        // ring gives no alignment guarantee beyond 8, so read unaligned to be safe.
        if item.len() == size_of::<Event>() {
            batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
            if let Some(stacks) = &mut stacks {
                stacks.push(None);
            }
        } else if item.len() == size_of::<StackedEvent>() {
            let stacked = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<StackedEvent>()) };
            let depth = (stacked.depth as usize).min(MAX_STACK_DEPTH);
            let stacks = stacks.get_or_insert_with(|| vec![None; batch.len()]);
            stacks.push(Some(stacked.frames[..depth].into()));
            batch.push(stacked.event);
        } else {
            warn!(
                len = item.len(),
                "ring buffer record of unexpected size; BPF object and userspace disagree"
            );
        }
    }
    (batch, stacks)
}

/// Forwards the BPF programs' log records (cold paths only) to `tracing`.
pub async fn forward_logs(logger: BpfLogger) -> std::io::Result<()> {
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd owns it.
    let mut logger =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
    loop {
        let mut guard = logger.readable_mut().await?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
