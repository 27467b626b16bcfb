//! `mapwatch attach --pid P`: profile one process until stopped.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::info;

use super::{AttachArgs, UsageError, session::Session};
use crate::{
    aggregate::{Aggregator, Input, SlotRegistration, Workload},
    attach::{self, AttachError, FileIdentity, Probes},
    budget::{
        self, BudgetConfig, Controller,
        task::{BudgetInput, BudgetTask},
    },
    discover::procs::{binary_label, command_name, process_start_time, read_proc_text},
    goelf::{GoBinary, GoElfError},
    metrics::{Metrics, WorkloadLabels, http},
    plan::{self, PlanRequest},
    symbolize::Symbolizer,
};

/// How often the reader drains the ring buffer when no wake-up came.
const DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// How often the target's liveness is checked.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(250);

pub fn run(args: AttachArgs) -> anyhow::Result<()> {
    let pid = args.pid;
    let start_time = process_start_time(pid).ok_or_else(|| {
        UsageError(format!(
            "no process with pid {pid}: check the pid (e.g. with `pgrep -a NAME`)"
        ))
    })?;
    let exe = attach::exe_path(pid);
    let identity = FileIdentity::of(&exe).map_err(|e| exe_error(pid, &e))?;
    let binary = GoBinary::open(&exe).map_err(|e| match e {
        GoElfError::NotGo { .. } => UsageError(format!(
            "process {pid} ({}) is not a Go program: its executable has no Go build info",
            command_name(pid)
        )),
        GoElfError::Io { source, .. } => exe_error(pid, &source),
        other => UsageError(format!("process {pid}: {other}")),
    })?;
    let plan = plan::plan_probes(
        &binary,
        PlanRequest {
            slice_growth: true,
            map_growth: true,
            stw_gc: true,
            exact: args.exact,
            hot: plan::HotProbes::from_names(&args.hot_probes),
        },
    )
    .map_err(|e| UsageError(format!("process {pid}: {e}")))?;
    for unavailable in &plan.unavailable {
        eprintln!(
            "mapwatch: {} unavailable: {}",
            unavailable.signal, unavailable.reason
        );
    }
    if plan.probes.is_empty() {
        let reasons: Vec<String> = plan
            .unavailable
            .iter()
            .map(|u| format!("{}: {}", u.signal, u.reason))
            .collect();
        return Err(UsageError(format!(
            "process {pid}: nothing to probe ({})",
            reasons.join("; ")
        ))
        .into());
    }
    let labels = WorkloadLabels {
        binary: binary_label(pid),
        go_version: plan.go_version.clone(),
        ..Default::default()
    };
    // Names for what the probes see: type pointers and return addresses are run-time
    // addresses, shifted by the load bias in PIE binaries.
    let proc_maps = read_proc_text(format!("/proc/{pid}/maps")).unwrap_or_default();
    let bias = binary.load_bias(&proc_maps, identity.ino).unwrap_or(0);
    let symbolizer = Box::new(Symbolizer::new(
        Arc::new(binary),
        bias,
        plan.offsets.as_ref(),
    ));

    let mut probes = Probes::load().map_err(|e| match e {
        AttachError::Privileges(p) => anyhow::Error::from(UsageError(p.to_string())),
        other => anyhow::Error::from(other),
    })?;
    let hit_cost = crate::budget::HitCost::calibrate(&mut probes);
    let budget_config = BudgetConfig {
        per_process: args.overhead_budget.map_or(1.0, |b| b.fraction()),
        share_of_process: None,
        node: None,
        enforce: args.overhead_budget.is_some(),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let metrics = Arc::new(Metrics::new().context("registering metrics")?);
        let ready = Arc::new(AtomicBool::new(false));
        let hook = attach::scrape_hook(probes.counters());
        let (addr, server) = http::bind(args.listen, Arc::clone(&metrics), Arc::clone(&ready), hook)
            .map_err(|e| UsageError(format!("cannot listen on {}: {e}", args.listen)))?;
        let server = tokio::spawn(server);
        if let Some(logger) = probes.take_logger() {
            tokio::spawn(attach::reader::forward_logs(logger));
        }

        let (to_aggregator, from_probes) = mpsc::channel::<Input>(64);
        let aggregator = tokio::spawn(Aggregator::new(Arc::clone(&metrics)).run(from_probes));

        let workload = Arc::new(Workload {
            labels,
            facts: plan.facts,
            exact: args.exact,
        });
        let slots = probes.reserve_slots(&plan)?;
        // Registered before attaching: no record can precede its slot's metadata.
        to_aggregator
            .send(Input::Symbolizer(pid, symbolizer))
            .await
            .context("aggregator stopped")?;
        to_aggregator
            .send(Input::Register(SlotRegistration::for_plan(pid, &plan, &slots, &workload)))
            .await
            .context("aggregator stopped")?;
        let new_probes = match probes.attach_process(pid, identity, &plan, &slots) {
            Ok(new_probes) => new_probes,
            Err(e) => {
                metrics.count_attach_error(e.reason());
                return Err(anyhow::Error::from(e).context(format!("attaching to process {pid}")));
            }
        };
        metrics.attached_processes.set(1);
        let groups = budget::groups_for_plan(&plan, &slots, hit_cost);

        let ring = probes.take_ring_buf().context("ring buffer already taken")?;
        let counters = probes.counters();
        let probes = Arc::new(std::sync::Mutex::new(probes));
        let (to_budget, budget_inputs) = mpsc::channel::<BudgetInput>(4);
        let (stop_budget, budget_stop) = watch::channel(false);
        let budget_task = tokio::spawn(
            BudgetTask {
                controller: Controller::new(budget_config, budget::task::seed()),
                probes: Arc::clone(&probes),
                counters,
                to_aggregator: to_aggregator.clone(),
                metrics: Arc::clone(&metrics),
            }
            .run(budget_inputs, budget_stop),
        );
        to_budget
            .send(BudgetInput::Attached { pid, labels: workload.labels.clone(), groups })
            .await
            .context("budget task stopped")?;
        let (stop_reader, stop_signal) = watch::channel(false);
        let reader = tokio::spawn(attach::reader::run(ring, to_aggregator, DRAIN_INTERVAL, stop_signal));
        ready.store(true, Ordering::Release);
        eprintln!(
            "mapwatch: attached {} probe(s) to pid {pid} ({}, {}); metrics at http://{addr}/metrics",
            new_probes.len(),
            workload.labels.binary,
            workload.labels.go_version
        );

        let why = wait_for_stop(pid, start_time, args.duration).await?;
        info!(%why, "stopping");
        drop(to_budget);
        let session = Session {
            stop_budget,
            budget_task,
            probes,
            stop_reader,
            reader,
            aggregator,
            metrics: Arc::clone(&metrics),
        };
        let stopped = session.stop().await?;
        eprintln!(
            "mapwatch: {why}; {}. {} {}.",
            stopped.timings(),
            summary(&metrics),
            budget::task::summary(&stopped.reports)
        );
        server.abort();
        Ok(())
    })
}

fn exe_error(pid: u32, error: &std::io::Error) -> UsageError {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied => UsageError(format!(
            "cannot read /proc/{pid}/exe: permission denied; {}",
            crate::attach::privileges::unreadable_exe_advice()
        )),
        std::io::ErrorKind::NotFound => UsageError(format!(
            "process {pid} has no executable (a kernel thread, or it exited)"
        )),
        _ => UsageError(format!("cannot read /proc/{pid}/exe: {error}")),
    }
}

async fn wait_for_stop(
    pid: u32,
    start_time: u64,
    duration: Option<Duration>,
) -> anyhow::Result<String> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let exited = async {
        loop {
            tokio::time::sleep(LIVENESS_INTERVAL).await;
            if process_start_time(pid) != Some(start_time) {
                break;
            }
        }
    };
    Ok(tokio::select! {
        _ = sigterm.recv() => "SIGTERM".to_string(),
        _ = sigint.recv() => "interrupted".to_string(),
        _ = deadline => "duration elapsed".to_string(),
        _ = exited => format!("process {pid} exited"),
    })
}

fn summary(metrics: &Metrics) -> String {
    let sum = |family: &prometheus::IntCounterVec| -> u64 {
        use prometheus::core::Collector as _;
        family
            .collect()
            .iter()
            .flat_map(|f| {
                f.get_metric()
                    .iter()
                    .map(|m| m.get_counter().get_value() as u64)
            })
            .sum()
    };
    format!(
        "{} slice growths ({} bytes) seen.",
        sum(&metrics.slice_grow_total),
        sum(&metrics.slice_grow_bytes_total)
    )
}
