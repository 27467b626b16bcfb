//! A probe is never placed where it could corrupt the target: `mapwatch run` as root
//! against Go processes whose executable changes under it.
//!
//! A uprobe is an int3 written at a file offset of an inode; placed inside an
//! instruction, or in another binary than the one planned, it corrupts the process.
//! mapwatch plans from the file a process runs (/proc/PID/exe, not its path), checks
//! that the process still runs that file and that the bytes at every planned offset are
//! the instruction it planned for, then attaches. These tests change the executable at
//! each point of that sequence:
//! - a process that execs another Go program over and over while mapwatch attaches
//!   (fixtures/execs `-bounce`: each image reports where its text differs from its
//!   file, i.e. every breakpoint in it), so that execs land between the steps;
//! - an exec forced between two steps of the daemon, every run: a fanotify permission
//!   event holds the daemon's open of the executable while the process execs
//!   ([`OpenGate`]);
//! - a process that execs once: its old image's probes go, its new image is planned
//!   afresh, both are counted exactly under their own names;
//! - a binary renamed over on disk while a process runs the old one;
//! - a binary rewritten in place with its old size and mtime after a process of it was
//!   analysed (the analysis cache's key);
//! - a process that exits: its probes go before its pid can be reused.
//!
//! What these cannot reach: `verify_bytes` refusing a process (reason
//! `bytes_mismatch`). The kernel refuses writes to a file a process runs (ETXTBSY), so
//! the bytes of the inode a process runs cannot change between analysis and attach;
//! only a stale analysis could disagree with them, and the analysis cache's key
//! (device, inode, size, mtime, ctime) changes with every write. The refusal and its
//! message are unit-tested in `attach/mod.rs`.
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::BufRead as _,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mapwatch::{
    goelf::GoBinary,
    plan::{self, PlanRequest},
};
use support::{
    Fixture, MAP_GROWTH_KINDS, Mapwatch, Scrape, bpf_link_count, fixture, mapwatch_links,
    privileged, uprobe_links,
};

fn attached(scrape: &Scrape) -> u64 {
    scrape.sum("mapwatch_attached_processes", &[])
}

/// A fresh directory for this test's binaries.
fn scratch_dir(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("mapwatch-placement-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_executable(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Every file offset any plan of `binary` may probe.
fn planned_offsets(binary: &Path) -> BTreeSet<u64> {
    plan_of(binary, PlanRequest::ALL)
        .into_iter()
        .map(|(offset, _)| offset)
        .collect()
}

/// (file offset, function) of each probe of `binary` under `request`.
fn plan_of(binary: &Path, request: PlanRequest) -> Vec<(u64, &'static str)> {
    let analysed = GoBinary::open(binary).expect("analyse the fixture");
    plan::plan_probes(&analysed, request)
        .expect("plan the fixture")
        .probes
        .iter()
        .map(|p| (p.file_offset, p.function))
        .collect()
}

/// What `mapwatch run --slice-growth=false` plans: rare probes only, each attached at
/// once as a link of its own, so the kernel's link count is the plan's length.
const RARE_ONLY: PlanRequest = PlanRequest {
    slice_growth: false,
    map_growth: true,
    stw_gc: true,
    exact: false,
    make_sites: false,
    hot: plan::HotProbes {
        map_assign: false,
        malloc: false,
    },
};

fn attach_errors(scrape: &Scrape) -> BTreeMap<String, u64> {
    scrape
        .label_values("mapwatch_attach_errors_total", "reason")
        .into_iter()
        .map(|reason| {
            let count = scrape.sum("mapwatch_attach_errors_total", &[("reason", &reason)]);
            (reason, count)
        })
        .filter(|&(_, count)| count > 0)
        .collect()
}

fn gc_cycles(scrape: &Scrape, binary: &str, go_version: &str) -> u64 {
    scrape.sum(
        "mapwatch_gc_cycles_total",
        &[("binary", binary), ("go_version", go_version)],
    )
}

/// (pause per image, execs) of each exec chain.
const CHAINS: [(&str, usize); 3] = [("5ms", 40), ("30ms", 40), ("150ms", 10)];
/// Binaries a chain goes through: copies of two Go builds, alternating.
const BOUNCERS: usize = 10;

/// The two races of a process that execs while mapwatch attaches to it, as they happen
/// (the tests below force each one every run):
/// - probes were attached by the path /proc/PID/exe, which the kernel resolved anew for
///   each link after the checks: a process that exec'd in between got the old plan's
///   probes in its new executable (seen here: the Go 1.24 build's map probes at four
///   offsets of the Go 1.22 build, each inside an instruction — a displacement or
///   operand byte). Now they go through the file that was checked.
/// - the daemon took a binary's cache key, its name and its analysis from separate
///   lookups of /proc/PID/exe: an exec in between cached one build's plan under the
///   other's key, and every later process of that binary was refused
///   (`bytes_mismatch`, 29 in one run). Now all come from one open file.
///
/// Chains of execs through copies of two Go builds (a fresh analysis at each copy's
/// first image), each image living 5 ms (the daemon falls behind and attaches to
/// images already being replaced), 30 ms (an exec often lands mid-attach) or 150 ms
/// (attached in time: the breakpoints checked are mostly the image's own). Every
/// breakpoint an image carries must be in its own binary's plan, and every image must
/// run to its end.
#[test]
fn a_process_that_execs_during_attach_carries_only_its_own_images_probes() {
    let Some(_kernel) =
        privileged("a_process_that_execs_during_attach_carries_only_its_own_images_probes")
    else {
        return;
    };
    let (Some(old), Some(new)) = (fixture("go1.22.10", "execs"), fixture("go1.24.11", "execs"))
    else {
        return;
    };
    let dir = scratch_dir("bounce");
    let bouncers: Vec<PathBuf> = (0..BOUNCERS)
        .map(|i| {
            let path = dir.join(format!("bounce-{i:02}"));
            copy_executable(if i % 2 == 0 { &old } else { &new }, &path);
            path
        })
        .collect();
    let allowed: BTreeMap<PathBuf, BTreeSet<u64>> = bouncers
        .iter()
        .map(|binary| (binary.clone(), planned_offsets(binary)))
        .collect();
    let daemon = Mapwatch::run_for("bounce-*", &[]);
    let mut images = 0;
    let mut probed = 0;
    let mut expected_images = 0;
    for (pause, hops) in CHAINS {
        expected_images += hops + 1;
        let mut chain = Command::new(&bouncers[0])
            .args(["-bounce", &hops.to_string(), pause])
            .args(&bouncers[1..])
            .arg(&bouncers[0])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the exec chain");
        let stdout = std::io::BufReader::new(chain.stdout.take().unwrap());
        for line in stdout.lines() {
            let line = line.unwrap();
            // "image PATH breakpoints none|0xOFF,0xOFF"
            let words: Vec<&str> = line.split_whitespace().collect();
            let ["image", path, "breakpoints", found] = words[..] else {
                panic!("execs said {line:?}");
            };
            images += 1;
            if found == "none" {
                continue;
            }
            probed += 1;
            let own = &allowed[Path::new(path)];
            let foreign: Vec<&str> = found
                .split(',')
                .filter(|offset| {
                    let offset = u64::from_str_radix(offset.trim_start_matches("0x"), 16)
                        .unwrap_or_else(|_| panic!("execs said {line:?}"));
                    !own.contains(&offset)
                })
                .collect();
            assert!(
                foreign.is_empty(),
                "{path} (pause {pause}) carries breakpoints at {foreign:?}, which no plan of \
                 that binary has (its planned offsets: {own:x?})"
            );
        }
        let status = chain.wait().unwrap();
        assert!(
            status.success(),
            "the exec chain failed ({pause}): {status}"
        );
    }
    assert_eq!(images, expected_images, "every image reported");
    // Otherwise the daemon attached nothing in time and this proved nothing.
    assert!(probed > 0, "no image carried a probe when it checked");

    let after = daemon.scrape_until("the chain's process to be detached", |s| attached(s) == 0);
    // Losing the race to an exec is ordinary churn; anything else (the kernel refusing
    // a site: "attach") means a plan met the wrong file.
    let errors = attach_errors(&after);
    assert!(
        errors
            .keys()
            .all(|reason| reason == "process_gone" || reason == "binary_changed"),
        "attach errors: {errors:?}"
    );
    assert_eq!(uprobe_links(), 0, "uprobes left after the chain exited");
    assert!(daemon.stop().success());
    assert_eq!(mapwatch_links(), 0, "mapwatch run left BPF behind");
    eprintln!("{images} images, {probed} carried probes; attach errors {errors:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Holds the `nth` open(2) of one file by one process (the daemon) in the kernel until
/// [`OpenGate::release`]; every other open of the file passes at once. A fanotify
/// permission event (FAN_OPEN_PERM) is raised once the open has resolved its path to
/// the file: whatever the target process does while the open waits, the open gets
/// that file. This puts an exec exactly between two steps of the daemon, every run.
struct OpenGate {
    held: std::sync::mpsc::Receiver<()>,
    release: std::sync::mpsc::Sender<()>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OpenGate {
    fn new(file: &Path, opener: u32, nth: usize) -> OpenGate {
        use std::{ffi::CString, os::unix::ffi::OsStrExt as _};
        // SAFETY: fanotify_init(2) with constant flags; the result is checked.
        let fd = unsafe {
            libc::fanotify_init(
                libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC,
                libc::O_RDONLY as u32,
            )
        };
        assert!(
            fd >= 0,
            "fanotify_init: {}",
            std::io::Error::last_os_error()
        );
        let path = CString::new(file.as_os_str().as_bytes()).unwrap();
        // SAFETY: a mark on a NUL-terminated path this function owns.
        let marked = unsafe {
            libc::fanotify_mark(
                fd,
                libc::FAN_MARK_ADD,
                libc::FAN_OPEN_PERM,
                libc::AT_FDCWD,
                path.as_ptr(),
            )
        };
        assert_eq!(
            marked,
            0,
            "fanotify_mark: {}",
            std::io::Error::last_os_error()
        );
        let (held_tx, held) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = 0;
            let mut buffer = [0u8; 4096];
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let mut poll = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd; then a read into a buffer this thread owns.
                let read = unsafe {
                    if libc::poll(&mut poll, 1, 50) <= 0 {
                        continue;
                    }
                    libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len())
                };
                let mut at = 0;
                while read > 0 && at < read as usize {
                    // SAFETY: the kernel wrote whole fanotify_event_metadata records.
                    let event: libc::fanotify_event_metadata =
                        unsafe { std::ptr::read_unaligned(buffer[at..].as_ptr().cast()) };
                    at += event.event_len as usize;
                    if event.pid as u32 == opener {
                        seen += 1;
                        if seen == nth {
                            let _ = held_tx.send(());
                            let _ = release_rx.recv_timeout(Duration::from_secs(30));
                        }
                    }
                    let answer = libc::fanotify_response {
                        fd: event.fd,
                        response: libc::FAN_ALLOW,
                    };
                    // SAFETY: the answer to this event, then its file descriptor closed.
                    unsafe {
                        libc::write(
                            fd,
                            (&answer as *const libc::fanotify_response).cast(),
                            size_of::<libc::fanotify_response>(),
                        );
                        libc::close(event.fd);
                    }
                }
            }
            // Closing the group allows whatever it still holds.
            // SAFETY: the fanotify descriptor this thread owns.
            unsafe { libc::close(fd) };
        });
        OpenGate {
            held,
            release,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until the open is held.
    fn wait_held(&self, what: &str) {
        self.held
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("waited 30 s for {what}"));
    }

    fn release(&self) {
        let _ = self.release.send(());
    }
}

impl Drop for OpenGate {
    fn drop(&mut self) {
        self.release();
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs the fixture's workload and has it exec the program it was started with, then
/// waits until /proc says it runs `next`.
fn exec_now(process: &mut Fixture, next: &Path) {
    let _ = process.run_workload_fields();
    process.send_line("exec");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{}/exe", process.pid))
        .ok()
        .as_deref()
        != Some(next)
    {
        assert!(
            Instant::now() < deadline,
            "the fixture did not exec {next:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Regression, every run: the daemon has checked that the process runs the analysed
/// file and is about to verify its bytes and attach (its second open of the file, held
/// here) when the process execs another Go build. The probes must go into the file
/// checked — which the process no longer runs —, not into the new program at the old
/// plan's offsets: the new image (fixtures/execs `-bounce 0`: it reports, after 800 ms,
/// where its text differs from its file) carries no breakpoint its own plan lacks, and
/// the held attach succeeds. Before the fix the kernel resolved /proc/PID/exe again for
/// each link, to the new program: the old plan's first sites were placed in it, until
/// one the kernel refused (`attach`) rolled the attach back — every run.
#[test]
fn an_exec_between_the_checks_and_the_attach_leaves_the_new_program_untouched() {
    let Some(_kernel) =
        privileged("an_exec_between_the_checks_and_the_attach_leaves_the_new_program_untouched")
    else {
        return;
    };
    let (Some(old), Some(new)) = (fixture("go1.22.10", "execs"), fixture("go1.24.11", "execs"))
    else {
        return;
    };
    let dir = scratch_dir("held-attach");
    let (first, second) = (dir.join("hold-a"), dir.join("hold-b"));
    // This way round, the kernel accepts the Go 1.24 plan's sites in the Go 1.22 build
    // (the other way, it refuses some and the attach fails as a whole).
    copy_executable(&new, &first);
    copy_executable(&old, &second);
    let own = planned_offsets(&second);
    let daemon = Mapwatch::run(&[
        "--kubernetes",
        "off",
        "--include-binary",
        "hold-a,hold-b",
        "--rescan-interval",
        "1h",
    ]);
    // Its first open names, keys and analyses the file; the second is the check.
    let gate = OpenGate::new(&first, daemon.pid(), 2);
    let next = second.to_str().unwrap();
    let mut process = Fixture::start(&first, &[next, "-bounce", "0", "800ms", next]);
    gate.wait_held("the daemon to check the process's executable");
    exec_now(&mut process, &second);
    gate.release();
    let report = process.read_line();
    let found = report
        .strip_prefix(&format!("image {next} breakpoints "))
        .unwrap_or_else(|| panic!("execs said {report:?}"));
    let foreign: Vec<&str> = found
        .split(',')
        .filter(|&offset| offset != "none")
        .filter(|offset| {
            let offset = u64::from_str_radix(offset.trim_start_matches("0x"), 16).unwrap();
            !own.contains(&offset)
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "the new program carries breakpoints at {foreign:?}, planned for the old one"
    );
    assert!(process.finish().success(), "the exec'd program failed");
    drop(gate);
    let after = daemon.scrape_until("the process to be detached", |s| attached(s) == 0);
    // The held attach succeeds: its probes sit, harmless, on the file checked.
    assert_eq!(attach_errors(&after), BTreeMap::new(), "attach errors");
    assert_eq!(uprobe_links(), 0, "uprobes left after the process exited");
    assert!(daemon.stop().success());
    assert_eq!(mapwatch_links(), 0, "mapwatch run left BPF behind");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The daemon opens a new binary (its first open of the file, held here) to key, name
/// and analyse it, and the process execs another Go build meanwhile. The analysis must
/// be filed under the key of the file analysed: a later process of the first binary is
/// attached and counted exactly. Guards the one open they now share: analysing from a
/// second open of /proc/PID/exe fails this every run (the other build's plan cached
/// under this binary's key, the later process refused with `bytes_mismatch`). The
/// three lookups before the fix (stat, readlink, open) lost that race only by chance:
/// the exec-chain test above saw it once in five runs.
#[test]
fn an_exec_while_a_binary_is_analysed_never_files_one_build_under_another() {
    let Some(_kernel) =
        privileged("an_exec_while_a_binary_is_analysed_never_files_one_build_under_another")
    else {
        return;
    };
    let (Some(old), Some(new)) = (fixture("go1.22.10", "execs"), fixture("go1.24.11", "execs"))
    else {
        return;
    };
    let dir = scratch_dir("held-analysis");
    let (first, second) = (dir.join("first"), dir.join("second"));
    copy_executable(&old, &first);
    copy_executable(&new, &second);
    let daemon = Mapwatch::run(&[
        "--kubernetes",
        "off",
        "--include-binary",
        "first,second",
        "--rescan-interval",
        "1h",
        "--overhead-share",
        "100%",
    ]);
    let gate = OpenGate::new(&first, daemon.pid(), 1);
    let next = second.to_str().unwrap();
    let mut process = Fixture::start(&first, &[next, "-bounce", "0", "300ms", next]);
    gate.wait_held("the daemon to open the new binary");
    exec_now(&mut process, &second);
    gate.release();
    let _ = process.read_line();
    assert!(process.finish().success(), "the exec'd program failed");
    drop(gate);
    daemon.scrape_until("the exec'd process to be detached", |s| attached(s) == 0);

    let mut later = Fixture::start(&first, &["/bin/false"]);
    let before = daemon.scrape_until("a later process of the first binary", |s| {
        attached(s) == 1 || attach_errors(s).contains_key("bytes_mismatch")
    });
    assert!(
        !attach_errors(&before).contains_key("bytes_mismatch"),
        "the first binary's key holds another build's plan: {:?}",
        attach_errors(&before)
    );
    let before = daemon.scrape_drained();
    let reported = later.run_workload_fields();
    let after = daemon.scrape_drained();
    assert_eq!(
        gc_cycles(&after, "first", "go1.22.10") - gc_cycles(&before, "first", "go1.22.10"),
        reported["gc"]
    );
    assert!(later.finish().success());
    daemon.scrape_until("the process to be detached", |s| attached(s) == 0);
    assert_eq!(uprobe_links(), 0, "uprobes left after the processes exited");
    assert!(daemon.stop().success());
    assert_eq!(mapwatch_links(), 0, "mapwatch run left BPF behind");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Go process execs another Go program: the old image's links are closed, the new
/// image gets its own plan (another Go version, other functions), and each image's
/// counts are exact under its own binary name — the old image's records written just
/// before the exec included.
#[test]
fn a_process_that_execs_is_planned_again_for_its_new_image() {
    let Some(_kernel) = privileged("a_process_that_execs_is_planned_again_for_its_new_image")
    else {
        return;
    };
    let (Some(execs), Some(mapgrow)) = (
        fixture("go1.22.10", "execs"),
        fixture("go1.24.11", "mapgrow"),
    ) else {
        return;
    };
    let dir = scratch_dir("exec");
    let (before, after) = (dir.join("before"), dir.join("after"));
    copy_executable(&execs, &before);
    copy_executable(&mapgrow, &after);
    let (old_links, new_links) = (
        plan_of(&before, RARE_ONLY).len(),
        plan_of(&after, RARE_ONLY).len(),
    );
    assert_ne!(old_links, new_links, "the two plans must be told apart");
    let daemon = Mapwatch::run(&[
        "--kubernetes",
        "off",
        "--include-binary",
        "before,after",
        "--rescan-interval",
        "1h",
        "--series-expiry",
        "1h",
        "--slice-growth=false",
        "--overhead-share",
        "100%",
    ]);
    let mut process = Fixture::start(&before, &[after.to_str().unwrap()]);
    daemon.scrape_until("the first image to be attached", |s| attached(s) == 1);
    wait_for_links(old_links, "the first image's probes");

    let start = daemon.scrape_drained();
    let old_reported = process.run_workload_fields();
    // Right after its workload: its last records may still be in the ring buffer.
    process.send_line("exec");
    process.wait_ready_after_exec();
    wait_for_links(new_links, "the new image's probes, the old image's gone");
    let exec_done = daemon.scrape_until("the new image to be attached", |s| attached(s) == 1);
    assert_eq!(attached(&exec_done), 1);

    let mid = daemon.scrape_drained();
    let new_reported = process.run_workload_fields();
    let end = daemon.scrape_drained();
    assert_eq!(
        gc_cycles(&end, "before", "go1.22.10") - gc_cycles(&start, "before", "go1.22.10"),
        old_reported["gc"],
        "the old image's GC cycles, counted after the exec"
    );
    for kind in MAP_GROWTH_KINDS {
        let growth = |s: &Scrape| {
            s.sum(
                "mapwatch_map_grow_total",
                &[
                    ("binary", "after"),
                    ("go_version", "go1.24.11"),
                    ("kind", kind),
                ],
            )
        };
        assert_eq!(
            growth(&end) - growth(&mid),
            new_reported.get(kind).copied().unwrap_or(0),
            "the new image's map growth of kind {kind} ({new_reported:?})"
        );
    }
    assert_eq!(
        end.sum("mapwatch_events_orphaned_total", &[]),
        0,
        "records of the old image were dropped at the exec"
    );
    assert_eq!(attach_errors(&end), BTreeMap::new(), "attach errors");

    assert!(process.finish().success(), "the fixture failed");
    daemon.scrape_until("the process to be detached", |s| attached(s) == 0);
    assert_eq!(uprobe_links(), 0, "uprobes left after the process exited");
    let (status, log) = daemon.stop_with_output();
    assert!(status.success(), "mapwatch run after SIGTERM: {status}");
    let detached = log
        .iter()
        .filter(|l| l.contains("detached") && l.contains(&format!("probes={old_links} ")))
        .count();
    assert_eq!(
        detached,
        1,
        "one detach of the old image:\n{}",
        log.join("\n")
    );
    assert_eq!(mapwatch_links(), 0, "mapwatch run left BPF behind");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until mapwatch's uprobe links number `count`, and stay so for 300 ms.
fn wait_for_links(count: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut since: Option<Instant> = None;
    loop {
        let now = bpf_link_count(&["go_probe"]);
        if now == count {
            let first = *since.get_or_insert_with(Instant::now);
            if first.elapsed() >= Duration::from_millis(300) {
                return;
            }
        } else {
            since = None;
        }
        assert!(
            Instant::now() < deadline,
            "waited 20 s for {what}: {now} uprobe links, expected {count}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A binary replaced on disk (a deploy renames a new build over the old) while a
/// process still runs the old one, and the daemon started only afterwards: the process
/// is analysed from the file it runs (/proc/PID/exe, the old, deleted inode), not from
/// the path, which now names another Go version; a new process of the path gets the
/// new file's plan. Both are counted exactly, under their own Go versions.
#[test]
fn a_binary_replaced_on_disk_is_profiled_as_each_process_runs_it() {
    let Some(_kernel) = privileged("a_binary_replaced_on_disk_is_profiled_as_each_process_runs_it")
    else {
        return;
    };
    let (Some(old), Some(new)) = (fixture("go1.22.10", "execs"), fixture("go1.24.11", "execs"))
    else {
        return;
    };
    let dir = scratch_dir("renamed");
    let app = dir.join("app");
    copy_executable(&old, &app);
    // execs exits at EOF without exec'ing; the program it names is never run.
    let mut running_old = Fixture::start(&app, &["/bin/false"]);
    let staged = dir.join("app.new");
    copy_executable(&new, &staged);
    std::fs::rename(&staged, &app).unwrap();

    let daemon = Mapwatch::run_for("app", &["--overhead-share", "100%"]);
    let mut running_new = Fixture::start(&app, &["/bin/false"]);
    let start = daemon.scrape_until("both processes", |s| attached(s) == 2);
    let start_drained = daemon.scrape_drained();
    assert_eq!(attached(&start), 2);
    let old_reported = running_old.run_workload_fields();
    let new_reported = running_new.run_workload_fields();
    let end = daemon.scrape_drained();
    for (go_version, reported) in [("go1.22.10", &old_reported), ("go1.24.11", &new_reported)] {
        assert_eq!(
            gc_cycles(&end, "app", go_version) - gc_cycles(&start_drained, "app", go_version),
            reported["gc"],
            "GC cycles of the process running the {go_version} build"
        );
    }
    assert_eq!(attach_errors(&end), BTreeMap::new(), "attach errors");
    assert!(running_old.finish().success() && running_new.finish().success());
    daemon.scrape_until("both to be detached", |s| attached(s) == 0);
    assert_eq!(uprobe_links(), 0, "uprobes left after the processes exited");
    assert!(daemon.stop().success());
    assert_eq!(mapwatch_links(), 0, "mapwatch run left BPF behind");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regression: the daemon caches an analysis per (device, inode, size, mtime). A file
/// rewritten in place — same inode — with the same size and its mtime set back (`cp -p`
/// or `rsync --inplace -t` of a same-size build, a tool that normalises mtimes) kept
/// the key of its old content, so the next process of it met the old plan: refused
/// with `bytes_mismatch` at best, never profiled. The key now has the ctime, which
/// every write moves and no one can set back.
///
/// Here the same path holds a Go 1.22 build, then a Go 1.24 build of the same fixture,
/// both padded to one size, the mtime restored.
#[test]
fn a_binary_rewritten_in_place_with_its_old_size_and_mtime_is_analysed_again() {
    let Some(_kernel) =
        privileged("a_binary_rewritten_in_place_with_its_old_size_and_mtime_is_analysed_again")
    else {
        return;
    };
    let (Some(old), Some(new)) = (fixture("go1.22.10", "execs"), fixture("go1.24.11", "execs"))
    else {
        return;
    };
    let (mut old, mut new) = (std::fs::read(old).unwrap(), std::fs::read(new).unwrap());
    // Bytes after the last section are never mapped or read: padding keeps both valid.
    let size = old.len().max(new.len());
    old.resize(size, 0);
    new.resize(size, 0);
    let dir = scratch_dir("in-place");
    let svc = dir.join("svc");
    std::fs::write(&svc, &old).unwrap();
    std::fs::set_permissions(&svc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let first = std::fs::metadata(&svc).unwrap();

    let daemon = Mapwatch::run_for(
        "svc",
        &["--series-expiry", "1h", "--overhead-share", "100%"],
    );
    let mut process = Fixture::start(&svc, &["/bin/false"]);
    daemon.scrape_until("the first build's process", |s| attached(s) == 1);
    let before = daemon.scrape_drained();
    let reported = process.run_workload_fields();
    let after = daemon.scrape_drained();
    assert_eq!(
        gc_cycles(&after, "svc", "go1.22.10") - gc_cycles(&before, "svc", "go1.22.10"),
        reported["gc"]
    );
    assert!(process.finish().success());
    daemon.scrape_until("the first process to be detached", |s| attached(s) == 0);

    // In place: the same inode (nothing runs it now, so the kernel allows the write).
    {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&svc)
            .unwrap();
        file.write_all(&new).unwrap();
        file.set_modified(first.modified().unwrap()).unwrap();
    }
    let second = std::fs::metadata(&svc).unwrap();
    assert_eq!(
        (
            second.dev(),
            second.ino(),
            second.len(),
            second.mtime(),
            second.mtime_nsec()
        ),
        (
            first.dev(),
            first.ino(),
            first.len(),
            first.mtime(),
            first.mtime_nsec()
        ),
        "the rewritten file must look the same to (device, inode, size, mtime)"
    );

    let mut process = Fixture::start(&svc, &["/bin/false"]);
    daemon.scrape_until("the second build's process", |s| {
        attached(s) == 1 || !attach_errors(s).is_empty()
    });
    let before = daemon.scrape_drained();
    assert_eq!(attach_errors(&before), BTreeMap::new(), "attach errors");
    let reported = process.run_workload_fields();
    let after = daemon.scrape_drained();
    assert_eq!(
        gc_cycles(&after, "svc", "go1.24.11") - gc_cycles(&before, "svc", "go1.24.11"),
        reported["gc"],
        "the rewritten binary's GC cycles, under its own Go version"
    );
    assert!(process.finish().success());
    daemon.scrape_until("the second process to be detached", |s| attached(s) == 0);
    assert_eq!(uprobe_links(), 0, "uprobes left after the processes exited");
    assert!(daemon.stop().success());
    assert_eq!(mapwatch_links(), 0, "mapwatch run left BPF behind");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pid cannot be reused while its process is a zombie (exited, not yet reaped by its
/// parent). The daemon detaches on the kernel's exit notice, which comes before that:
/// every link of the process is gone while the pid is still taken, so no later process
/// with that number can inherit them. (The tracker's unit tests cover a pid that the
/// daemon sees reused: start time differs → Exited, then Appeared.)
#[test]
fn an_exited_process_loses_its_probes_before_its_pid_can_be_reused() {
    let Some(_kernel) =
        privileged("an_exited_process_loses_its_probes_before_its_pid_can_be_reused")
    else {
        return;
    };
    let Some(binary) = fixture("go1.24.11", "mapgrow") else {
        return;
    };
    let daemon = Mapwatch::run_for("mapgrow", &[]);
    let mut process = Fixture::start(&binary, &[]);
    daemon.scrape_until("the process to be attached", |s| attached(s) == 1);
    assert!(
        bpf_link_count(&["go_probe"]) > 0,
        "no uprobe links while attached"
    );
    let _ = process.run_workload_fields();
    process.close_stdin();
    let state = |pid: u32| -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat[stat.rfind(')')? + 1..].trim_start().chars().next()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while state(process.pid) != Some('Z') {
        assert!(Instant::now() < deadline, "the fixture did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    daemon.scrape_until("the exited process to be detached", |s| attached(s) == 0);
    assert_eq!(uprobe_links(), 0, "uprobes of the exited process left");
    assert_eq!(
        state(process.pid),
        Some('Z'),
        "the pid must still be taken (not reaped) for this to prove anything"
    );
    assert!(process.finish().success());
    assert!(daemon.stop().success());
    assert_eq!(mapwatch_links(), 0, "mapwatch run left BPF behind");
}
