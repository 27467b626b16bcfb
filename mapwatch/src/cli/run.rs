//! `mapwatch run`: the node daemon. Finds every Go process (a /proc scan at start and
//! every `rescan_interval`, exec/exit notices from the kernel in between), attaches the
//! configured probes to each supported one, detaches when it exits or execs, and serves
//! the metrics of all of them.
//!
//! One task (the loop in [`Daemon::serve`]) owns the process table, so attach and
//! detach decisions never race; attaching and detaching themselves block (they open
//! perf events and close links), so [`Session`] runs them on the blocking pool. The
//! pipeline behind them (metrics, reader, aggregator, budget) is the session `attach`
//! starts too.
use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use mapwatch_common::ProcessNotice;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{
    UsageError,
    run_flags::RunFlags,
    session::{self, Listen, Session, SessionOptions, StopSignals, Target},
};
use crate::{
    aggregate::LabelLimits,
    attach::{self, AttachError, FileIdentity, Probes},
    budget::{BudgetConfig, HitCost},
    config::{Filters, RunConfig},
    discover::{
        PodResolver, WorkloadIdentity,
        kubernetes::ResolverOptions,
        parse_proc_cgroup,
        procs::{
            ProcessInfo, binary_label_of, exe_path, process_info, read_proc_text, scan_processes,
        },
        tracker::{Change, Tracker},
    },
    goelf::{GoBinary, GoElfError},
    metrics::AttachErrorReason,
    plan::{self, PlanError, PlanRequest, ProbePlan},
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
    let listener = crate::metrics::http::bind_listener(config.listen).map_err(|e| {
        UsageError(format!(
            "cannot listen on {}: {e}; choose another address with --listen or `listen` in the config file",
            config.listen
        ))
    })?;
    let (mut probes, hit_cost) = session::load_probes()?;
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
    session::runtime()?.block_on(Daemon::serve(config, listener, probes, notices, hit_cost))
}

/// A binary analysed once for all processes that run it.
struct Analysis {
    binary: Arc<GoBinary>,
    plan: Arc<ProbePlan>,
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

/// The cache key of an analysis: the file (device, inode), its size, mtime and ctime.
/// The inode may be reused for another file after the last process running it exited,
/// or the file rewritten in place while no process runs it; mtime can be set back
/// (`cp -p`, `rsync -t`, tools that normalise it), ctime cannot, and every write moves
/// it. Cheaper than reading the build ID of every new process's binary; the build ID is
/// logged with each analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct BinaryKey {
    file: FileIdentity,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl BinaryKey {
    /// The key of an open file: of the file a process ran when its /proc/PID/exe was
    /// opened, which is also the file analysed (see [`Daemon::examine`]).
    fn of(file: &std::fs::File) -> Option<BinaryKey> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = file.metadata().ok()?;
        let ns = |s: i64, ns: i64| i128::from(s) * 1_000_000_000 + i128::from(ns);
        Some(BinaryKey {
            file: FileIdentity {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// An analysis (or refusal) and when it was last asked for. Each holds its binary
/// memory-mapped: kept forever, the cache held every binary that ever ran (deleted
/// ones too, their disk space with them) — see [`Daemon::forget_unused_analyses`].
struct CachedAnalysis {
    result: Result<Arc<Analysis>, Refusal>,
    last_used: Instant,
}

struct Daemon {
    config: RunConfig,
    filters: Filters,
    request: PlanRequest,
    tracker: Tracker,
    analyses: HashMap<BinaryKey, CachedAnalysis>,
    /// (binary, reason) pairs already logged.
    logged: HashSet<(String, AttachErrorReason)>,
    pods: Option<PodResolver>,
    own_pid: u32,
    session: Session,
}

impl Daemon {
    async fn serve(
        config: RunConfig,
        listener: std::net::TcpListener,
        probes: Probes,
        notices: Option<attach::notices::ProcessNotices>,
        hit_cost: HitCost,
    ) -> anyhow::Result<()> {
        let (notices_lost, notice_ring) = match notices {
            Some(n) => {
                let (lost, ring) = n.split();
                (Some(lost), Some(ring))
            }
            None => (None, None),
        };
        let options = SessionOptions {
            listen: Listen::Bound(listener),
            drain_interval: DRAIN_INTERVAL,
            label_limits: LabelLimits {
                elem_types: config.max_elem_types as usize,
                sites: config.max_sites as usize,
            },
            series_expiry: Some(config.series_expiry),
            series_budget: Some(config.series_budget as usize),
            budget: budget_config(&config),
            exact: false,
            notices_lost,
            observer: None,
        };
        let session = Session::start(probes, hit_cost, options).await?;
        let pods = PodResolver::from_environment(
            config.kubernetes,
            ResolverOptions::new(session.metrics().kubernetes_api_errors_total.clone()),
        )
        .map_err(|e| UsageError(format!("Kubernetes pod names: {e}")))?;
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
            make_sites: false,
            hot: plan::HotProbes::from_names(&config.hot_probes),
        };
        eprintln!(
            "mapwatch: watching Go processes on this node ({}); {}",
            if following {
                "exec/exit notices + /proc scans"
            } else {
                "/proc scans only"
            },
            session.metrics_at()
        );
        let mut daemon = Daemon {
            request,
            tracker: Tracker::new(),
            analyses: HashMap::new(),
            logged: HashSet::new(),
            pods,
            own_pid: std::process::id(),
            filters: config.filters(),
            config,
            session,
        };
        daemon.rescan().await;
        daemon.session.set_ready(true);

        let mut signals = StopSignals::install()?;
        let mut rescan = tokio::time::interval(daemon.config.rescan_interval);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rescan.tick().await;
        let why = loop {
            tokio::select! {
                why = signals.recv() => break why,
                _ = rescan.tick() => {
                    daemon.rescan().await;
                    daemon.forget_unused_analyses();
                }
                Some(batch) = notice_rx.recv() => daemon.on_notices(batch).await,
            }
        };
        info!(why, "stopping");
        daemon.session.set_ready(false);
        let stopped = daemon.into_session().stop().await?;
        eprintln!("mapwatch: {why}; {}", stopped.timings());
        Ok(())
    }

    /// The session, everything else dropped (the pod resolver, the caches).
    fn into_session(self) -> Session {
        self.session
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
        self.session
            .metrics()
            .attached_processes
            .set(attached as i64);
    }

    /// Attaches to `process` if it runs a supported Go binary the filters admit.
    async fn examine(&mut self, process: ProcessInfo) {
        let pid = process.pid;
        if pid == self.own_pid || process.exe.is_none() {
            return;
        }
        let exe = exe_path(pid);
        // Opened once: its name, cache key, analysis and the identity the probes are
        // checked against all come from this file. Opened again for each, a process that
        // exec'd in between was analysed as one program and keyed, named or attached as
        // another (tests/placement.rs: a cached plan of one binary under the other's
        // key refused every later process of it).
        let Ok(file) = std::fs::File::open(&exe) else {
            return;
        };
        let Some(key) = BinaryKey::of(&file) else {
            return;
        };
        let binary_name = binary_label_of(&file, pid);
        // The binary-name filter first: it needs no analysis.
        if !self.filters.admits_binary(&binary_name) {
            return;
        }
        let analysis = match self.analysis(key, file, &exe, &binary_name).await {
            Ok(analysis) => analysis,
            Err(Refusal::NotGo | Refusal::Unreadable) => return,
            Err(Refusal::Unsupported { reason }) => {
                self.session.metrics().count_attach_error(reason);
                return;
            }
        };
        let mut identity =
            WorkloadIdentity::host(binary_name.clone(), analysis.plan.go_version.clone());
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
        let target = Target {
            pid,
            file: key.file,
            binary: Arc::clone(&analysis.binary),
            plan: Arc::clone(&analysis.plan),
            labels: identity.into(),
        };
        match self.session.attach(target).await {
            Ok(count) => {
                self.tracker.attached_to(pid, key.file);
                info!(pid, probes = count, "attached");
            }
            // A process that exits while probes are being attached is ordinary churn;
            // anything else is worth one line per binary.
            Err(e @ AttachError::ProcessGone { .. }) => debug!(pid, "{e}"),
            Err(e) => {
                let message = format!("process {pid}: {e}");
                self.log_once(&binary_name, e.reason(), &message);
            }
        }
    }

    /// The cached analysis of the binary at `exe`, analysing it on first sight.
    async fn analysis(
        &mut self,
        key: BinaryKey,
        file: std::fs::File,
        exe: &Path,
        binary_name: &str,
    ) -> Result<Arc<Analysis>, Refusal> {
        if let Some(cached) = self.analyses.get_mut(&key) {
            cached.last_used = Instant::now();
            return cached.result.clone();
        }
        let path = exe.to_path_buf();
        let request = self.request;
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || analyse(&path, file, request))
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
            let cached = CachedAnalysis {
                result: result.clone(),
                last_used: Instant::now(),
            };
            self.analyses.insert(key, cached);
        }
        result
    }

    /// Drops the analyses no running process uses (the aggregator's symbolizers hold
    /// the binary while a process of it is profiled) and nobody asked for in two rescan
    /// intervals: long enough that a cron job's next run finds its analysis, short
    /// enough that the binaries of a node that builds and runs new ones (CI, `go
    /// test`) are let go — their mappings, and the disk space of deleted ones.
    fn forget_unused_analyses(&mut self) {
        let idle = 2 * self.config.rescan_interval;
        self.analyses.retain(|_, cached| {
            let in_use = matches!(&cached.result, Ok(a) if Arc::strong_count(&a.binary) > 1);
            in_use || cached.last_used.elapsed() < idle
        });
    }

    async fn detach(&mut self, pid: u32) {
        let started = Instant::now();
        let count = self.session.detach(pid).await;
        self.tracker.detached(pid);
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

/// Analyses and plans the open binary `path` names (blocking: reads and parses it).
fn analyse(
    path: &Path,
    file: std::fs::File,
    request: PlanRequest,
) -> Result<Analysis, (Refusal, String)> {
    let unsupported =
        |reason: AttachErrorReason, message: String| (Refusal::Unsupported { reason }, message);
    let binary = GoBinary::from_file(path, file).map_err(|e| match e {
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
        return Err(unsupported(
            AttachErrorReason::NothingToProbe,
            format!("nothing to probe ({})", plan.unavailable_summary()),
        ));
    }
    Ok(Analysis {
        binary: Arc::new(binary),
        plan: Arc::new(plan),
    })
}
