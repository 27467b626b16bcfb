use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// Runs a named step with progress and timing on stdout.
pub fn step<T>(name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    println!("==> {name}");
    let started = Instant::now();
    let result = f().with_context(|| format!("step failed: {name}"));
    if result.is_ok() {
        println!("    {name}: done in {:.1?}", started.elapsed());
    }
    result
}

pub struct Cmd(Command);

impl Cmd {
    pub fn new(program: impl AsRef<std::ffi::OsStr>) -> Cmd {
        Cmd(Command::new(program))
    }
    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.0.args(args);
        self
    }
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Cmd {
        self.0.env(key, value);
        self
    }
    pub fn current_dir(mut self, dir: &Path) -> Cmd {
        self.0.current_dir(dir);
        self
    }
    /// Runs with inherited stdio; fails on a non-zero exit.
    pub fn run(mut self) -> anyhow::Result<()> {
        let status = self
            .0
            .status()
            .with_context(|| format!("cannot run {:?}", self.0.get_program()))?;
        if !status.success() {
            bail!("{:?} failed: {status}", self.0);
        }
        Ok(())
    }
    /// Runs and returns whether it succeeded, and its stdout and stderr (for commands
    /// whose failure output is a result too, like a test's panic message).
    pub fn capture(mut self) -> anyhow::Result<(bool, String)> {
        let out = self
            .0
            .output()
            .with_context(|| format!("cannot run {:?}", self.0.get_program()))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    }
    /// Runs and returns stdout; None if it cannot run or fails.
    pub fn output(mut self) -> Option<String> {
        let out = self.0.output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

pub fn cargo(args: &[&str]) -> Cmd {
    Cmd::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(args)
        .current_dir(&workspace_root())
        .env("PATH", path_with_cargo_bin())
}

/// PATH with cargo's bin directory first: `cargo install` puts bpf-linker there, and
/// mapwatch/build.rs needs it on PATH even where a login shell never added it.
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        });
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![cargo_home.join("bin")];
    dirs.extend(std::env::split_paths(&current));
    std::env::join_paths(dirs).unwrap_or(current)
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// The machine-wide lock privileged tests take (mapwatch/tests/support): benchmarks and
/// soaks run mapwatch too, and a test's "no probe left in the kernel" check would see
/// theirs (and their numbers the tests' load). Held until the file is dropped.
pub fn privileged_lock() -> anyhow::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/mapwatch-privileged-tests.lock")?;
    println!("    waiting for other mapwatch tests and benchmarks on this machine to finish");
    file.lock()?;
    Ok(file)
}
