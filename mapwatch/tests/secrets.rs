//! What a profiled process keeps to itself stays there (SECURITY.md): a secret in a Go
//! program's command line and environment must not reach anything mapwatch shows —
//! /metrics, /healthz, /readyz, or its log on stderr at the most verbose level
//! (`MAPWATCH_LOG=trace`), in JSON and in plain text, for `mapwatch run` and for
//! `mapwatch attach` (with the hot probes that walk the target's maps). Root only.
mod support;

use std::{
    collections::hash_map::RandomState,
    fs::File,
    hash::{BuildHasher as _, Hasher as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use support::{Fixture, Mapwatch, fixture, mapwatch_command, privileged};

/// The environment variable that carries the secret into the fixture.
const SECRET_VARIABLE: &str = "MAPWATCH_TEST_SECRET";

/// A value that cannot appear by chance, different on every run.
fn new_secret() -> String {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("s3cr3t-{:016x}", hasher.finish())
}

/// The mapgrow fixture (it ignores its arguments) with the secret as its argv[0], as an
/// argument and in its environment; checks the kernel shows it there, so a test that
/// finds no secret in mapwatch's output found it absent, not never given.
fn fixture_with_secret(binary: &Path, secret: &str) -> Fixture {
    let mut command = Command::new(binary);
    // Nothing of the test's own environment: a failure message quotes what leaked.
    command
        .env_clear()
        .arg0(format!("mapgrow-{secret}"))
        .arg(format!("--token={secret}"))
        .env(SECRET_VARIABLE, secret);
    let target = Fixture::start_command(&mut command);
    for file in ["cmdline", "environ"] {
        let bytes = std::fs::read(format!("/proc/{}/{file}", target.pid))
            .unwrap_or_else(|e| panic!("reading /proc/{}/{file}: {e}", target.pid));
        assert!(
            String::from_utf8_lossy(&bytes).contains(secret),
            "the fixture's /proc/PID/{file} does not hold the secret: the test proves nothing"
        );
    }
    target
}

/// Everything a client of the port gets: the raw bodies of the three endpoints.
fn endpoints(daemon: &Mapwatch) -> Vec<(String, String)> {
    ["/metrics", "/healthz", "/readyz"]
        .into_iter()
        .map(|path| {
            let (status, body) = daemon.get_text(path);
            assert_eq!(status, 200, "GET {path}: {body}");
            (format!("GET {path}"), body)
        })
        .collect()
}

/// Fails, naming where, if `secret` is anywhere in `outputs`.
fn assert_no_secret(what: &str, secret: &str, outputs: &[(String, String)]) {
    // The secret's distinctive part too: a truncated or re-encoded copy is a leak.
    let tail = secret.trim_start_matches("s3cr3t-");
    for (source, text) in outputs {
        for needle in [secret, tail] {
            if let Some(at) = text.find(needle) {
                let line = text[..at].lines().count().max(1);
                // Some context, the secret masked: test logs are kept and shared.
                let start = text[..at]
                    .char_indices()
                    .rev()
                    .take(120)
                    .last()
                    .map_or(at, |(i, _)| i);
                let end = text[at..]
                    .char_indices()
                    .nth(needle.len() + 60)
                    .map_or(text.len(), |(i, _)| at + i);
                let context = text[start..end].replace(needle, "<SECRET>");
                panic!(
                    "{what}: the profiled process's secret is in {source} (line {line}): \
                     …{context:?}…"
                );
            }
        }
    }
}

/// stdout goes to a file (nobody drains a pipe while the test scrapes); returns it.
fn stdout_to_file(command: &mut Command, name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("mapwatch-secrets-{}-{name}", std::process::id()));
    command.stdout(File::create(&path).expect("create stdout file"));
    path
}

/// Runs `command` (a mapwatch command line), lets the fixture's workload run under it,
/// and returns every output a user or a scraper sees.
fn profile(
    command: Command,
    target: &mut Fixture,
    stdout: &Path,
    attached: impl Fn(&support::Scrape) -> bool,
) -> Vec<(String, String)> {
    let daemon = Mapwatch::start(command);
    daemon.scrape_until("the fixture to be attached", &attached);
    let done = target.run_workload_fields();
    assert!(
        done["to_small"] + done["double"] > 0,
        "no map growth: {done:?}"
    );
    // Series with every label a workload gives them, call sites included (the
    // fixture's done line grows a slice).
    daemon.scrape_until("the fixture's map and slice growth", |s| {
        s.sum("mapwatch_map_grow_total", &[]) > 0 && s.sum("mapwatch_site_grow_total", &[]) > 0
    });
    let mut outputs = endpoints(&daemon);
    let startup = daemon.startup_output().join("");
    let (status, lines) = daemon.stop_with_output();
    let log = format!("{startup}{}", lines.join("\n"));
    assert!(status.success(), "mapwatch: {status}\n{log}");
    // The most verbose level is on: what mapwatch would only say in debugging is checked.
    assert!(
        log.contains("DEBUG") || log.contains("TRACE"),
        "no debug or trace line: is MAPWATCH_LOG=trace applied?\n{log}"
    );
    eprintln!(
        "{} lines of stderr checked ({} trace)",
        log.lines().count(),
        log.lines().filter(|l| l.contains("TRACE")).count()
    );
    outputs.push(("stderr".into(), log));
    outputs.push((
        "stdout".into(),
        std::fs::read_to_string(stdout).expect("read stdout file"),
    ));
    let _ = std::fs::remove_file(stdout);
    outputs
}

/// The trace-level environment, without anything the test's own environment sets.
fn traced(command: &mut Command) {
    command
        .env("MAPWATCH_LOG", "trace")
        .env_remove("RUST_LOG")
        .env_remove("MAPWATCH_LOG_FORMAT")
        .env_remove(SECRET_VARIABLE);
}

#[test]
fn the_daemon_shows_nothing_of_a_process_command_line_or_environment() {
    let Some(_kernel) =
        privileged("the_daemon_shows_nothing_of_a_process_command_line_or_environment")
    else {
        return;
    };
    let Some(binary) = fixture("go1.24.11", "mapgrow") else {
        return;
    };
    let secret = new_secret();
    let mut target = fixture_with_secret(&binary, &secret);
    let mut command = mapwatch_command();
    command.args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--kubernetes",
        "off",
        "--include-binary",
        "mapgrow",
        // Always attached, from the start: no records held back by a duty cycle.
        "--overhead-budget",
        "100%",
        "--overhead-share",
        "100%",
        "--log-format",
        "json",
    ]);
    traced(&mut command);
    let stdout = stdout_to_file(&mut command, "run");
    let outputs = profile(command, &mut target, &stdout, |s| {
        s.sum("mapwatch_attached_processes", &[]) == 1
    });
    assert!(target.finish().success());
    assert_no_secret("mapwatch run", &secret, &outputs);
}

#[test]
fn attach_shows_nothing_of_a_process_command_line_or_environment() {
    let Some(_kernel) = privileged("attach_shows_nothing_of_a_process_command_line_or_environment")
    else {
        return;
    };
    let Some(binary) = fixture("go1.24.11", "mapgrow") else {
        return;
    };
    let secret = new_secret();
    let mut target = fixture_with_secret(&binary, &secret);
    let mut command = mapwatch_command();
    command.args([
        "attach",
        "--pid",
        &target.pid.to_string(),
        "--listen",
        "127.0.0.1:0",
        // The probes that follow map headers and buckets in the target's memory.
        "--hot-probes",
        "mapassign_fast64,mallocgc",
    ]);
    traced(&mut command);
    let stdout = stdout_to_file(&mut command, "attach");
    let outputs = profile(command, &mut target, &stdout, |_| true);
    assert!(target.finish().success());
    assert_no_secret("mapwatch attach", &secret, &outputs);
}
