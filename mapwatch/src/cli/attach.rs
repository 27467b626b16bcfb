//! `mapwatch attach --pid P`: profile one process until stopped.
use std::time::Duration;

use anyhow::Context as _;
use tracing::info;

use super::{
    AttachArgs,
    session::{self, Listen, Session, SessionOptions, StopSignals},
    target,
};
use crate::{
    aggregate::LabelLimits,
    budget::{self, BudgetConfig},
    discover::procs::process_start_time,
    metrics::Metrics,
    plan::{self, PlanRequest},
};

/// How often the reader drains the ring buffer when no wake-up came.
const DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// How often the target's liveness is checked.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(250);

pub fn run(args: AttachArgs) -> anyhow::Result<()> {
    let pid = args.pid;
    let (target, start_time) = target::analyse(
        pid,
        PlanRequest {
            slice_growth: true,
            map_growth: true,
            stw_gc: true,
            exact: args.exact,
            make_sites: false,
            hot: plan::HotProbes::from_names(&args.hot_probes),
        },
    )?;
    let labels = target.labels.clone();

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
        observer: None,
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
            "mapwatch: attached {attached} probe(s) to pid {pid} ({}, {}); {}",
            labels.binary,
            labels.go_version,
            session.metrics_at()
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
