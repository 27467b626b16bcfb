//! `mapwatch attach --pid P`: profile one process until stopped.
use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tracing::info;

use super::{
    AttachArgs, UsageError,
    session::{self, Listen, Session, SessionOptions, StopSignals, Target},
};
use crate::{
    aggregate::LabelLimits,
    attach::{self, FileIdentity},
    budget::{self, BudgetConfig},
    discover::procs::{binary_label_of, command_name, process_start_time},
    goelf::{GoBinary, GoElfError},
    metrics::{Metrics, WorkloadLabels},
    plan::{self, PlanRequest},
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
    // Opened once, so that the identity probes are checked against, the name and the
    // analysis are of one file even if the process execs meanwhile.
    let file = std::fs::File::open(&exe).map_err(|e| exe_error(pid, &e))?;
    let identity = FileIdentity::of_file(&file).map_err(|e| exe_error(pid, &e))?;
    let binary_name = binary_label_of(&file, pid);
    let binary = GoBinary::from_file(&exe, file).map_err(|e| match e {
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
        return Err(UsageError(format!(
            "process {pid}: nothing to probe ({})",
            plan.unavailable_summary()
        ))
        .into());
    }
    let labels = WorkloadLabels {
        binary: binary_name,
        go_version: plan.go_version.clone(),
        ..Default::default()
    };
    let target = Target {
        pid,
        file: identity,
        binary: Arc::new(binary),
        plan: Arc::new(plan),
        labels: labels.clone(),
    };

    let (probes, hit_cost) = session::load_probes()?;
    let options = SessionOptions {
        listen: Listen::Address(args.listen),
        drain_interval: DRAIN_INTERVAL,
        label_limits: LabelLimits::default(),
        series_expiry: None,
        series_budget: None,
        budget: BudgetConfig {
            per_process: args.overhead_budget.map_or(1.0, |b| b.fraction()),
            share_of_process: None,
            node: None,
            enforce: args.overhead_budget.is_some(),
        },
        exact: args.exact,
        notices_lost: None,
    };
    session::runtime()?.block_on(async move {
        let session = Session::start(probes, hit_cost, options).await?;
        let attached = session
            .attach(target)
            .await
            .with_context(|| format!("attaching to process {pid}"))?;
        session.metrics().attached_processes.set(1);
        session.set_ready(true);
        eprintln!(
            "mapwatch: attached {attached} probe(s) to pid {pid} ({}, {}); metrics at http://{}/metrics",
            labels.binary,
            labels.go_version,
            session.addr()
        );

        let why = wait_for_stop(pid, start_time, args.duration).await?;
        info!(%why, "stopping");
        let stopped = session.stop().await?;
        eprintln!(
            "mapwatch: {why}; {}. {} {}.",
            stopped.timings(),
            summary(&stopped.metrics),
            budget::task::summary(&stopped.reports)
        );
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
    let mut signals = StopSignals::install()?;
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
        why = signals.recv() => why.to_string(),
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
