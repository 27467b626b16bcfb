//! mapwatch with exactly the capabilities the DaemonSet grants and nothing else — as
//! uid 0 (what the DaemonSet runs as) and as an ordinary user holding them as ambient
//! capabilities — profiles another user's process exactly; without any one of them it
//! refuses with a message that names it. And the perf-event fallback (kernels without
//! uprobe_multi links) still counts exactly.
mod support;

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf, process::Command};

use support::{Fixture, Mapwatch, mapwatch_command, privileged};

const GO: &str = "go1.24.11";
const GROW: &str = "mapwatch_slice_grow_total";

/// The capabilities deploy/base/daemonset.yaml adds (`add: ["BPF", …]`), as `BPF`…
fn documented_capabilities() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let daemonset = std::fs::read_to_string(root.join("deploy/base/daemonset.yaml"))
        .expect("read deploy/base/daemonset.yaml");
    let line = daemonset
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("add: ["))
        .expect("the DaemonSet adds capabilities");
    let caps: Vec<String> = line
        .trim_start_matches("add: [")
        .trim_end_matches(']')
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_string())
        .collect();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("read README.md");
    for cap in &caps {
        assert!(
            readme.contains(&format!("CAP_{cap}")),
            "README.md does not name CAP_{cap}, which the DaemonSet grants"
        );
    }
    caps
}

/// `mapwatch` under setpriv with exactly `caps` (effective, permitted, inheritable,
/// ambient and bounding), as root or as user nobody.
fn mapwatch_with(caps: &[String], as_root: bool) -> Command {
    let list: String = caps
        .iter()
        .map(|c| format!(",+{}", c.to_lowercase()))
        .collect();
    let mut command = Command::new("setpriv");
    if !as_root {
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    }
    command.args([
        format!("--inh-caps=-all{list}"),
        format!("--ambient-caps=-all{list}"),
        format!("--bounding-set=-all{list}"),
    ]);
    command.arg(mapwatch_command().get_program());
    command
}

/// `attach --pid PID` on a free loopback port.
fn attach_args(pid: u32) -> [String; 5] {
    [
        "attach",
        "--pid",
        &pid.to_string(),
        "--listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
}

/// A copy of the slicegrow fixture that only its owner, another user, may read: opening
/// it takes CAP_DAC_READ_SEARCH, and its process (run by root) takes CAP_SYS_PTRACE.
struct PrivateFixture {
    dir: PathBuf,
    binary: PathBuf,
}

impl PrivateFixture {
    fn new(tag: &str) -> Option<PrivateFixture> {
        let original = support::fixture(GO, "slicegrow")?;
        let dir = std::env::temp_dir().join(format!(
            "mapwatch-least-privilege-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the fixture's directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let binary = dir.join("slicegrow");
        std::fs::copy(&original, &binary).expect("copy the fixture");
        std::os::unix::fs::chown(&binary, Some(4242), Some(4242)).expect("chown the fixture");
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o700)).unwrap();
        Some(PrivateFixture { dir, binary })
    }
}

impl Drop for PrivateFixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the fixture's workload under `command` (a `mapwatch` to which `attach --pid …`
/// is appended) and checks that every growth the fixture reports was counted.
fn assert_exact_under(mut command: Command, fixture: &PrivateFixture, what: &str) {
    let mut target = Fixture::start(&fixture.binary, &[]);
    command.args(attach_args(target.pid));
    let mapwatch = Mapwatch::start(command);
    let before = mapwatch.scrape_drained();
    let reported = target.run_workload();
    let after = mapwatch.scrape_drained();
    let grows = after.sum(GROW, &[]) - before.sum(GROW, &[]);
    assert!(reported.grows > 0, "{what}: the fixture did no growth");
    assert_eq!(grows, reported.grows, "{what}: growslice calls");
    assert_eq!(
        after.sum("mapwatch_attach_errors_total", &[]),
        0,
        "{what}: attach errors"
    );
    let status = mapwatch.stop();
    assert!(status.success(), "{what}: mapwatch exited with {status}");
    assert!(target.finish().success(), "{what}: the fixture failed");
    assert_eq!(support::uprobe_links(), 0, "{what}: links left behind");
}

#[test]
fn attach_is_exact_with_only_the_documented_capabilities() {
    let Some(_kernel) = privileged("attach_is_exact_with_only_the_documented_capabilities") else {
        return;
    };
    let caps = documented_capabilities();
    let Some(fixture) = PrivateFixture::new("exact") else {
        return;
    };
    for as_root in [true, false] {
        let who = if as_root { "uid 0" } else { "user nobody" };
        assert_exact_under(
            mapwatch_with(&caps, as_root),
            &fixture,
            &format!("{who} with {caps:?}"),
        );
    }
}

#[test]
fn each_missing_capability_is_named() {
    let Some(_kernel) = privileged("each_missing_capability_is_named") else {
        return;
    };
    let caps = documented_capabilities();
    let Some(fixture) = PrivateFixture::new("missing") else {
        return;
    };
    let target = Fixture::start(&fixture.binary, &[]);
    for as_root in [true, false] {
        for dropped in &caps {
            let kept: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
            let output = mapwatch_with(&kept, as_root)
                .args(attach_args(target.pid))
                .args(["--duration", "1s"])
                .output()
                .expect("run mapwatch");
            let stderr = String::from_utf8_lossy(&output.stderr);
            let who = if as_root { "uid 0" } else { "user nobody" };
            assert!(
                !output.status.success(),
                "{who} without CAP_{dropped}: mapwatch succeeded:\n{stderr}"
            );
            assert!(
                stderr.contains(&format!("CAP_{dropped}")),
                "{who} without CAP_{dropped}: the error does not name it:\n{stderr}"
            );
        }
    }
    assert!(target.finish().success(), "the fixture failed");
    assert_eq!(support::uprobe_links(), 0, "links left behind");
}

/// Kernels before 6.6 have no uprobe_multi links: mapwatch falls back to one perf-event
/// uprobe per site (`MAPWATCH_UPROBE_LINKS=perf-event` forces that path here).
#[test]
fn perf_event_fallback_is_exact_and_names_what_it_needs() {
    let Some(_kernel) = privileged("perf_event_fallback_is_exact_and_names_what_it_needs") else {
        return;
    };
    let Some(fixture) = PrivateFixture::new("perf") else {
        return;
    };
    let mut as_root = mapwatch_command();
    as_root.env("MAPWATCH_UPROBE_LINKS", "perf-event");
    assert_exact_under(as_root, &fixture, "perf-event uprobes as root");

    // With the documented set only, it works where the kernel lets CAP_PERFMON open
    // uprobe perf events; where it does not (Linux 6.18), the error names CAP_SYS_ADMIN.
    let target = Fixture::start(&fixture.binary, &[]);
    let output = mapwatch_with(&documented_capabilities(), true)
        .env("MAPWATCH_UPROBE_LINKS", "perf-event")
        .args(attach_args(target.pid))
        .args(["--duration", "1s"])
        .output()
        .expect("run mapwatch");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() || stderr.contains("CAP_SYS_ADMIN"),
        "perf-event uprobes refused without naming CAP_SYS_ADMIN:\n{stderr}"
    );
    assert!(target.finish().success(), "the fixture failed");
}
