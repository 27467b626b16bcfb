//! The container image: hadolint on deploy/Dockerfile, and a smoke test of the runtime
//! stage's root filesystem — the binary the builder stage makes, with only the shared
//! libraries the distroless base image has — without Docker.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use super::{deploy_dir, tools::Tools};
use crate::util::{Cmd, cargo, is_root, workspace_root};

/// The runtime stage's base image and the Debian packages it contains
/// (GoogleContainerTools/distroless: base-debian12 = libc6, libssl3, ca-certificates,
/// tzdata, netbase; cc-debian12 adds libgcc-s1, libgomp1, libstdc++6). Every shared
/// library the binary loads must come from one of these.
const RUNTIME_BASE_IMAGE: &str = "gcr.io/distroless/cc-debian12";
const RUNTIME_BASE_PACKAGES: &[&str] = &["libc6", "libssl3", "libgcc-s1", "libgomp1", "libstdc++6"];

/// Files the Dockerfile copies out of the builder stage, and where the same file is in
/// this checkout after `cargo build --release`.
const BUILDER_OUTPUTS: &[(&str, &str)] = &[("/out/mapwatch", "target/release/mapwatch")];

pub fn hadolint(tools: &Tools, dockerfile: &Path) -> anyhow::Result<()> {
    Cmd::new(&tools.hadolint).args([dockerfile]).run()
}

/// One `COPY --from=<stage> <src> <dst>` of the Dockerfile's last stage.
#[derive(Debug, PartialEq, Eq)]
struct StageCopy {
    from: String,
    source: String,
    destination: String,
}

/// The last stage's base image (`FROM image[:tag] [AS name]`, tag dropped) and what it
/// copies from other stages. Continuation lines are joined first.
fn runtime_stage(dockerfile: &str) -> anyhow::Result<(String, Vec<StageCopy>)> {
    let joined = dockerfile.replace("\\\n", " ");
    let instructions: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let last_from = instructions
        .iter()
        .rposition(|l| l.to_ascii_uppercase().starts_with("FROM "))
        .context("the Dockerfile has no FROM")?;
    let image = instructions[last_from]
        .split_whitespace()
        .nth(1)
        .context("FROM without an image")?;
    let image = image.split(['@']).next().unwrap_or(image);
    let image = match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => image,
    };
    let mut copies = Vec::new();
    for line in &instructions[last_from + 1..] {
        let words: Vec<&str> = line.split_whitespace().collect();
        if !words[0].eq_ignore_ascii_case("COPY") && !words[0].eq_ignore_ascii_case("ADD") {
            continue;
        }
        let from = words
            .iter()
            .find_map(|w| w.strip_prefix("--from="))
            .with_context(|| format!("`{line}` copies from the build context: the smoke test only knows builder outputs"))?;
        let paths: Vec<&str> = words[1..]
            .iter()
            .copied()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let [sources @ .., destination] = paths.as_slice() else {
            bail!("cannot read `{line}`");
        };
        for source in sources {
            copies.push(StageCopy {
                from: from.to_string(),
                source: source.to_string(),
                destination: destination.to_string(),
            });
        }
    }
    Ok((image.to_string(), copies))
}

/// Paths of the shared libraries and the loader in `ldd` output; fails on "not found".
fn ldd_paths(ldd_output: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in ldd_output.lines().map(str::trim) {
        if line.contains("not found") {
            bail!("missing shared library: {line}");
        }
        let path = match line.split_once("=>") {
            Some((_, resolved)) => resolved.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// The Debian package that installed `path` (dpkg -S); with usrmerge a library may be
/// registered under /lib or /usr/lib.
fn debian_package_of(path: &Path) -> anyhow::Result<String> {
    let mut candidates = vec![path.to_path_buf()];
    if let Ok(real) = path.canonicalize() {
        candidates.push(real.clone());
        if let Ok(stripped) = real.strip_prefix("/usr") {
            candidates.push(Path::new("/").join(stripped));
        }
    }
    for candidate in &candidates {
        if let Some(out) = Cmd::new("dpkg").args(["-S"]).args([candidate]).output()
            && let Some((package, _)) = out.lines().next().and_then(|l| l.split_once(':'))
        {
            return Ok(package.trim().to_string());
        }
    }
    bail!("no Debian package owns {}", path.display())
}

/// Builds the release binary, lays out the runtime image's files (what the last stage
/// copies, plus the base image's libraries the binary needs) in a fresh directory, and
/// runs the binary from there: `--version`, and `inspect` on a Go fixture. As root it
/// runs inside a chroot, so nothing of the host can help; otherwise through the
/// directory's own dynamic loader.
pub fn smoke_test(dockerfile: &Path, fixtures_dir: &Path, scratch: &Path) -> anyhow::Result<()> {
    let (base, copies) = runtime_stage(&std::fs::read_to_string(dockerfile)?)?;
    if base != RUNTIME_BASE_IMAGE {
        bail!(
            "the runtime stage is FROM {base}; xtask/src/deploy/image.rs knows the contents of {RUNTIME_BASE_IMAGE} only (RUNTIME_BASE_PACKAGES)"
        );
    }
    cargo(&["build", "--release", "-p", "mapwatch"]).run()?;
    let rootfs = scratch.join("rootfs");
    let in_rootfs = |path: &Path| rootfs.join(path.strip_prefix("/").unwrap_or(path));
    let mut binaries = Vec::new();
    for copy in &copies {
        let host = BUILDER_OUTPUTS
            .iter()
            .find(|(builder, _)| *builder == copy.source)
            .map(|(_, host)| workspace_root().join(host))
            .with_context(|| {
                format!(
                    "the Dockerfile copies {} from stage {}: add where that file is built to BUILDER_OUTPUTS in xtask/src/deploy/image.rs",
                    copy.source, copy.from
                )
            })?;
        let destination = in_rootfs(Path::new(&copy.destination));
        std::fs::create_dir_all(destination.parent().context("copy to /")?)?;
        std::fs::copy(&host, &destination)
            .with_context(|| format!("copying {}", host.display()))?;
        binaries.push((host, copy.destination.clone()));
    }
    let (host_binary, image_binary) = binaries
        .first()
        .context("the runtime stage copies no binary")?
        .clone();
    let ldd = Cmd::new("ldd")
        .args([&host_binary])
        .output()
        .context("ldd failed")?;
    let mut loader = None;
    for library in ldd_paths(&ldd)? {
        let package = debian_package_of(&library)?;
        let package = package.split(':').next().unwrap_or(&package);
        if !RUNTIME_BASE_PACKAGES.contains(&package) {
            bail!(
                "{} needs {} (Debian package {package}), which {RUNTIME_BASE_IMAGE} does not contain",
                host_binary.display(),
                library.display()
            );
        }
        println!("    {} from {package}", library.display());
        let destination = in_rootfs(&library);
        std::fs::create_dir_all(destination.parent().context("library at /")?)?;
        std::fs::copy(&library, &destination)?;
        if library.to_string_lossy().contains("/ld-linux") {
            loader = Some(library);
        }
    }
    let fixture = find_fixture(fixtures_dir)?;
    std::fs::copy(&fixture, rootfs.join("fixture"))?;
    let config_map = deploy_dir().join("base/configmap.yaml");
    let config = config_map_file(&std::fs::read_to_string(&config_map)?, "config.toml")
        .with_context(|| format!("no config.toml in {}", config_map.display()))?;
    std::fs::create_dir_all(rootfs.join("etc/mapwatch"))?;
    std::fs::write(rootfs.join("etc/mapwatch/config.toml"), config)?;
    // Paths in `args` are paths in the image: outside a chroot they are rewritten.
    let run_in_image = |args: &[&str]| -> anyhow::Result<String> {
        let mut command = if is_root() {
            let mut command = std::process::Command::new("chroot");
            command.arg(&rootfs).arg(&image_binary).args(args);
            command
        } else {
            let loader = loader.as_ref().context("ldd named no dynamic loader")?;
            let library_dirs: BTreeSet<PathBuf> = ldd_paths(&ldd)?
                .iter()
                .filter_map(|l| l.parent().map(&in_rootfs))
                .collect();
            let mut command = std::process::Command::new(in_rootfs(loader));
            command
                .args(["--inhibit-cache", "--library-path"])
                .arg(std::env::join_paths(library_dirs)?)
                .arg(in_rootfs(Path::new(&image_binary)));
            for arg in args {
                match arg.starts_with('/') {
                    true => command.arg(in_rootfs(Path::new(arg))),
                    false => command.arg(arg),
                };
            }
            command
        };
        let output = command
            .output()
            .with_context(|| format!("cannot run {command:?}"))?;
        if !output.status.success() {
            bail!(
                "mapwatch {args:?} failed in the image root filesystem ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let version = run_in_image(&["--version"])?;
    println!("    {}", version.trim());
    let inspect = run_in_image(&["inspect", "/fixture"])?;
    if !inspect.contains("Go version") {
        bail!("inspect in the image printed no Go version:\n{inspect}");
    }
    println!(
        "    inspect {} in the image: ok ({})",
        fixture.display(),
        if is_root() { "chroot" } else { "image loader" }
    );
    // The DaemonSet's ConfigMap, parsed by the real daemon (unknown keys are errors).
    let effective = run_in_image(&[
        "run",
        "--config",
        "/etc/mapwatch/config.toml",
        "--print-config",
    ])
    .context(
        "`mapwatch run --config <deploy/base/configmap.yaml's config.toml> --print-config` failed",
    )?;
    if !effective.contains("overhead_budget") {
        bail!("run --print-config printed no overhead_budget:\n{effective}");
    }
    println!("    the ConfigMap's config.toml is a valid `mapwatch run` configuration");
    Ok(())
}

/// The content of `key` in a ConfigMap manifest whose `data:` holds it as a literal
/// block (`key: |`), dedented.
fn config_map_file(manifest: &str, key: &str) -> Option<String> {
    let mut lines = manifest
        .lines()
        .skip_while(|l| l.trim() != format!("{key}: |"));
    let header = lines.next()?;
    let key_indent = header.len() - header.trim_start().len();
    let mut body = Vec::new();
    for line in lines {
        let indent = line.len() - line.trim_start().len();
        if !line.trim().is_empty() && indent <= key_indent {
            break;
        }
        body.push(line);
    }
    let block_indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()?;
    let mut text = String::new();
    for line in body {
        text.push_str(line.get(block_indent..).unwrap_or(""));
        text.push('\n');
    }
    Some(text.trim_end().to_string() + "\n")
}

fn find_fixture(fixtures_dir: &Path) -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(fixtures_dir)
        .with_context(|| format!("reading {}", fixtures_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path().join("slicegrow"))
        .filter(|p| p.is_file())
        .collect();
    candidates.sort();
    candidates.pop().with_context(|| {
        format!(
            "no */slicegrow fixture in {}: run `cargo xtask fixtures`",
            fixtures_dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_stage_reads_the_last_from_and_its_copies() {
        let dockerfile = "FROM rust:1 AS builder\nCOPY . .\nRUN x \\\n  y\n# c\nFROM gcr.io/distroless/cc-debian12:latest\nCOPY --from=builder /out/a /out/b /usr/bin/\nCOPY --from=builder --chmod=0755 /out/c /c\n";
        let (image, copies) = runtime_stage(dockerfile).unwrap();
        assert_eq!(image, "gcr.io/distroless/cc-debian12");
        assert_eq!(
            copies
                .iter()
                .map(|c| (c.source.as_str(), c.destination.as_str()))
                .collect::<Vec<_>>(),
            [
                ("/out/a", "/usr/bin/"),
                ("/out/b", "/usr/bin/"),
                ("/out/c", "/c")
            ]
        );
        assert!(runtime_stage("FROM a\nFROM b\nCOPY x /x\n").is_err());
        let (image, _) = runtime_stage("FROM localhost:5000/img@sha256:ab\n").unwrap();
        assert_eq!(image, "localhost:5000/img");
    }

    #[test]
    fn ldd_output_gives_library_paths_and_fails_on_missing_ones() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        assert_eq!(
            ldd_paths(out).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(ldd_paths("\tlibz.so.1 => not found\n").is_err());
    }

    #[test]
    fn config_map_file_is_the_dedented_literal_block() {
        let manifest = "kind: ConfigMap\ndata:\n  config.toml: |\n    a = 1\n\n    [t]\n      b = 2\n  other: x\nmetadata: {}\n";
        assert_eq!(
            config_map_file(manifest, "config.toml").as_deref(),
            Some("a = 1\n\n[t]\n  b = 2\n")
        );
        assert_eq!(config_map_file(manifest, "missing.toml"), None);
    }
}
