//! A running Go program whose binary's mount became noexec, or went away (a lazy
//! unmount: the kernel keeps the inode for the process), is still profiled exactly:
//! mapwatch reads and probes the binary through the process (/proc/PID/exe), not
//! through a path that no longer leads to it.
mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use support::{Fixture, MAP_GROWTH_KINDS, Mapwatch, fixture, privileged};

/// A tmpfs mounted at a fresh directory, unmounted (lazily) when dropped.
struct Tmpfs {
    dir: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    fn mount() -> Tmpfs {
        let dir = std::env::temp_dir().join(format!("mapwatch-mount-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mount point");
        mount(&["-t", "tmpfs", "tmpfs", &dir.display().to_string()]);
        Tmpfs { dir, mounted: true }
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    fn remount_noexec(&self) {
        mount(&["-o", "remount,noexec", &self.path().display().to_string()]);
    }

    fn unmount_lazily(&mut self) {
        let status = Command::new("umount")
            .arg("-l")
            .arg(self.path())
            .status()
            .expect("umount");
        assert!(status.success(), "umount -l {}", self.path().display());
        self.mounted = false;
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn mount(args: &[&str]) {
    let status = Command::new("mount").args(args).status().expect("mount");
    assert!(status.success(), "mount {args:?}");
}

/// Attaches to `target` and checks that the map growths it reports are the ones
/// mapwatch counted, kind by kind.
fn profiled_exactly(target: &mut Fixture, what: &str) {
    let mapwatch = Mapwatch::attach(target.pid, &[]);
    let before = mapwatch.scrape_drained();
    let reported = target.run_workload_fields();
    let after = mapwatch.scrape_drained();
    let mut total = 0;
    for kind in MAP_GROWTH_KINDS {
        let selector = [("kind", kind)];
        let counted = after.sum("mapwatch_map_grow_total", &selector)
            - before.sum("mapwatch_map_grow_total", &selector);
        assert_eq!(
            counted,
            reported.get(kind).copied().unwrap_or(0),
            "{what}: map growth of kind {kind}"
        );
        total += counted;
    }
    assert!(total > 0, "{what}: the fixture grew no map");
    assert_eq!(after.sum("mapwatch_attach_errors_total", &[]), 0, "{what}");
    let status = mapwatch.stop();
    assert!(status.success(), "{what}: mapwatch attach: {status}");
}

#[test]
fn a_binary_on_a_mount_made_noexec_or_unmounted_is_still_profiled_exactly() {
    let Some(_kernel) = privileged("a_binary_on_a_mount_made_noexec_or_unmounted") else {
        return;
    };
    let Some(binary) = fixture("go1.24.11", "mapgrow") else {
        return;
    };
    let mut tmpfs = Tmpfs::mount();
    let copy = tmpfs.path().join("mapgrow");
    std::fs::copy(&binary, &copy).expect("copy the fixture onto the tmpfs");

    let mut noexec = Fixture::start(&copy, &[]);
    let mut vanished = Fixture::start(&copy, &[]);
    tmpfs.remount_noexec();
    profiled_exactly(&mut noexec, "binary on a mount remounted noexec");

    tmpfs.unmount_lazily();
    assert!(!copy.exists(), "{} still reachable", copy.display());
    profiled_exactly(&mut vanished, "binary on a mount that was unmounted");

    assert!(noexec.finish().success());
    assert!(vanished.finish().success());
}
