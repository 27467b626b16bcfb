//! `mapwatch attach` refuses bad targets with one clear line and exit code 2.
mod support;

use std::process::{Command, Output};

use support::{Fixture, fixture, mapwatch_command};

fn attach(pid: u32) -> Output {
    mapwatch_command()
        .args([
            "attach",
            "--pid",
            &pid.to_string(),
            "--listen",
            "127.0.0.1:0",
            "--duration",
            "1s",
        ])
        .output()
        .expect("run mapwatch")
}

fn assert_refused(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "exit code; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].contains(expected),
        "{expected:?} not in {stderr:?}"
    );
}

#[test]
fn pid_that_does_not_exist() {
    // Above the kernel's pid_max limit (4194304), so never a live process.
    let output = attach(2_000_000_000);
    assert_refused(&output, "no process with pid 2000000000");
}

#[test]
fn process_that_is_not_go() {
    let mut sleeper = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let output = attach(sleeper.id());
    sleeper.kill().ok();
    sleeper.wait().ok();
    assert_refused(&output, "is not a Go program");
}

#[test]
fn go_version_this_build_does_not_support() {
    let Some(original) = fixture("go1.22.10", "slicegrow") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("mapwatch-badver-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("slicegrow-go1.17");
    let mut bytes = std::fs::read(&original).unwrap();
    edit_build_info_version(&mut bytes, b"go1.22.10", b"go1.17.13");
    std::fs::write(&copy, &bytes).unwrap();
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let fixture = Fixture::start(&copy, &[]);
    let output = attach(fixture.pid);
    drop(fixture);
    std::fs::remove_dir_all(&dir).ok();
    assert_refused(&output, "go1.17.13 is not supported");
}

/// Rewrites the version string inside the build-info blob only (the same string also
/// sits in rodata as runtime.buildVersion, which mapwatch does not read).
fn edit_build_info_version(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    let magic = b"\xff Go buildinf:";
    let blob = bytes
        .windows(magic.len())
        .position(|w| w == magic)
        .expect("build-info magic");
    let window = &mut bytes[blob..blob + 64];
    let at = window
        .windows(from.len())
        .position(|w| w == from)
        .expect("version in build info");
    window[at..at + to.len()].copy_from_slice(to);
}

#[test]
fn missing_privileges_are_named() {
    let Some(binary) = fixture("go1.22.10", "slicegrow") else {
        return;
    };
    // As root, drop to an unprivileged user for both the target and mapwatch; as a
    // normal user, we are already unprivileged.
    let as_nobody = |cmd: &mut Command| -> Command {
        if unsafe_geteuid() == 0 {
            let mut wrapped = Command::new("setpriv");
            wrapped
                .args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "--inh-caps=-all",
                    "--",
                ])
                .arg(cmd.get_program())
                .args(cmd.get_args());
            wrapped
        } else {
            let mut same = Command::new(cmd.get_program());
            same.args(cmd.get_args());
            same
        }
    };
    let fixture = Fixture::start_command(&mut as_nobody(&mut Command::new(&binary)));
    let mut mapwatch = mapwatch_command();
    mapwatch.args([
        "attach",
        "--pid",
        &fixture.pid.to_string(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let output = as_nobody(&mut mapwatch).output().expect("run mapwatch");
    drop(fixture);
    assert_refused(&output, "CAP_BPF and CAP_PERFMON");
}

fn unsafe_geteuid() -> u32 {
    unsafe extern "C" {
        fn geteuid() -> u32;
    }
    // SAFETY: geteuid has no preconditions.
    unsafe { geteuid() }
}

/// `mapwatch run` settings: every number and duration is checked when the flags and
/// the file are merged — no value reaches a panic (a zero rescan interval did). No root
/// needed: nothing is loaded before the configuration is valid.
#[test]
fn run_settings_out_of_range_are_refused_from_flags_and_file() {
    let run = |args: &[&str]| -> Output {
        mapwatch_command()
            .args(["run", "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("run mapwatch")
    };
    for (flag, value, key) in [
        ("--rescan-interval", "0s", "rescan_interval"),
        ("--series-expiry", "0s", "series_expiry"),
        ("--max-sites", "0", "max_sites"),
        ("--max-elem-types", "100000", "max_elem_types"),
    ] {
        assert_refused(&run(&[flag, value]), key);
    }
    let file = std::env::temp_dir().join(format!("mapwatch-bad-{}.toml", std::process::id()));
    std::fs::write(&file, "rescan_interval = \"0s\"\n").unwrap();
    assert_refused(
        &run(&["--config", file.to_str().unwrap()]),
        "rescan_interval (--rescan-interval) = 0s: must be at least 1s",
    );
    let _ = std::fs::remove_file(&file);
}

/// Configs name hosts: `--listen localhost:PORT` is resolved, not refused.
#[test]
fn listen_takes_a_host_name() {
    let output = mapwatch_command()
        .args(["run", "--listen", "localhost:9433", "--print-config"])
        .output()
        .expect("run mapwatch");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("listen = \"127.0.0.1:9433\""), "{stdout}");
}

#[test]
fn a_zero_duration_is_refused() {
    let output = mapwatch_command()
        .args(["attach", "--pid", "1", "--duration", "0s"])
        .output()
        .expect("run mapwatch");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("must be more than 0s"), "{stderr}");
}
