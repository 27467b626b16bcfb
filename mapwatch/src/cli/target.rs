//! One process named by the user (`attach --pid`, `record`): its executable analysed
//! and its probes planned, with every refusal phrased for the user.
use std::sync::Arc;

use super::{UsageError, session::Target};
use crate::{
    attach::{self, FileIdentity},
    discover::procs::{binary_label_of, command_name, process_start_time},
    goelf::{GoBinary, GoElfError},
    metrics::WorkloadLabels,
    plan::{self, PlanRequest},
};

/// The process `pid` ready to attach, and its start time (to notice it exiting).
pub fn analyse(pid: u32, request: PlanRequest) -> Result<(Target, u64), UsageError> {
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
    let plan = plan::plan_probes(&binary, request)
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
        )));
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
        labels,
    };
    Ok((target, start_time))
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
