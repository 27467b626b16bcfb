//! Processes the benchmarks start and watch: CPU time and memory from /proc, a
//! protocol fixture (ready/start/done), mapwatch's /metrics.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Clock ticks per second of /proc/PID/stat's utime and stime (USER_HZ: 100 on every
/// Linux architecture mapwatch supports).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system, all threads, dead ones included) a process has used:
/// /proc/PID/stat fields 14 and 15. The kernel derives them from the scheduler's
/// nanosecond runtime, so the total is exact to one tick (10 ms).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_seconds(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))
}

fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// (VmRSS, VmHWM) in MiB from /proc/PID/status.
pub fn memory_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    };
    Ok((
        field("VmRSS:").context("VmRSS")?,
        field("VmHWM:").context("VmHWM")?,
    ))
}

/// Sends a signal by pid (only to processes the bench started).
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status();
}

/// Waits up to `limit` for a child to exit; kills it after that.
pub fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// `taskset -c CPU program args…`: the bench pins the target to one core and the
/// load generator and profiler to the other, so they compete as little as 2 CPUs allow.
pub fn pinned(cpu: u32, program: &Path) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", &cpu.to_string()]).arg(program);
    command
}

/// A fixture speaking the protocol of fixtures/README.md.
pub struct Fixture {
    pub child: Child,
    pub pid: u32,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Fixture {
    /// Starts it and waits for "ready <pid>".
    pub fn start(mut command: Command) -> anyhow::Result<Fixture> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let pid = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("fixture said {line:?}, not ready <pid>"))?;
        Ok(Fixture {
            child,
            pid,
            stdin,
            stdout,
        })
    }

    /// Says "start" without waiting for the workload to end.
    pub fn start_workload(&mut self) -> anyhow::Result<()> {
        writeln!(self.stdin.as_mut().context("stdin closed")?, "start")?;
        Ok(())
    }

    /// Says "start", waits for "done k=v …" and returns the fields.
    pub fn run(&mut self) -> anyhow::Result<Vec<(String, i64)>> {
        writeln!(self.stdin.as_mut().context("stdin closed")?, "start")?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let Some(fields) = line.trim().strip_prefix("done") else {
            bail!("fixture said {line:?}, not done …");
        };
        Ok(fields
            .split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect())
    }

    /// Closes stdin (the fixture exits) and waits.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        wait_or_kill(&mut self.child, Duration::from_secs(10));
    }
}

/// The value of field `key` in a done line.
pub fn field(fields: &[(String, i64)], key: &str) -> anyhow::Result<i64> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| *v)
        .with_context(|| format!("no {key}= in the done line"))
}

/// GET http://addr/path; None if it fails.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut response = agent.get(&format!("http://{addr}{path}")).call().ok()?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().ok()?;
    Some((status, body))
}

/// Sum of every sample of `metric` (any labels) whose label text contains `filter`.
pub fn metric_sum(exposition: &str, metric: &str, filter: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every sample of `metric` summed per value of `label` (e.g. hits per probe).
pub fn metric_by_label(
    exposition: &str,
    metric: &str,
    label: &str,
) -> std::collections::BTreeMap<String, f64> {
    let mut sums = std::collections::BTreeMap::new();
    let key = format!("{label}=\"");
    for line in exposition.lines().filter(|l| {
        l.strip_prefix(metric)
            .is_some_and(|rest| rest.starts_with('{'))
    }) {
        let Some(start) = line.find(&key).map(|i| i + key.len()) else {
            continue;
        };
        let Some(len) = line[start..].find('"') else {
            continue;
        };
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        *sums
            .entry(line[start..start + len].to_string())
            .or_default() += value;
    }
    sums
}

/// Polls /metrics until `metric` (summed) satisfies `done`; returns when it did.
pub fn wait_for_metric(
    addr: &str,
    metric: &str,
    limit: Duration,
    done: impl Fn(f64) -> bool,
) -> Option<Instant> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some((200, body)) = http_get(addr, "/metrics")
            && done(metric_sum(&body, metric, ""))
        {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_from_stat_with_odd_command_name() {
        let stat = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 3 0";
        assert_eq!(parse_cpu_seconds(stat), Some(4.0));
    }

    #[test]
    fn metric_sum_adds_matching_series_only() {
        let text = "# HELP mapwatch_x help\n\
                    mapwatch_x{probe=\"a\"} 2\n\
                    mapwatch_x{probe=\"b\"} 3\n\
                    mapwatch_x_total 100\n\
                    mapwatch_y 7\n";
        assert_eq!(metric_sum(text, "mapwatch_x", ""), 5.0);
        assert_eq!(metric_sum(text, "mapwatch_x", "probe=\"b\""), 3.0);
        assert_eq!(metric_sum(text, "mapwatch_y", ""), 7.0);
    }

    #[test]
    fn metric_by_label_groups_series() {
        let text = "mapwatch_h{binary=\"a\",probe=\"x\"} 2\n\
                    mapwatch_h{binary=\"b\",probe=\"x\"} 3\n\
                    mapwatch_h{binary=\"a\",probe=\"y\"} 1\n\
                    mapwatch_h_other{probe=\"z\"} 9\n";
        let sums = metric_by_label(text, "mapwatch_h", "probe");
        assert_eq!(sums.len(), 2);
        assert_eq!(sums["x"], 5.0);
        assert_eq!(sums["y"], 1.0);
    }

    #[test]
    fn done_fields() {
        let fields = vec![("grows".to_string(), 5)];
        assert_eq!(field(&fields, "grows").unwrap(), 5);
        assert!(field(&fields, "cpu_ns").is_err());
    }
}
