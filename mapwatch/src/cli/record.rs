//! `mapwatch record (--pid P | -- CMD ARGS…)`: every probe on, every event decoded and
//! written to a record file (record/) for `mapwatch report`.
use std::{
    io::{BufWriter, IsTerminal as _, Write as _},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;

use super::{
    RecordArgs, UsageError,
    session::{self, Listen, Session, SessionOptions, StopSignals, Target, symbolizer_for},
    target,
};
use crate::{
    aggregate::{LabelLimits, monotonic_ns, observe::Observer},
    budget::BudgetConfig,
    discover::procs::process_start_time,
    plan::{self, PlanRequest},
    record::{
        capture::{Capture, Progress},
        format::{FORMAT_VERSION, Header, ProbeInfo, Summary, TargetInfo},
        write::RecordWriter,
    },
};

const DRAIN_INTERVAL: Duration = Duration::from_millis(50);
const LIVENESS_INTERVAL: Duration = Duration::from_millis(250);
/// Batches of decoded events that may wait for the file writer before some are
/// dropped (and counted): ~seconds of a busy target.
const OBSERVED_BATCHES: usize = 4096;
/// A started command still running when the capture ends gets SIGTERM, then this long
/// before SIGKILL.
const COMMAND_GRACE: Duration = Duration::from_secs(5);

/// The program being recorded: one named by pid, or one mapwatch started.
enum Recorded {
    Pid { start_time: u64 },
    Started { child: Child, command: Vec<String> },
}

pub fn run(args: RecordArgs) -> anyhow::Result<()> {
    let request = PlanRequest {
        slice_growth: true,
        map_growth: true,
        stw_gc: true,
        // RET probes too: growslice's result chains a slice's growths.
        exact: true,
        make_sites: true,
        hot: plan::HotProbes::default(),
    };
    let (target, recorded) = match args.pid {
        Some(pid) => {
            let (target, start_time) = target::analyse(pid, request)?;
            (target, Recorded::Pid { start_time })
        }
        None => {
            let child = start_stopped(&args.command)?;
            match target::analyse(child.id(), request) {
                Ok((target, _)) => (
                    target,
                    Recorded::Started {
                        child,
                        command: args.command.clone(),
                    },
                ),
                Err(e) => {
                    kill(child);
                    return Err(e.into());
                }
            }
        }
    };
    let mut target = target;
    plan::walk_stacks(Arc::make_mut(&mut target.plan), args.stack_depth);
    let duration = match (&recorded, args.duration) {
        (_, Some(d)) => Some(d),
        (Recorded::Pid { .. }, None) => Some(Duration::from_secs(30)),
        (Recorded::Started { .. }, None) => None,
    };
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.mapwatch", target.labels.binary)));
    let file = std::fs::File::create(&output).map_err(|e| {
        UsageError(format!(
            "cannot create {}: {e}; choose another file with -o",
            output.display()
        ))
    })?;
    let loaded = session::load_probes();
    let (probes, hit_cost) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            if let Recorded::Started { child, .. } = recorded {
                kill(child);
            }
            let _ = std::fs::remove_file(&output);
            return Err(e);
        }
    };
    let counters = probes.counters();
    let (observer, observed) = Observer::channel(OBSERVED_BATCHES);
    let options = SessionOptions {
        listen: Listen::Nowhere,
        drain_interval: DRAIN_INTERVAL,
        label_limits: LabelLimits::default(),
        series_expiry: None,
        series_budget: None,
        budget: BudgetConfig {
            per_process: 1.0,
            share_of_process: None,
            node: None,
            enforce: false,
        },
        exact: true,
        notices_lost: None,
        observer: Some(observer.clone()),
    };
    session::runtime()?.block_on(async move {
        let pid = target.pid;
        let symbolizer = symbolizer_for(pid, &target.file, &target.binary, &target.plan)
            .with_context(|| format!("reading process {pid}'s memory map"))?;
        let command = match &recorded {
            Recorded::Started { command, .. } => Some(command.clone()),
            Recorded::Pid { .. } => None,
        };
        let start_ns = monotonic_ns();
        let header = header(&target, start_ns, duration, command);
        let writer = RecordWriter::create(BufWriter::new(file), &header)
            .with_context(|| format!("writing {}", output.display()))?;
        let progress = Arc::new(Progress::default());
        let (stop_capture, capture_stop) = tokio::sync::watch::channel(false);
        let capture = tokio::spawn(
            Capture::new(writer, symbolizer, pid, start_ns, Arc::clone(&progress))
                .run(observed, capture_stop),
        );

        let session = Session::start(probes, hit_cost, options).await?;
        let attached = session.attach(target).await;
        let mut recorded = recorded;
        if let Recorded::Started { child, .. } = &mut recorded {
            // The command waited, stopped right after its exec, for its probes.
            resume(child.id());
        }
        let attached = attached.with_context(|| format!("attaching to process {pid}"))?;
        let started = Instant::now();
        eprintln!(
            "mapwatch: recording pid {pid} ({} probes) into {}{}",
            attached,
            output.display(),
            duration.map_or(String::new(), |d| format!(
                " for {}",
                humantime::format_duration(d)
            )),
        );
        let (why, child) = wait_for_end(pid, recorded, duration, &progress, started).await?;
        let stopped = session.stop().await?;
        let _ = stop_capture.send(true);
        let writer = capture.await.context("capture task")??;
        let events_lost = counters
            .lock()
            .expect("kernel counters")
            .totals()
            .values()
            .map(|c| c.lost)
            .sum();
        let summary = Summary {
            duration_ns: monotonic_ns().saturating_sub(start_ns),
            stopped_because: why.clone(),
            events_lost,
            observations_dropped: observer.dropped(),
        };
        let lost_note = lost_note(&summary);
        writer
            .finish(summary)
            .with_context(|| format!("writing {}", output.display()))?;
        if let Some(child) = child {
            end_command(child).await;
        }
        clear_progress_line();
        eprintln!(
            "mapwatch: {why}; {} events ({} slice growths, {} map growths) in {:.1} s, \
             {}{lost_note}. Read it with: mapwatch report {}",
            progress.events.load(Ordering::Relaxed),
            progress.slice_growths.load(Ordering::Relaxed),
            progress.map_growths.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64(),
            stopped.timings(),
            output.display(),
        );
        Ok(())
    })
}

fn header(
    target: &Target,
    start_ns: u64,
    duration: Option<Duration>,
    command: Option<Vec<String>>,
) -> Header {
    let mut probes: Vec<ProbeInfo> = Vec::new();
    for probe in &target.plan.probes {
        match probes.iter_mut().find(|p| p.probe == probe.probe) {
            Some(p) => p.sites += 1,
            None => probes.push(ProbeInfo {
                probe: probe.probe.to_string(),
                sites: 1,
                duty_cycle: 1.0,
            }),
        }
    }
    Header {
        mapwatch_version: format!("{} (format {FORMAT_VERSION})", env!("CARGO_PKG_VERSION")),
        start_unix_s: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        start_monotonic_ns: start_ns,
        duration_asked_s: duration.map(|d| d.as_secs_f64()),
        target: TargetInfo {
            pid: target.pid,
            // The path the process ran, not the /proc/PID/exe link it was read through.
            binary: std::fs::read_link(target.binary.path())
                .unwrap_or_else(|_| target.binary.path().to_path_buf())
                .display()
                .to_string(),
            build_id: target.binary.go_build_id().unwrap_or_default().to_string(),
            go_version: target.plan.go_version.clone(),
            map_implementation: format!("{:?}", target.plan.map_implementation).to_lowercase(),
            command,
        },
        probes,
    }
}

fn lost_note(summary: &Summary) -> String {
    if summary.events_lost == 0 && summary.observations_dropped == 0 {
        return String::new();
    }
    format!(
        "; NOT COMPLETE: {} records lost in the kernel (ring buffer full), {} dropped by the \
         file writer",
        summary.events_lost, summary.observations_dropped
    )
}

/// Starts `command` stopped right after its exec (PTRACE_TRACEME: the kernel stops a
/// traced process at exec), so that its probes are in place before its first
/// instruction; [`resume`] lets it go.
fn start_stopped(command: &[String]) -> Result<Child, UsageError> {
    let (program, args) = command.split_first().ok_or_else(|| {
        UsageError(
            "nothing to record: give --pid P, or a command after `--` (mapwatch record -- \
             ./myprogram ARGS)"
                .to_string(),
        )
    })?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: the closure runs in the forked child before exec and only makes one
    // async-signal-safe system call.
    unsafe {
        cmd.pre_exec(|| {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| UsageError(format!("cannot start {program}: {e}")))?;
    let mut status = 0;
    // SAFETY: waits for our own child.
    let waited = unsafe { libc::waitpid(child.id() as i32, &mut status, 0) };
    if waited == -1 || !libc::WIFSTOPPED(status) {
        return Err(UsageError(format!(
            "{program} exited before it could be recorded (wait status {status:#x})"
        )));
    }
    Ok(child)
}

/// Lets a command started by [`start_stopped`] run; must be called from the thread
/// that started it (the tracer).
fn resume(pid: u32) {
    // SAFETY: detaches our own stopped tracee, delivering no signal.
    if unsafe { libc::ptrace(libc::PTRACE_DETACH, pid as i32, 0, 0) } == -1 {
        tracing::warn!(
            "resuming process {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Ends a started command the capture outlived: SIGTERM, then SIGKILL after a grace.
async fn end_command(mut child: Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // SAFETY: signals our own child, which has not been reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let waited = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + COMMAND_GRACE;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "mapwatch: the recorded command did not stop {} s after SIGTERM; killing it",
            COMMAND_GRACE.as_secs()
        );
        kill(child);
    });
    let _ = waited.await;
}

/// Waits for Ctrl-C/SIGTERM, the duration, or the program's exit, showing progress on
/// a terminal; returns why, and a started command still to end.
async fn wait_for_end(
    pid: u32,
    recorded: Recorded,
    duration: Option<Duration>,
    progress: &Progress,
    started: Instant,
) -> anyhow::Result<(String, Option<Child>)> {
    let mut signals = StopSignals::install()?;
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let (mut child, start_time) = match recorded {
        Recorded::Pid { start_time } => (None, Some(start_time)),
        Recorded::Started { child, .. } => (Some(child), None),
    };
    let exited = async {
        loop {
            tokio::time::sleep(LIVENESS_INTERVAL).await;
            match child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => return format!("the command exited ({status})"),
                Some(Ok(None)) => {}
                Some(Err(e)) => return format!("waiting for the command: {e}"),
                None if process_start_time(pid) != start_time => {
                    return format!("process {pid} exited");
                }
                None => {}
            }
        }
    };
    let show = async {
        if !std::io::stderr().is_terminal() {
            return std::future::pending().await;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            show_progress(progress, started.elapsed(), duration);
        }
    };
    let why = tokio::select! {
        why = signals.recv() => why.to_string(),
        _ = deadline => "duration elapsed".to_string(),
        why = exited => why,
        () = show => unreachable!("progress never ends"),
    };
    Ok((why, child))
}

fn show_progress(progress: &Progress, elapsed: Duration, duration: Option<Duration>) {
    let growths = progress.slice_growths.load(Ordering::Relaxed)
        + progress.map_growths.load(Ordering::Relaxed);
    let of = duration.map_or(String::new(), |d| format!(" / {} s", d.as_secs()));
    eprint!(
        "\rmapwatch: {} events, {:.0} growths/s, {} KiB written, {} s{of}   ",
        progress.events.load(Ordering::Relaxed),
        growths as f64 / elapsed.as_secs_f64().max(1e-3),
        progress.bytes_written.load(Ordering::Relaxed) / 1024,
        elapsed.as_secs(),
    );
    let _ = std::io::stderr().flush();
}

fn clear_progress_line() {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
}
