//! `mapwatch run`: the node daemon. Finds every Go process (a /proc scan at start and
//! every `rescan_interval`, exec/exit notices from the kernel in between), attaches the
//! configured probes to each supported one, detaches when it exits or execs, and serves
//! the metrics of all of them.
//!
//! One task (the loop in [`Daemon::serve`]) owns the process table, so attach and
//! detach decisions never race; attaching and detaching themselves block (they open
//! perf events and close links), so they run on the blocking pool.
use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use mapwatch_common::ProcessNotice;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{debug, info, warn};

use super::{UsageError, run_flags::RunFlags, session::Session};
use crate::{
    aggregate::{Aggregator, Input, LabelLimits, SlotRegistration, Workload},
    attach::{self, AttachError, FileIdentity, Probes, notices::NoticesLost},
    budget::{
        self, BudgetConfig, Controller, HitCost,
        task::{BudgetInput, BudgetTask},
    },
    config::{Filters, RunConfig},
    discover::{
        PodResolver, WorkloadIdentity, parse_proc_cgroup,
        procs::{
            ProcessInfo, binary_label, exe_path, process_info, read_proc_text, scan_processes,
        },
        tracker::{Change, Tracker},
    },
    goelf::{GoBinary, GoElfError},
    metrics::{AttachErrorReason, Metrics, http},
    plan::{self, PlanError, PlanRequest, ProbePlan},
    symbolize::Symbolizer,
};

/// How often the reader drains the ring buffer when no wake-up came.
const DRAIN_INTERVAL: Duration = Duration::from_millis(100);
/// How long a new container's process waits for the Kubernetes API to report its pod.
const POD_RESOLVE_WAIT: Duration = Duration::from_secs(2);

pub fn run(flags: RunFlags) -> anyhow::Result<()> {
    let config = flags
        .effective_config()
        .map_err(|e| UsageError(e.to_string()))?;
    if flags.print_config {
        print!("{}", config.to_toml()?);
        return Ok(());
    }
    let listener = http::bind_listener(config.listen).map_err(|e| {
        UsageError(format!(
            "cannot listen on {}: {e}; choose another address with --listen or `listen` in the config file",
            config.listen
        ))
    })?;
    let mut probes = Probes::load().map_err(|e| match e {
        AttachError::Privileges(p) => anyhow::Error::from(UsageError(p.to_string())),
        other => anyhow::Error::from(other),
    })?;
    let hit_cost = crate::budget::HitCost::calibrate(&mut probes);
    let notices = match probes.follow_processes() {
        Ok(notices) => Some(notices),
        Err(e) => {
            warn!(
                "{e}; new processes are found by the /proc scan every {}",
                humantime::format_duration(config.rescan_interval)
            );
            None
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(Daemon::serve(config, listener, probes, notices, hit_cost))
}

/// A binary analysed once for all processes that run it.
struct Analysis {
    binary: Arc<GoBinary>,
    plan: ProbePlan,
}

/// Why a binary is not profiled; remembered so it is logged and counted once.
#[derive(Clone)]
enum Refusal {
    /// Not a Go program: the common case, silently skipped.
    NotGo,
    /// The file could not be read (the process exited, or a permission): not
    /// remembered, the next process of the same binary tries again.
    Unreadable,
    /// A Go program mapwatch cannot probe: counted in attach_errors_total{reason}.
    Unsupported { reason: AttachErrorReason },
}

/// The cache key of an analysis: the file (device, inode) and its size and mtime, which
/// change if the inode is reused for another file after the last process running it
/// exited. Cheaper than reading the build ID of every new process's binary; the build
/// ID is logged with each analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct BinaryKey {
    file: FileIdentity,
    size: u64,
    mtime_ns: i128,
}

impl BinaryKey {
    fn of(path: &Path) -> Option<BinaryKey> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path).ok()?;
        Some(BinaryKey {
            file: FileIdentity {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }
}

struct Daemon {
    config: RunConfig,
    filters: Filters,
    request: PlanRequest,
    probes: Arc<Mutex<Probes>>,
    tracker: Tracker,
    analyses: HashMap<BinaryKey, Result<Arc<Analysis>, Refusal>>,
    /// (binary, reason) pairs already logged.
    logged: HashSet<(String, AttachErrorReason)>,
    to_aggregator: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    pods: Option<PodResolver>,
    own_pid: u32,
    budget: mpsc::Sender<BudgetInput>,
    hit_cost: HitCost,
}

impl Daemon {
    async fn serve(
        config: RunConfig,
        listener: std::net::TcpListener,
        mut probes: Probes,
        notices: Option<attach::notices::ProcessNotices>,
        hit_cost: HitCost,
    ) -> anyhow::Result<()> {
        let metrics = Arc::new(Metrics::new().context("registering metrics")?);
        let ready = Arc::new(AtomicBool::new(false));
        let (notices_lost, notice_ring) = match notices {
            Some(n) => {
                let (lost, ring) = n.split();
                (Some(lost), Some(ring))
            }
            None => (None, None),
        };
        let hook = scrape_hook(attach::scrape_hook(probes.counters()), notices_lost);
        let (addr, server) =
            http::serve_bound(listener, Arc::clone(&metrics), Arc::clone(&ready), hook)
                .context("serving HTTP")?;
        let server = tokio::spawn(server);
        if let Some(logger) = probes.take_logger() {
            tokio::spawn(attach::reader::forward_logs(logger));
        }
        let pods = PodResolver::from_environment(config.kubernetes)
            .map_err(|e| UsageError(format!("Kubernetes pod names: {e}")))?;

        let limits = LabelLimits {
            elem_types: config.max_elem_types as usize,
            sites: config.max_sites as usize,
        };
        let (to_aggregator, from_probes) = mpsc::channel::<Input>(64);
        let aggregator = tokio::spawn(
            Aggregator::with_limits(Arc::clone(&metrics), limits)
                .with_series_expiry(config.series_expiry)
                .run(from_probes),
        );
        let ring = probes
            .take_ring_buf()
            .context("ring buffer already taken")?;
        let (stop_reader, stop_signal) = watch::channel(false);
        let reader = tokio::spawn(attach::reader::run(
            ring,
            to_aggregator.clone(),
            DRAIN_INTERVAL,
            stop_signal,
        ));
        let (notice_tx, mut notice_rx) = mpsc::channel::<Vec<ProcessNotice>>(64);
        let following = notice_ring.is_some();
        if let Some(ring) = notice_ring {
            tokio::spawn(ring.forward(notice_tx));
        }

        let request = PlanRequest {
            slice_growth: config.slice_growth,
            map_growth: true,
            stw_gc: true,
            exact: false,
            hot: plan::HotProbes::from_names(&config.hot_probes),
        };
        let counters = probes.counters();
        let probes = Arc::new(Mutex::new(probes));
        let (to_budget, budget_inputs) = mpsc::channel::<BudgetInput>(64);
        let (stop_budget, budget_stop) = watch::channel(false);
        let budget_task = tokio::spawn(
            BudgetTask {
                controller: Controller::new(
                    budget_config(&config),
                    u64::from(std::process::id()) ^ budget::task::seed(),
                ),
                probes: Arc::clone(&probes),
                counters,
                to_aggregator: to_aggregator.clone(),
                metrics: Arc::clone(&metrics),
            }
            .run(budget_inputs, budget_stop),
        );
        let mut daemon = Daemon {
            request,
            probes,
            budget: to_budget,
            hit_cost,
            tracker: Tracker::new(),
            analyses: HashMap::new(),
            logged: HashSet::new(),
            to_aggregator,
            metrics: Arc::clone(&metrics),
            pods,
            own_pid: std::process::id(),
            filters: config.filters(),
            config,
        };
        eprintln!(
            "mapwatch: watching Go processes on this node ({}); metrics at http://{addr}/metrics",
            if following {
                "exec/exit notices + /proc scans"
            } else {
                "/proc scans only"
            }
        );
        daemon.rescan().await;
        ready.store(true, Ordering::Release);

        let mut sigterm =
            signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
        let mut rescan = tokio::time::interval(daemon.config.rescan_interval);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rescan.tick().await;
        let why = loop {
            tokio::select! {
                _ = sigterm.recv() => break "SIGTERM",
                _ = sigint.recv() => break "interrupted",
                _ = rescan.tick() => daemon.rescan().await,
                Some(batch) = notice_rx.recv() => daemon.on_notices(batch).await,
            }
        };
        info!(why, "stopping");
        ready.store(false, Ordering::Release);
        let session = Session {
            stop_budget,
            budget_task,
            probes: Arc::clone(&daemon.probes),
            stop_reader,
            reader,
            aggregator,
            metrics: Arc::clone(&metrics),
        };
        drop(daemon);
        let stopped = session.stop().await?;
        eprintln!("mapwatch: {why}; {}", stopped.timings());
        server.abort();
        Ok(())
    }

    async fn rescan(&mut self) {
        let scan = match scan_processes(Path::new("/proc")) {
            Ok(scan) => scan,
            Err(e) => {
                warn!("scanning /proc: {e}");
                return;
            }
        };
        let changes = self.tracker.reconcile(&scan);
        self.apply(changes).await;
    }

    async fn on_notices(&mut self, batch: Vec<ProcessNotice>) {
        let mut changes = Vec::new();
        for notice in batch {
            match notice.kind {
                ProcessNotice::EXEC => {
                    if let Some(process) = process_info(Path::new("/proc"), notice.tgid) {
                        changes.extend(self.tracker.observe(process));
                    }
                }
                ProcessNotice::EXIT => changes.extend(self.tracker.exited(notice.tgid)),
                other => debug!(kind = other, "unknown process notice"),
            }
        }
        self.apply(changes).await;
    }

    async fn apply(&mut self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Appeared(process) => self.examine(process).await,
                Change::Execed(process) => {
                    self.detach(process.pid).await;
                    self.examine(process).await;
                }
                Change::Exited {
                    pid,
                    attached: true,
                } => self.detach(pid).await,
                Change::Exited { .. } => {}
            }
        }
        let attached = self.tracker.attached_pids().count();
        self.metrics.attached_processes.set(attached as i64);
    }

    /// Attaches to `process` if it runs a supported Go binary the filters admit.
    async fn examine(&mut self, process: ProcessInfo) {
        let pid = process.pid;
        if pid == self.own_pid || process.exe.is_none() {
            return;
        }
        let exe = exe_path(pid);
        let Some(key) = BinaryKey::of(&exe) else {
            return;
        };
        let binary_name = binary_label(pid);
        // The binary-name filter first: it needs no analysis.
        if !self.filters.admits_binary(&binary_name) {
            return;
        }
        let analysis = match self.analysis(key, &exe, &binary_name).await {
            Ok(analysis) => analysis,
            Err(Refusal::NotGo | Refusal::Unreadable) => return,
            Err(Refusal::Unsupported { reason }) => {
                self.metrics.count_attach_error(reason);
                return;
            }
        };
        let mut identity = WorkloadIdentity::host(binary_name, analysis.plan.go_version.clone());
        if let Some(pods) = &self.pods
            && let Some(container) = read_proc_text(format!("/proc/{pid}/cgroup"))
                .ok()
                .as_deref()
                .and_then(parse_proc_cgroup)
        {
            match pods.resolve_within(&container, POD_RESOLVE_WAIT).await {
                Some(pod) => identity = identity.in_pod(pod),
                None => debug!(pid, container = %container.container_id, "pod not known (yet)"),
            }
        }
        if !self.filters.admits(&identity) {
            debug!(pid, ?identity, "excluded by the filters");
            return;
        }
        match self.attach(&process, key, &analysis, identity).await {
            Ok(count) => {
                self.tracker.set_attached(pid, true);
                info!(pid, probes = count, "attached");
            }
            Err(e) => {
                self.metrics.count_attach_error(e.reason());
                let _ = self.to_aggregator.send(Input::ProcessGone(pid)).await;
                // A process that exits while probes are being attached is ordinary
                // churn; anything else is worth one line per binary.
                if matches!(e, AttachError::ProcessGone { .. }) {
                    debug!(pid, "{e}");
                } else {
                    self.log_once(&analysis_label(&analysis), e.reason(), &e.to_string());
                }
            }
        }
    }

    /// The cached analysis of the binary at `exe`, analysing it on first sight.
    async fn analysis(
        &mut self,
        key: BinaryKey,
        exe: &Path,
        binary_name: &str,
    ) -> Result<Arc<Analysis>, Refusal> {
        if let Some(cached) = self.analyses.get(&key) {
            return cached.clone();
        }
        let path = exe.to_path_buf();
        let request = self.request;
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || analyse(&path, request))
            .await
            .unwrap_or_else(|e| {
                // The analysis panicked: a binary our parsers could not cope with.
                Err((
                    Refusal::Unsupported {
                        reason: AttachErrorReason::BadBinary,
                    },
                    e.to_string(),
                ))
            });
        let result = match result {
            Ok(analysis) => {
                info!(
                    binary = binary_name,
                    go_version = %analysis.plan.go_version,
                    build_id = analysis.binary.go_build_id().unwrap_or("none"),
                    probes = analysis.plan.probes.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "analysed"
                );
                for unavailable in &analysis.plan.unavailable {
                    info!(
                        binary = binary_name,
                        signal = unavailable.signal,
                        "unavailable: {}",
                        unavailable.reason
                    );
                }
                Ok(Arc::new(analysis))
            }
            Err((refusal, message)) => {
                if let Refusal::Unsupported { reason } = refusal {
                    self.log_once(binary_name, reason, &message);
                }
                Err(refusal)
            }
        };
        if !matches!(result, Err(Refusal::Unreadable)) {
            self.analyses.insert(key, result.clone());
        }
        result
    }

    async fn attach(
        &mut self,
        process: &ProcessInfo,
        key: BinaryKey,
        analysis: &Arc<Analysis>,
        identity: WorkloadIdentity,
    ) -> Result<usize, AttachError> {
        let pid = process.pid;
        let proc_maps = read_proc_text(format!("/proc/{pid}/maps"))
            .map_err(|_| AttachError::ProcessGone { pid })?;
        // PIE binaries are mapped at a different address in each process.
        let bias = analysis
            .binary
            .load_bias(&proc_maps, key.file.ino)
            .unwrap_or(0);
        let symbolizer = Box::new(Symbolizer::new(
            Arc::clone(&analysis.binary),
            bias,
            analysis.plan.offsets.as_ref(),
        ));
        let workload = Arc::new(Workload {
            labels: identity.into(),
            facts: analysis.plan.facts,
            exact: false,
        });
        let slots = self
            .probes
            .lock()
            .expect("probes")
            .reserve_slots(&analysis.plan)?;
        // Registered before attaching: no record can precede its slot's metadata.
        let registered = self
            .to_aggregator
            .send(Input::Symbolizer(pid, symbolizer))
            .await
            .and(
                self.to_aggregator
                    .send(Input::Register(SlotRegistration::for_plan(
                        pid,
                        &analysis.plan,
                        &slots,
                        &workload,
                    )))
                    .await,
            );
        if registered.is_err() {
            self.probes.lock().expect("probes").release_slots(slots);
            return Err(AttachError::Missing("aggregator (stopped)"));
        }
        let groups = budget::groups_for_plan(&analysis.plan, &slots, self.hit_cost);
        let probes = Arc::clone(&self.probes);
        let analysis = Arc::clone(analysis);
        let file = key.file;
        let count = tokio::task::spawn_blocking(move || {
            let mut probes = probes.lock().expect("probes");
            match probes.attach_process(pid, file, &analysis.plan, &slots) {
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
            .budget
            .send(BudgetInput::Attached {
                pid,
                labels: workload.labels.clone(),
                groups,
            })
            .await;
        Ok(count)
    }

    async fn detach(&mut self, pid: u32) {
        // Before detaching: the budget must not re-attach probes of a process that is
        // going away.
        let _ = self.budget.send(BudgetInput::Gone { pid }).await;
        let probes = Arc::clone(&self.probes);
        let started = Instant::now();
        let count =
            tokio::task::spawn_blocking(move || probes.lock().expect("probes").detach_process(pid))
                .await
                .unwrap_or(0);
        self.tracker.set_attached(pid, false);
        let _ = self.to_aggregator.send(Input::ProcessGone(pid)).await;
        if count > 0 {
            info!(
                pid,
                probes = count,
                ms = started.elapsed().as_millis() as u64,
                "detached"
            );
        }
    }

    fn log_once(&mut self, binary: &str, reason: AttachErrorReason, message: &str) {
        if self.logged.insert((binary.to_string(), reason)) {
            warn!(binary, reason = reason.label(), "{message}");
        }
    }
}

/// The overhead budget of `run`: enforced; the node budget is a share of all CPUs.
fn budget_config(config: &RunConfig) -> BudgetConfig {
    let cpus = aya::util::online_cpus().map_or(1, |cpus| cpus.len().max(1));
    BudgetConfig {
        per_process: config.overhead_budget.fraction(),
        share_of_process: Some(config.overhead_share.fraction()),
        node: config.node_budget.map(|n| n.fraction() * cpus as f64),
        enforce: true,
    }
}

fn analysis_label(analysis: &Analysis) -> String {
    analysis.binary.path().display().to_string()
}

/// Opens and plans a binary (blocking: reads and parses the file).
fn analyse(path: &Path, request: PlanRequest) -> Result<Analysis, (Refusal, String)> {
    let unsupported =
        |reason: AttachErrorReason, message: String| (Refusal::Unsupported { reason }, message);
    let binary = GoBinary::open(path).map_err(|e| match e {
        GoElfError::NotGo { .. } | GoElfError::NotElf { .. } => (Refusal::NotGo, e.to_string()),
        GoElfError::Io { .. } => (Refusal::Unreadable, e.to_string()),
        GoElfError::UnsupportedArch { .. } => {
            unsupported(AttachErrorReason::UnsupportedArch, e.to_string())
        }
        other => unsupported(AttachErrorReason::BadBinary, other.to_string()),
    })?;
    let plan = plan::plan_probes(&binary, request).map_err(|e| match e {
        PlanError::UnsupportedGoVersion { .. } => {
            unsupported(AttachErrorReason::UnsupportedGoVersion, e.to_string())
        }
        other => unsupported(AttachErrorReason::BadBinary, other.to_string()),
    })?;
    if plan.probes.is_empty() {
        let reasons: Vec<String> = plan
            .unavailable
            .iter()
            .map(|u| format!("{}: {}", u.signal, u.reason))
            .collect();
        return Err(unsupported(
            AttachErrorReason::NothingToProbe,
            format!("nothing to probe ({})", reasons.join("; ")),
        ));
    }
    Ok(Analysis {
        binary: Arc::new(binary),
        plan,
    })
}

/// The probes' kernel counters plus the process notices lost.
fn scrape_hook(probes: http::ScrapeHook, notices_lost: Option<NoticesLost>) -> http::ScrapeHook {
    Arc::new(move |metrics: &Metrics| {
        probes(metrics);
        if let Some(lost) = &notices_lost {
            Metrics::sync_counter(&metrics.events_lost_total, &["process_notices"], lost.get());
        }
    })
}
