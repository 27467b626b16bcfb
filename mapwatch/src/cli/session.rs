//! How `attach` and `run` stop: the same order for both, so that nothing recorded is
//! lost and nothing is left attached.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{sync::watch, task::JoinHandle};

use crate::{attach::Probes, budget::ProcessReport, metrics::Metrics};

/// The tasks of a profiling session. Other senders to the aggregator must be dropped
/// before [`Session::stop`], or it waits for them.
pub struct Session {
    pub stop_budget: watch::Sender<bool>,
    pub budget_task: JoinHandle<Vec<ProcessReport>>,
    pub probes: Arc<Mutex<Probes>>,
    pub stop_reader: watch::Sender<bool>,
    pub reader: JoinHandle<std::io::Result<()>>,
    pub aggregator: JoinHandle<()>,
    pub metrics: Arc<Metrics>,
}

pub struct Stopped {
    /// The budget's last word on each process.
    pub reports: Vec<ProcessReport>,
    pub probes_detached: usize,
    pub detaching: Duration,
    pub draining: Duration,
}

impl Stopped {
    /// "detached N probes in X ms, drained in Y ms".
    pub fn timings(&self) -> String {
        format!(
            "detached {} probes in {} ms, drained in {} ms",
            self.probes_detached,
            self.detaching.as_millis(),
            self.draining.as_millis()
        )
    }
}

impl Session {
    pub async fn stop(self) -> anyhow::Result<Stopped> {
        let started = Instant::now();
        // The budget stops first: no window opens while everything is detached, and the
        // records of open cycles are weighed.
        let _ = self.stop_budget.send(true);
        let reports = self.budget_task.await.context("budget task")?;
        // Off the async workers: closing links blocks (see Probes::detach).
        let probes = Arc::clone(&self.probes);
        let probes_detached = tokio::task::spawn_blocking(move || {
            let mut probes = probes.lock().expect("probes");
            let count = probes.attached().count();
            probes.detach_all();
            count
        })
        .await
        .context("detaching")?;
        let detaching = started.elapsed();
        self.metrics.attached_processes.set(0);
        // The reader drains what the ring still holds, then the aggregator applies it.
        let _ = self.stop_reader.send(true);
        self.reader
            .await
            .context("reader task")?
            .context("reading the ring buffer")?;
        self.aggregator.await.context("aggregator task")?;
        Ok(Stopped {
            reports,
            probes_detached,
            detaching,
            draining: started.elapsed() - detaching,
        })
    }
}
