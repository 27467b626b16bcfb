//! The daemon's log as a pod shows it (stderr is a pipe): no colour escapes, one JSON
//! object per line with `--log-format json`, and at the default level it says when it
//! attaches to a process.
mod support;

use support::{Fixture, Mapwatch, fixture, mapwatch_command, privileged};

/// Runs the daemon with `extra` flags while a fixture runs; returns its stderr lines.
fn daemon_log(extra: &[&str]) -> Option<Vec<String>> {
    let binary = fixture("go1.24.11", "mapgrow")?;
    let target = Fixture::start(&binary, &[]);
    let mut command = mapwatch_command();
    command
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--kubernetes",
            "off",
            "--include-binary",
            "mapgrow",
        ])
        .args(extra)
        .env_remove("MAPWATCH_LOG")
        .env_remove("RUST_LOG")
        .env_remove("MAPWATCH_LOG_FORMAT");
    let daemon = Mapwatch::start(command);
    daemon.scrape_until("the fixture to be attached", |s| {
        s.sum("mapwatch_attached_processes", &[]) == 1
    });
    let (status, lines) = daemon.stop_with_output();
    assert!(status.success(), "mapwatch run: {status}");
    assert!(target.finish().success());
    Some(lines)
}

#[test]
fn logs_have_no_colour_escapes_and_say_what_was_attached() {
    let Some(_kernel) = privileged("logs_have_no_colour_escapes_and_say_what_was_attached") else {
        return;
    };
    let Some(lines) = daemon_log(&[]) else {
        return;
    };
    for line in &lines {
        assert!(
            !line.contains('\u{1b}'),
            "colour escape in a piped log: {line:?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("INFO") && l.contains(" attached pid=")),
        "no attach logged at the default level:\n{}",
        lines.join("\n")
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let Some(_kernel) = privileged("json_logs_are_one_object_per_line") else {
        return;
    };
    let Some(lines) = daemon_log(&["--log-format", "json"]) else {
        return;
    };
    let mut objects = 0;
    for line in &lines {
        // mapwatch's own one-line messages (its address, its exit summary) are for a
        // person at a terminal and stay plain.
        if line.starts_with("mapwatch: ") {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(value["level"].is_string(), "no level: {line}");
        objects += 1;
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"attached\"") || l.contains("attached")),
        "no attach logged:\n{}",
        lines.join("\n")
    );
    assert!(objects > 0, "no JSON log lines:\n{}", lines.join("\n"));
}
