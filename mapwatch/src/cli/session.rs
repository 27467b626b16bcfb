//! A profiling session: the one pipeline of every command that profiles (`attach`,
//! `run`), started by [`Session::start`] and stopped by [`Session::stop`].
//!
//! ```text
//! probes ──ring buffer──> reader ─┐
//!                budget task ─────┼──> aggregator ──> Metrics ──HTTP──> /metrics
//! Session::attach / detach ───────┘
//! ```
//!
//! A command loads the probes first ([`load_probes`], before its runtime, so missing
//! privileges are reported before anything else happens), starts the session with what
//! differs between commands ([`SessionOptions`]), attaches processes with
//! [`Session::attach`], and stops once: the same order for every command, so nothing
//! recorded is lost and nothing is left attached.
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::UsageError;
use crate::{
    aggregate::{Aggregator, Input, LabelLimits, SlotRegistration, Workload, observe::Observer},
    attach::{self, AttachError, FileIdentity, Probes, notices::NoticesLost},
    budget::{
        self, BudgetConfig, Controller, HitCost, ProcessReport,
        task::{BudgetInput, BudgetTask},
    },
    goelf::GoBinary,
    metrics::{Metrics, WorkloadLabels, http},
    plan::ProbePlan,
    symbolize::Symbolizer,
};

/// Loads the BPF object and measures what a probe hit costs on this machine. Missing
/// privileges are the user's to fix ([`UsageError`]).
pub fn load_probes() -> anyhow::Result<(Probes, HitCost)> {
    let mut probes = Probes::load().map_err(|e| match e {
        AttachError::Privileges(p) => anyhow::Error::from(UsageError(p.to_string())),
        e @ AttachError::RingSize { .. } => anyhow::Error::from(UsageError(e.to_string())),
        other => anyhow::Error::from(other),
    })?;
    let hit_cost = HitCost::calibrate(&mut probes);
    Ok((probes, hit_cost))
}

/// The runtime a session runs on: two workers (the pipeline's tasks are light; attaching
/// and detaching block, on the blocking pool).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Where a session serves /metrics, /healthz and /readyz.
pub enum Listen {
    /// Bound by [`Session::start`]; failing is the user's to fix: "cannot listen on
    /// ADDR: ERROR".
    Address(SocketAddr),
    /// Bound by the command earlier, before privileges were used, so that a taken port
    /// is reported before anything is loaded into the kernel.
    Bound(std::net::TcpListener),
    /// No HTTP server (`record` writes a file instead).
    Nowhere,
}

/// What differs between the commands that start a session.
pub struct SessionOptions {
    pub listen: Listen,
    /// How often the reader drains the ring buffer when no wake-up came.
    pub drain_interval: Duration,
    pub label_limits: LabelLimits,
    /// Series of processes gone this long are removed; None: kept.
    pub series_expiry: Option<Duration>,
    /// Series /metrics exports at most (`run`); None: all (`attach` watches one
    /// workload).
    pub series_budget: Option<usize>,
    pub budget: BudgetConfig,
    /// The plans have RET probes: the aggregator checks derived values against them.
    pub exact: bool,
    /// Process notices lost in the kernel, counted at each scrape (`run`).
    pub notices_lost: Option<NoticesLost>,
    /// A capture (`record`): every record, decoded, is also sent here.
    pub observer: Option<Observer>,
}

/// A process to profile: its executable as analysed, and the plan made from it.
pub struct Target {
    pub pid: u32,
    /// The executable's identity when it was analysed: probes go only into a process
    /// that still runs that file.
    pub file: FileIdentity,
    pub binary: Arc<GoBinary>,
    pub plan: Arc<ProbePlan>,
    pub labels: WorkloadLabels,
}

/// A running profiling session: the HTTP server, the BPF log forwarder, the aggregator,
/// the ring-buffer reader and the budget task, and the probes they share.
pub struct Session {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    /// Where /metrics is served, and the server; None with [`Listen::Nowhere`].
    server: Option<(SocketAddr, JoinHandle<std::io::Result<()>>)>,
    probes: Arc<Mutex<Probes>>,
    hit_cost: HitCost,
    exact: bool,
    /// The overhead budget: under it, a new process's hot groups may start detached.
    budget_config: BudgetConfig,
    to_aggregator: mpsc::Sender<Input>,
    aggregator: JoinHandle<()>,
    stop_reader: watch::Sender<bool>,
    /// Processes detached, for the reader to forget after draining what they wrote.
    forget: mpsc::Sender<attach::reader::Forget>,
    reader: JoinHandle<std::io::Result<()>>,
    to_budget: mpsc::Sender<BudgetInput>,
    stop_budget: watch::Sender<bool>,
    budget_task: JoinHandle<Vec<ProcessReport>>,
}

/// What [`Session::stop`] leaves.
pub struct Stopped {
    /// Everything the session recorded, all of it applied.
    pub metrics: Arc<Metrics>,
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
    /// Registers the metrics, serves them (not ready until [`Session::set_ready`]), and
    /// starts the BPF log forwarder, the aggregator, the ring-buffer reader and the
    /// budget task. No process is attached yet.
    pub async fn start(
        mut probes: Probes,
        hit_cost: HitCost,
        options: SessionOptions,
    ) -> anyhow::Result<Session> {
        let metrics = Arc::new(Metrics::new().context("registering metrics")?);
        if let Some(budget) = options.series_budget {
            metrics.set_series_budget(budget);
        }
        let ready = Arc::new(AtomicBool::new(false));
        let hook = scrape_hook(attach::scrape_hook(probes.counters()), options.notices_lost);
        // The two arms' server futures differ in type: each is spawned where it is made.
        let server = match options.listen {
            Listen::Address(listen) => {
                let (addr, server) =
                    http::bind(listen, Arc::clone(&metrics), Arc::clone(&ready), hook)
                        .map_err(|e| UsageError(format!("cannot listen on {listen}: {e}")))?;
                Some((addr, tokio::spawn(server)))
            }
            Listen::Bound(listener) => {
                let (addr, server) =
                    http::serve_bound(listener, Arc::clone(&metrics), Arc::clone(&ready), hook)
                        .context("serving HTTP")?;
                Some((addr, tokio::spawn(server)))
            }
            Listen::Nowhere => None,
        };
        if let Some(logger) = probes.take_logger() {
            tokio::spawn(attach::reader::forward_logs(logger));
        }

        let (to_aggregator, from_probes) = mpsc::channel::<Input>(64);
        let mut aggregator = Aggregator::with_limits(Arc::clone(&metrics), options.label_limits);
        if let Some(expiry) = options.series_expiry {
            aggregator = aggregator.with_series_expiry(expiry);
        }
        if let Some(observer) = options.observer {
            aggregator = aggregator.with_observer(observer);
        }
        let aggregator = tokio::spawn(aggregator.run(from_probes));

        let ring = probes
            .take_ring_buf()
            .context("ring buffer already taken")?;
        let (stop_reader, stop_signal) = watch::channel(false);
        let (forget, forget_requests) = mpsc::channel(64);
        let reader = tokio::spawn(attach::reader::run(
            ring,
            to_aggregator.clone(),
            options.drain_interval,
            stop_signal,
            forget_requests,
        ));

        let counters = probes.counters();
        let group_links = probes.link_mode() == crate::attach::links::LinkMode::Multi;
        let probes = Arc::new(Mutex::new(probes));
        let (to_budget, budget_inputs) = mpsc::channel::<BudgetInput>(64);
        let (stop_budget, budget_stop) = watch::channel(false);
        let budget_task = tokio::spawn(
            BudgetTask {
                controller: Controller::new(
                    options.budget,
                    u64::from(std::process::id()) ^ budget::task::seed(),
                )
                .with_group_links(group_links),
                probes: Arc::clone(&probes),
                counters,
                to_aggregator: to_aggregator.clone(),
                metrics: Arc::clone(&metrics),
                clocks: Default::default(),
            }
            .run(budget_inputs, budget_stop),
        );
        Ok(Session {
            metrics,
            ready,
            server,
            probes,
            hit_cost,
            exact: options.exact,
            budget_config: options.budget,
            to_aggregator,
            aggregator,
            stop_reader,
            forget,
            reader,
            to_budget,
            stop_budget,
            budget_task,
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Where /metrics is served; None with [`Listen::Nowhere`].
    pub fn addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(|(addr, _)| *addr)
    }

    /// "metrics at http://ADDR/metrics", or that they are not served.
    pub fn metrics_at(&self) -> String {
        self.addr()
            .map_or("metrics not served".to_string(), |addr| {
                format!("metrics at http://{addr}/metrics")
            })
    }

    /// What /readyz answers.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Attaches the plan's probes to the process and hands it to the budget; returns how
    /// many probes were attached. On error nothing of the process stays (slots, the
    /// aggregator's registrations) and the error is counted in attach_errors_total.
    pub async fn attach(&self, target: Target) -> Result<usize, AttachError> {
        let pid = target.pid;
        let result = self.try_attach(target).await;
        if let Err(e) = &result {
            self.metrics.count_attach_error(e.reason());
            self.forget(pid).await;
        }
        result
    }

    /// Has the aggregator forget `pid`, whose probes are all detached, after the records
    /// they wrote; returns once it is queued, so that a registration of the same pid
    /// (the process exec'd) comes after it.
    async fn forget(&self, pid: u32) {
        let (done, forgotten) = tokio::sync::oneshot::channel();
        let request = attach::reader::Forget { pid, done };
        if self.forget.send(request).await.is_err() || forgotten.await.is_err() {
            // The reader has stopped (reading the ring failed): nothing is left to drain.
            let _ = self.to_aggregator.send(Input::ProcessGone(pid)).await;
        }
    }

    async fn try_attach(&self, target: Target) -> Result<usize, AttachError> {
        let Target {
            pid,
            file,
            binary,
            plan,
            labels,
        } = target;
        let symbolizer = Box::new(symbolizer_for(pid, &file, &binary, &plan)?);
        let workload = Arc::new(Workload {
            labels,
            facts: plan.facts,
            exact: self.exact,
        });
        let slots = self.probes.lock().expect("probes").reserve_slots(&plan)?;
        // Registered before attaching: no record can precede its slot's metadata.
        let registered = self
            .to_aggregator
            .send(Input::Symbolizer(pid, symbolizer))
            .await
            .and(
                self.to_aggregator
                    .send(Input::Register(SlotRegistration::for_plan(
                        pid, &plan, &slots, &workload,
                    )))
                    .await,
            );
        if registered.is_err() {
            self.probes.lock().expect("probes").release_slots(slots);
            return Err(AttachError::Missing("aggregator (stopped)"));
        }
        let groups = budget::groups_for_plan(&plan, &slots, self.hit_cost);
        // Under an enforced budget, hot groups start detached: the budget opens their
        // first window.
        let later = budget::slots_detached_at_start(&groups, &self.budget_config);
        // Off the async workers: attaching blocks on the kernel.
        let probes = Arc::clone(&self.probes);
        let count = tokio::task::spawn_blocking(move || {
            let mut probes = probes.lock().expect("probes");
            match probes.attach_process(pid, file, &plan, &slots, &later) {
                Ok(attached) => Ok(attached.len()),
                Err(e) => {
                    probes.release_slots(slots);
                    Err(e)
                }
            }
        })
        .await
        .unwrap_or(Err(AttachError::ProcessGone { pid }))?;
        let _ = self
            .to_budget
            .send(BudgetInput::Attached {
                pid,
                labels: workload.labels.clone(),
                groups,
            })
            .await;
        Ok(count)
    }

    /// Detaches every probe of the process (it exited or exec'd) and lets the aggregator
    /// forget it; returns how many probes were detached.
    pub async fn detach(&self, pid: u32) -> usize {
        // Before detaching: the budget must not re-attach probes of a process that is
        // going away.
        let _ = self.to_budget.send(BudgetInput::Gone { pid }).await;
        let probes = Arc::clone(&self.probes);
        let count =
            tokio::task::spawn_blocking(move || probes.lock().expect("probes").detach_process(pid))
                .await
                .unwrap_or(0);
        self.forget(pid).await;
        count
    }

    /// Stops in the one order that loses nothing: the budget, then every probe, then the
    /// reader drains the ring and the aggregator applies the rest; the HTTP server last.
    pub async fn stop(self) -> anyhow::Result<Stopped> {
        // The aggregator runs until every sender is gone: only the reader's and the
        // budget task's may stay.
        drop(self.to_aggregator);
        drop(self.to_budget);
        let started = Instant::now();
        // The budget stops first: no window opens while everything is detached, and the
        // records of open cycles are weighed.
        let _ = self.stop_budget.send(true);
        let reports = self.budget_task.await.context("budget task")?;
        // Off the async workers: closing links blocks (see Probes::detach).
        let probes = self.probes;
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
        let draining = started.elapsed() - detaching;
        if let Some((_, server)) = self.server {
            server.abort();
        }
        Ok(Stopped {
            metrics: self.metrics,
            reports,
            probes_detached,
            detaching,
            draining,
        })
    }
}

/// Names for what the probes of `pid` see: type pointers and return addresses are
/// run-time addresses, shifted by the load bias in PIE binaries (a different one in
/// each process).
pub fn symbolizer_for(
    pid: u32,
    file: &FileIdentity,
    binary: &Arc<GoBinary>,
    plan: &ProbePlan,
) -> Result<Symbolizer, AttachError> {
    let proc_maps = crate::discover::procs::read_proc_text(format!("/proc/{pid}/maps"))
        .map_err(|_| AttachError::ProcessGone { pid })?;
    let bias = binary.load_bias(&proc_maps, file.ino).unwrap_or(0);
    Ok(Symbolizer::new(
        Arc::clone(binary),
        bias,
        plan.offsets.as_ref(),
    ))
}

/// SIGTERM and SIGINT, the signals that stop a session.
pub struct StopSignals {
    sigterm: Signal,
    sigint: Signal,
}

impl StopSignals {
    pub fn install() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            sigterm: signal(SignalKind::terminate()).context("installing a SIGTERM handler")?,
            sigint: signal(SignalKind::interrupt()).context("installing a SIGINT handler")?,
        })
    }

    /// Waits for the next one: "SIGTERM" or "interrupted".
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.sigterm.recv() => "SIGTERM",
            _ = self.sigint.recv() => "interrupted",
        }
    }
}

/// The probes' kernel counters, plus the process notices lost if there are any.
fn scrape_hook(probes: http::ScrapeHook, notices_lost: Option<NoticesLost>) -> http::ScrapeHook {
    match notices_lost {
        None => probes,
        Some(lost) => Arc::new(move |metrics: &Metrics| {
            probes(metrics);
            Metrics::sync_counter(&metrics.events_lost_total, &["process_notices"], lost.get());
        }),
    }
}
