//! Real, short-lived Go programs (each toolchain's gofmt, run over and over) under
//! `mapwatch run`: most exit while mapwatch analyses or attaches them. Such a process
//! is `process_gone`, never an attach error — on a node that runs Go tools (CI runners,
//! cron jobs) the attach-errors alert must stay quiet — and nothing is left behind:
//! no uprobe in the kernel, no file held by the daemon.
mod support;

use std::{path::PathBuf, process::Command};

use support::{Mapwatch, Scrape, in_ci, mapwatch_links, privileged, uprobe_links};

const RUNS: usize = 120;
/// A classic-map and a Swiss-map toolchain.
const TOOLCHAINS: [&str; 2] = ["go1.22.10", "go1.24.11"];

/// `target/go-clis/<toolchain>/gofmt`, copied there by `cargo xtask fixtures`.
fn gofmt(go: &str) -> Option<PathBuf> {
    let path = support::fixtures_dir()
        .parent()
        .map(|target| target.join("go-clis").join(go).join("gofmt"))?;
    if path.is_file() {
        return Some(path);
    }
    let message = format!("{} missing: run `cargo xtask fixtures`", path.display());
    assert!(!in_ci(), "skipped in CI: {message}");
    eprintln!("SKIP {message}");
    None
}

fn errors_other_than_process_gone(scrape: &Scrape) -> Vec<(String, u64)> {
    scrape
        .label_values("mapwatch_attach_errors_total", "reason")
        .into_iter()
        .filter(|reason| reason != "process_gone")
        .map(|reason| {
            let count = scrape.sum("mapwatch_attach_errors_total", &[("reason", &reason)]);
            (reason, count)
        })
        .filter(|&(_, count)| count > 0)
        .collect()
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

#[test]
fn processes_that_exit_during_attach_are_not_attach_errors() {
    let Some(_kernel) = privileged("processes_that_exit_during_attach_are_not_attach_errors")
    else {
        return;
    };
    let Some(tools) = TOOLCHAINS
        .iter()
        .map(|go| gofmt(go))
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let source =
        std::env::temp_dir().join(format!("mapwatch-short-lived-{}.go", std::process::id()));
    std::fs::write(
        &source,
        "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tm := map[string]int{\"a\": 1}\n\tfmt.Println(m)\n}\n",
    )
    .expect("write a Go source file");

    let daemon = Mapwatch::run_for("gofmt", &[]);
    let files_before = open_files(daemon.pid());
    // Every fourth run formats a few thousand lines (~0.1 s): long enough to be
    // attached, so the attach path is exercised, not only exits before it.
    let big = std::env::temp_dir().join(format!(
        "mapwatch-short-lived-big-{}.go",
        std::process::id()
    ));
    let mut text = String::from("package main\n\n");
    for i in 0..3000 {
        text.push_str(&format!(
            "func f{i}(a, b int) int {{ m := map[int]int{{a: b}}; return m[a] + {i} }}\n"
        ));
    }
    std::fs::write(&big, text).expect("write a larger Go source file");
    for run in 0..RUNS {
        let input = if run % 4 == 3 { &big } else { &source };
        let status = Command::new(&tools[run % tools.len()])
            .arg("-l")
            .arg(input)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run gofmt");
        assert!(status.success(), "gofmt failed under mapwatch: {status}");
    }
    let after = daemon.scrape_until("every gofmt to be detached", |s| {
        s.sum("mapwatch_attached_processes", &[]) == 0
    });
    assert_eq!(
        errors_other_than_process_gone(&after),
        Vec::<(String, u64)>::new(),
        "short-lived processes counted as attach errors"
    );
    assert_eq!(uprobe_links(), 0, "uprobes of exited processes left behind");
    let files_after = open_files(daemon.pid());
    assert!(
        files_after <= files_before,
        "the daemon holds {files_after} files after {RUNS} processes (was {files_before})"
    );
    let (status, log) = daemon.stop_with_output();
    assert!(status.success(), "mapwatch run after SIGTERM: {status}");
    // The daemon logs each attach at its default level: some runs must have lived long
    // enough to be attached, or this test proved nothing.
    let attached = log.iter().filter(|l| l.contains(" attached pid=")).count();
    assert!(
        attached > 0,
        "no gofmt was ever attached:\n{}",
        log.join("\n")
    );
    eprintln!(
        "{RUNS} runs: {attached} attached, {} gone first",
        after.sum(
            "mapwatch_attach_errors_total",
            &[("reason", "process_gone")]
        )
    );
    assert_eq!(mapwatch_links(), 0, "mapwatch run left BPF behind");
    let _ = std::fs::remove_file(&source);
    let _ = std::fs::remove_file(&big);
}
