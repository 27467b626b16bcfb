//! The budget's I/O: one task owns the [`Controller`]. Every [`CONTROL_INTERVAL`] it
//! reads the kernel's per-slot hit counters; it runs the attaches and detaches the
//! controller asks for on the blocking pool (a detach blocks ~100 ms: the link is taken
//! out under the `Probes` lock and closed after it), tells the aggregator how to weigh
//! the records of duty-cycled slots, and sets the two gauges.
use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::{Action, Controller, GroupSpec, ProcessReport, Reading, SlotHits};
use crate::{
    aggregate::{Input, Nanos, monotonic_ns},
    attach::{KernelCounters, Probes, SlotCounts},
    discover::cpu::{CpuClock, CpuTime},
    metrics::{Metrics, WorkloadLabels},
};

/// Each process's CPU clock; read by the task and by its attaches and detaches.
type Clocks = Arc<Mutex<BTreeMap<u32, CpuClock>>>;

/// How often hit rates are measured and the budget shared out again.
pub const CONTROL_INTERVAL: Duration = Duration::from_secs(1);

/// What the task hears about processes.
pub enum BudgetInput {
    /// Every probe of `pid` was just attached.
    Attached {
        pid: u32,
        labels: WorkloadLabels,
        groups: Vec<GroupSpec>,
    },
    /// The process exited or exec'd: its probes are about to be detached.
    Gone { pid: u32 },
}

/// An attach or detach done on the blocking pool, with the times it measured.
enum Done {
    Attached {
        pid: u32,
        group: &'static str,
        times: Vec<(u32, Option<Nanos>)>,
        reading: Option<Reading>,
    },
    Detached {
        pid: u32,
        group: &'static str,
        times: Vec<(u32, Nanos)>,
        reading: Option<Reading>,
    },
}

/// The process's CPU time and the hit totals of `slots`, now.
fn read_process(
    pid: u32,
    slots: &[u32],
    clocks: &Clocks,
    counters: &Mutex<KernelCounters>,
) -> Option<Reading> {
    let at = monotonic_ns();
    let cpu = clocks
        .lock()
        .expect("cpu clocks")
        .entry(pid)
        .or_default()
        .read(pid)?;
    let counters = counters.lock().expect("kernel counters");
    let hits = slots
        .iter()
        .filter_map(|&slot| counters.read(slot).ok().map(|c| (slot, slot_hits(c))))
        .collect();
    Some(Reading { at, cpu, hits })
}

fn slot_hits(counts: SlotCounts) -> SlotHits {
    SlotHits {
        recorded: counts.hits,
        paused: counts.paused,
    }
}

pub struct BudgetTask {
    pub controller: Controller,
    pub probes: Arc<Mutex<Probes>>,
    pub counters: Arc<Mutex<KernelCounters>>,
    pub to_aggregator: mpsc::Sender<Input>,
    pub metrics: Arc<Metrics>,
    pub clocks: Clocks,
}

impl BudgetTask {
    /// Runs until `stop` says so or every input sender is gone; then closes the open
    /// cycles (so the aggregator weighs what it holds) and returns the last reports.
    pub async fn run(
        mut self,
        mut inputs: mpsc::Receiver<BudgetInput>,
        mut stop: watch::Receiver<bool>,
    ) -> Vec<ProcessReport> {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut tick = tokio::time::interval(CONTROL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut published: HashSet<Vec<String>> = HashSet::new();
        loop {
            let wait = self
                .controller
                .next_due()
                .map(|at| Duration::from_nanos(at.saturating_sub(monotonic_ns())));
            tokio::select! {
                _ = tick.tick() => {
                    self.update();
                    self.publish(&mut published);
                }
                input = inputs.recv() => match input {
                    Some(BudgetInput::Attached { pid, labels, groups }) => {
                        let cpu = self.cpu_time(pid);
                        self.controller
                            .add_process(pid, labels, groups, monotonic_ns(), cpu);
                    }
                    Some(BudgetInput::Gone { pid }) => {
                        self.controller.remove_process(pid, monotonic_ns());
                        self.clocks.lock().expect("cpu clocks").remove(&pid);
                    }
                    None => break,
                },
                Some(done) = done_rx.recv() => match done {
                    Done::Attached { pid, group, times, reading } => {
                        debug!(pid, group, ?times, ?reading, "duty cycle: attached");
                        self.controller.attached(pid, group, &times, reading.as_ref());
                    }
                    Done::Detached { pid, group, times, reading } => {
                        debug!(pid, group, ?times, ?reading, "duty cycle: detached");
                        self.controller.detached(pid, group, &times, reading.as_ref());
                    }
                },
                _ = tokio::time::sleep(wait.unwrap_or(CONTROL_INTERVAL)), if wait.is_some() => {}
                _ = stop.changed() => break,
            }
            let (clocks, counters) = (&self.clocks, &self.counters);
            let due = self.controller.due(monotonic_ns(), &mut |pid, slots| {
                read_process(pid, slots, clocks, counters)
            });
            for action in due {
                self.execute(action, done_tx.clone());
            }
            self.forward_scale_updates().await;
        }
        let now = monotonic_ns();
        self.update();
        let pids: Vec<u32> = self.controller.pids().collect();
        for pid in pids {
            let slots = self.controller.process_slots(pid);
            let reading = read_process(pid, &slots, &self.clocks, &self.counters);
            self.controller
                .close_open_cycles(pid, now, reading.as_ref());
        }
        self.forward_scale_updates().await;
        self.controller.reports(now)
    }

    fn update(&mut self) {
        let now = monotonic_ns();
        let pids: Vec<u32> = self.controller.pids().collect();
        for pid in pids {
            if let Some(cpu) = self.cpu_time(pid) {
                self.controller.process_cpu(pid, now, cpu);
            }
        }
        let slots = self.controller.slots();
        let hits: BTreeMap<u32, SlotHits> = {
            let counters = self.counters.lock().expect("kernel counters");
            slots
                .into_iter()
                .filter_map(|slot| counters.read(slot).ok().map(|c| (slot, slot_hits(c))))
                .collect()
        };
        self.controller
            .update(now, &|slot| hits.get(&slot).copied());
    }

    fn cpu_time(&self, pid: u32) -> Option<CpuTime> {
        self.clocks
            .lock()
            .expect("cpu clocks")
            .entry(pid)
            .or_default()
            .read(pid)
    }

    async fn forward_scale_updates(&mut self) {
        for update in self.controller.take_scale_updates() {
            debug!(?update, "duty cycle");
            if self.to_aggregator.send(Input::Scale(update)).await.is_err() {
                return;
            }
        }
    }

    fn execute(&self, action: Action, done: mpsc::UnboundedSender<Done>) {
        let probes = Arc::clone(&self.probes);
        let (clocks, counters) = (Arc::clone(&self.clocks), Arc::clone(&self.counters));
        let watched = match &action {
            Action::Attach { pid, .. } | Action::Detach { pid, .. } => {
                self.controller.process_slots(*pid)
            }
        };
        tokio::task::spawn_blocking(move || match action {
            // A group is attached and detached as one link (one kernel grace period
            // per detach with uprobe_multi links). The window runs from the attach
            // call's return to the start of the close, and so do the readings of the
            // work done in it. The breakpoints go in during the call and out during
            // the close (30–60 ms with the kernel, hitting meanwhile), so the slots
            // stay paused in the kernel outside the window: `resume` unpauses them
            // when the link is in, `suspend` pauses them before the link is closed,
            // and each reading follows right after.
            Action::Attach { pid, group, slots } => {
                let result = probes.lock().expect("probes").resume(pid, &slots);
                let at = monotonic_ns();
                let reading = read_process(pid, &watched, &clocks, &counters);
                let at = match result {
                    Ok(()) => Some(at),
                    Err(e) => {
                        debug!(pid, group, "re-attaching a duty-cycled group: {e}");
                        None
                    }
                };
                let times = slots.into_iter().map(|slot| (slot, at)).collect();
                let _ = done.send(Done::Attached {
                    pid,
                    group,
                    times,
                    reading,
                });
            }
            Action::Detach { pid, group, slots } => {
                let links = probes.lock().expect("probes").suspend(pid, &slots);
                let at = monotonic_ns();
                let reading = read_process(pid, &watched, &clocks, &counters);
                drop(links);
                let times = slots.into_iter().map(|slot| (slot, at)).collect();
                let _ = done.send(Done::Detached {
                    pid,
                    group,
                    times,
                    reading,
                });
            }
        });
    }

    /// Sets the gauges per workload: overhead summed over its processes, duty cycles
    /// averaged; series of workloads without processes are removed.
    fn publish(&self, published: &mut HashSet<Vec<String>>) {
        let reports = self.controller.reports(monotonic_ns());
        let mut overhead: BTreeMap<Vec<String>, f64> = BTreeMap::new();
        let mut duty: BTreeMap<Vec<String>, (f64, u32)> = BTreeMap::new();
        let mut observed: BTreeMap<Vec<String>, (f64, u32)> = BTreeMap::new();
        for report in &reports {
            let labels: Vec<String> = report
                .labels
                .values()
                .iter()
                .map(|v| v.to_string())
                .collect();
            *overhead.entry(labels.clone()).or_default() += report.overhead;
            for (shares, of) in [(&mut duty, &report.duty), (&mut observed, &report.observed)] {
                for &(group, share) in of {
                    let mut key = labels.clone();
                    key.push(group.to_string());
                    let entry = shares.entry(key).or_default();
                    entry.0 += share;
                    entry.1 += 1;
                }
            }
        }
        let mut now_published = HashSet::new();
        for (labels, value) in &overhead {
            let values: Vec<&str> = labels.iter().map(String::as_str).collect();
            self.metrics
                .estimated_overhead_ratio
                .with_label_values(&values)
                .set(*value);
            now_published.insert(labels.clone());
        }
        for (gauge, means) in [
            (&self.metrics.probe_duty_cycle_ratio, &duty),
            (&self.metrics.probe_observed_work_ratio, &observed),
        ] {
            for (labels, (sum, n)) in means {
                let values: Vec<&str> = labels.iter().map(String::as_str).collect();
                gauge.with_label_values(&values).set(sum / f64::from(*n));
                now_published.insert(labels.clone());
            }
        }
        for stale in published.difference(&now_published) {
            let values: Vec<&str> = stale.iter().map(String::as_str).collect();
            if values.len() == 5 {
                let _ = self
                    .metrics
                    .estimated_overhead_ratio
                    .remove_label_values(&values);
            } else {
                let _ = self
                    .metrics
                    .probe_duty_cycle_ratio
                    .remove_label_values(&values);
                let _ = self
                    .metrics
                    .probe_observed_work_ratio
                    .remove_label_values(&values);
            }
        }
        *published = now_published;
    }
}

/// A seed for the duty cycles' randomness that differs between runs.
pub fn seed() -> u64 {
    monotonic_ns()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
}

/// One line for `attach`'s exit: what the probes cost, estimated.
pub fn summary(reports: &[ProcessReport]) -> String {
    reports
        .iter()
        .map(|r| {
            let seconds = r.elapsed_ns as f64 / 1e9;
            let average = if r.elapsed_ns > 0 {
                r.total_cost_ns / r.elapsed_ns as f64
            } else {
                0.0
            };
            let cycled: Vec<String> = r
                .windows
                .iter()
                .zip(&r.duty)
                .filter(|((_, windows), _)| *windows > 0)
                .map(|((group, windows), (_, duty))| {
                    format!(
                        "{group}: {windows} windows, last on {:.1}% of its cycle",
                        duty * 100.0
                    )
                })
                .collect();
            format!(
                "probes cost pid {} an estimated {:.0} ms of CPU over {seconds:.1} s \
                 ({:.2}% of a core{}){}",
                r.pid,
                r.total_cost_ns / 1e6,
                average * 100.0,
                if r.cost_scale.is_empty() {
                    String::new()
                } else {
                    let scales: Vec<String> = (r.cost_scale.iter())
                        .map(|(group, scale)| format!("{scale:.2}× ({group})"))
                        .collect();
                    format!("; a hit cost it {} the calibrated cost", scales.join(", "))
                },
                if cycled.is_empty() {
                    String::new()
                } else {
                    format!("; duty-cycled: {}", cycled.join(", "))
                }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
