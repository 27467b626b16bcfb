//! Go fixtures: every `fixtures/<name>/main.go`, built with every Go toolchain into
//! `target/fixtures/go<version>/<name>`. Rebuilt only when the source or toolchain
//! changed (a stamp file next to each binary).
use std::{
    hash::{Hash as _, Hasher as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::{
    setup::{Env, GoToolchain, cache_dir},
    util::{Cmd, step, workspace_root},
};

pub fn fixtures_dir() -> PathBuf {
    workspace_root().join("target/fixtures")
}

/// Builds all fixtures; returns the directory the tests read them from.
pub fn build_all(env: &Env) -> anyhow::Result<PathBuf> {
    let sources = fixture_sources()?;
    let out = fixtures_dir();
    step("Go fixtures", || {
        let mut built = 0;
        let mut fresh = 0;
        for go in &env.go {
            for (name, source) in &sources {
                if build_one(go, name, source, &out)? {
                    built += 1;
                } else {
                    fresh += 1;
                }
            }
        }
        println!(
            "    {built} built, {fresh} up to date ({} fixtures x {} Go versions) in {}",
            sources.len(),
            env.go.len(),
            out.display()
        );
        Ok(())
    })?;
    Ok(out)
}

/// Builds only `name` with the first toolchain whose name starts with `go_prefix`.
pub fn build_one_for(env: &Env, name: &str, go_prefix: &str) -> anyhow::Result<PathBuf> {
    let go = env
        .go
        .iter()
        .find(|g| g.name.starts_with(go_prefix))
        .with_context(|| format!("no Go toolchain {go_prefix}*"))?;
    let source = workspace_root().join("fixtures").join(name).join("main.go");
    let out = fixtures_dir();
    build_one(go, name, &source, &out)?;
    Ok(out.join(&go.name).join(name))
}

fn fixture_sources() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let dir = workspace_root().join("fixtures");
    let mut sources: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let main = e.path().join("main.go");
            main.is_file()
                .then(|| (e.file_name().to_string_lossy().into_owned(), main))
        })
        .collect();
    sources.sort();
    Ok(sources)
}

/// Returns true if it had to build.
fn build_one(go: &GoToolchain, name: &str, source: &Path, out: &Path) -> anyhow::Result<bool> {
    let dir = out.join(&go.name);
    std::fs::create_dir_all(&dir)?;
    let binary = dir.join(name);
    let stamp_path = dir.join(format!("{name}.stamp"));
    let code = std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    code.hash(&mut hasher);
    go.name.hash(&mut hasher);
    let stamp = format!("{:016x}", hasher.finish());
    if binary.is_file()
        && std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
    {
        return Ok(false);
    }
    let cache = cache_dir();
    Cmd::new(go.root.join("bin/go"))
        .args(["build", "-o"])
        .args([binary.as_os_str(), source.as_os_str()])
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "")
        .env("GOAMD64", "v1")
        .env("GOCACHE", cache.join("gocache"))
        .env("GOPATH", cache.join("gopath"))
        .current_dir(source.parent().expect("fixture dir"))
        .run()
        .with_context(|| format!("building fixture {name} with {}", go.name))?;
    std::fs::write(&stamp_path, stamp)?;
    Ok(true)
}
