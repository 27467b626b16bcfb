//! Go fixtures: every `fixtures/<name>/main.go`, built with every Go toolchain into
//! `target/fixtures/go<version>/<name>`. Rebuilt only when the source, toolchain or
//! build flags changed (a stamp file next to each binary).
//!
//! The binary-analysis matrix adds, for `slicegrow` only: `-stripped` (-ldflags=-s -w:
//! no .symtab, no DWARF), `-pie` (-buildmode=pie) and `-cgo` (external linking), and
//! for Go 1.24/1.25 a whole `go<version>-noswissmap/` directory (classic maps).
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

/// One way of building a fixture.
#[derive(Clone, Copy)]
struct Variant {
    /// Appended to the binary's name.
    suffix: &'static str,
    args: &'static [&'static str],
    cgo: bool,
}

const DEFAULT: Variant = Variant {
    suffix: "",
    args: &[],
    cgo: false,
};
/// Extra builds of the fixture that stands for "any Go binary" in analysis tests.
const MATRIX_FIXTURE: &str = "slicegrow";
const MATRIX: &[Variant] = &[
    Variant {
        suffix: "-stripped",
        args: &["-ldflags=-s -w"],
        cgo: false,
    },
    Variant {
        suffix: "-pie",
        args: &["-buildmode=pie"],
        cgo: false,
    },
    Variant {
        suffix: "-cgo",
        args: &[],
        cgo: true,
    },
];
/// Cross-compiled for arm64 (see [`cross_fixtures_dir`]).
const ARM64: Variant = Variant {
    suffix: "-arm64",
    args: &[],
    cgo: false,
};

/// Real Go command-line tools (each toolchain's gofmt), for tests of short-lived
/// processes. Kept apart from target/fixtures, whose binaries the analysis tests walk.
pub fn go_clis_dir() -> PathBuf {
    workspace_root().join("target/go-clis")
}

/// Copies each toolchain's gofmt to `go_clis_dir()/<toolchain>/gofmt`.
fn copy_go_clis(env: &Env) -> anyhow::Result<()> {
    for go in &env.go {
        let dir = go_clis_dir().join(&go.name);
        let from = go.root.join("bin/gofmt");
        let to = dir.join("gofmt");
        let stale = std::fs::metadata(&to)
            .and_then(|t| Ok(t.len() != std::fs::metadata(&from)?.len()))
            .unwrap_or(true);
        if stale {
            std::fs::create_dir_all(&dir)?;
            std::fs::copy(&from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
    }
    Ok(())
}

/// Toolchains the Go standard library's own test suites are built with: one with
/// classic maps, one with Swiss tables (and Go 1.27's direct `mallocgc*SC*` calls).
const GO_TEST_TOOLCHAINS: &[&str] = &["go1.22.10", "go1.27.3"];

/// Standard-library packages whose tests run under mapwatch (tests/undisturbed.rs),
/// as (import path, binary stem). Chosen for heavy slice, map and allocation traffic
/// with suites that take well under a second unprobed; `runtime` for its map, append
/// and stack-growth tests, `internal/runtime/maps` (Swiss toolchains only) for the
/// map implementation's own tests. Stems are unique: the test selects each binary
/// with `--include-binary <stem>.test`.
const GO_TEST_PACKAGES: &[(&str, &str)] = &[
    ("strings", "strings"),
    ("sort", "sort"),
    ("slices", "slices"),
    ("maps", "maps"),
    ("encoding/json", "json"),
    ("container/list", "list"),
    ("container/heap", "heap"),
    ("runtime", "runtime"),
    ("internal/runtime/maps", "runtime-maps"),
];

/// `go test -c` binaries of [`GO_TEST_PACKAGES`]: `<dir>/<toolchain>/<stem>.test`.
/// Apart from target/fixtures, whose binaries the analysis tests walk.
pub fn go_tests_dir() -> PathBuf {
    workspace_root().join("target/go-tests")
}

/// Builds the missing standard-library test binaries; returns (built, up to date).
fn build_go_tests(env: &Env) -> anyhow::Result<(usize, usize)> {
    let (mut built, mut fresh) = (0, 0);
    for name in GO_TEST_TOOLCHAINS {
        let go =
            env.go.iter().find(|g| g.name == *name).with_context(|| {
                format!("no Go toolchain {name} for the standard-library tests")
            })?;
        let dir = go_tests_dir().join(name);
        std::fs::create_dir_all(&dir)?;
        for (package, stem) in GO_TEST_PACKAGES {
            // internal/runtime/maps exists only since the Swiss tables (Go 1.24).
            if !go.root.join("src").join(package).is_dir() {
                continue;
            }
            let binary = dir.join(format!("{stem}.test"));
            let stamp_path = dir.join(format!("{stem}.test.stamp"));
            // A toolchain's sources never change, so its name and the flags below
            // identify the build; bump the tag when changing those flags.
            let stamp = format!("{name} {package} v1\n");
            if binary.is_file()
                && std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
            {
                fresh += 1;
                continue;
            }
            let cache = cache_dir();
            Cmd::new(go.root.join("bin/go"))
                .args(["test", "-c", "-o"])
                .args([binary.as_os_str()])
                .args([package])
                .env("GOTOOLCHAIN", "local")
                .env("CGO_ENABLED", "0")
                .env("GOEXPERIMENT", "")
                .env("GOARCH", "amd64")
                .env("GOFLAGS", "")
                .env("GOAMD64", "v1")
                // The fixtures' cache, outside the checkout: another clone or worktree
                // then only links these (~10 s for all, vs ~3.5 min cold).
                .env("GOCACHE", cache.join("gocache"))
                .env("GOPATH", cache.join("gopath"))
                .current_dir(&dir)
                .run()
                .with_context(|| format!("go test -c {package} with {name}"))?;
            std::fs::write(&stamp_path, stamp)?;
            built += 1;
        }
    }
    Ok((built, fresh))
}

/// Binaries for other architectures: mapwatch must refuse them clearly.
pub fn cross_fixtures_dir() -> PathBuf {
    workspace_root().join("target/fixtures-cross")
}

/// Go minors whose classic (pre-Swiss) maps are still one GOEXPERIMENT away;
/// `GOEXPERIMENT=noswissmap` fails from 1.26 (docs/go-runtime.md, "Versions and map
/// implementations").
const NOSWISSMAP_MINORS: &[&str] = &["go1.24.", "go1.25."];

/// A toolchain plus GOEXPERIMENT: one directory of fixtures.
struct Flavor<'a> {
    go: &'a GoToolchain,
    dir_name: String,
    goexperiment: &'static str,
}

fn flavors(env: &Env) -> Vec<Flavor<'_>> {
    let mut flavors = Vec::new();
    for go in &env.go {
        flavors.push(Flavor {
            go,
            dir_name: go.name.clone(),
            goexperiment: "",
        });
        if NOSWISSMAP_MINORS.iter().any(|m| go.name.starts_with(m)) {
            flavors.push(Flavor {
                go,
                dir_name: format!("{}-noswissmap", go.name),
                goexperiment: "noswissmap",
            });
        }
    }
    flavors
}

/// Builds all fixtures; returns the directory the tests read them from.
pub fn build_all(env: &Env) -> anyhow::Result<PathBuf> {
    generate_sources(env)?;
    let sources = fixture_sources()?;
    let out = fixtures_dir();
    step("Go fixtures", || {
        let mut built = 0;
        let mut fresh = 0;
        let flavors = flavors(env);
        for flavor in &flavors {
            for (name, source) in &sources {
                let mut variants = vec![DEFAULT];
                if name == MATRIX_FIXTURE {
                    variants.extend_from_slice(MATRIX);
                }
                for variant in variants {
                    if build_one(flavor, name, variant, source, &out)? {
                        built += 1;
                    } else {
                        fresh += 1;
                    }
                }
            }
        }
        // Bad input for the binary analysis: a Go binary for another architecture.
        // Kept out of target/fixtures, whose binaries every analysis test walks.
        if let Some(go) = env.go.iter().find(|g| g.name.starts_with("go1.22.")) {
            let flavor = Flavor {
                go,
                dir_name: go.name.clone(),
                goexperiment: "",
            };
            let source = workspace_root()
                .join("fixtures")
                .join(MATRIX_FIXTURE)
                .join("main.go");
            if build_one(
                &flavor,
                MATRIX_FIXTURE,
                ARM64,
                &source,
                &cross_fixtures_dir(),
            )? {
                built += 1;
            } else {
                fresh += 1;
            }
        }
        copy_go_clis(env)?;
        println!(
            "    {built} built, {fresh} up to date ({} fixtures, {} toolchain flavors) in {}",
            sources.len(),
            flavors.len(),
            out.display()
        );
        Ok(())
    })?;
    step("Go standard-library test binaries (go test -c)", || {
        let (built, fresh) = build_go_tests(env)?;
        println!(
            "    {built} built, {fresh} up to date in {}",
            go_tests_dir().display()
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
    let flavor = Flavor {
        go,
        dir_name: go.name.clone(),
        goexperiment: "",
    };
    build_one(&flavor, name, DEFAULT, &source, &out)?;
    Ok(out.join(&go.name).join(name))
}

/// What every fixture is also built from: fixtures/go.mod and the shared package(s)
/// under fixtures/internal/ (the harness protocol).
fn shared_sources() -> anyhow::Result<Vec<Vec<u8>>> {
    let root = workspace_root().join("fixtures");
    let mut files = vec![root.join("go.mod")];
    let mut dirs = vec![root.join("internal")];
    while let Some(dir) = dirs.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read(f).with_context(|| format!("reading {}", f.display())))
        .collect()
}

/// The Go files of the package whose main.go is `main`, by name.
fn package_sources(main: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let dir = main.parent().context("fixture dir")?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "go") {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let code =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            files.push((name, code));
        }
    }
    files.sort();
    Ok(files)
}

/// Fixtures too big to write by hand (manysites: thousands of append sites) have a
/// `gen.go` (`//go:build ignore`) beside `main.go`: `go run gen.go` prints `sites.go`,
/// which git ignores. Written only when its text changes, so the build stamp holds.
fn generate_sources(env: &Env) -> anyhow::Result<()> {
    let go = env.go.first().context("no Go toolchain installed")?;
    let dir = workspace_root().join("fixtures");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let fixture = entry?.path();
        if !fixture.join("gen.go").is_file() {
            continue;
        }
        let text = Cmd::new(go.root.join("bin/go"))
            .args(["run", "gen.go"])
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "")
            .env("GOCACHE", cache_dir().join("gocache"))
            .env("GOPATH", cache_dir().join("gopath"))
            .current_dir(&fixture)
            .output()
            .with_context(|| format!("go run gen.go in {} failed", fixture.display()))?;
        let generated = fixture.join("sites.go");
        if std::fs::read_to_string(&generated).ok().as_deref() != Some(text.as_str()) {
            std::fs::write(&generated, &text)
                .with_context(|| format!("writing {}", generated.display()))?;
        }
    }
    Ok(())
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
fn build_one(
    flavor: &Flavor,
    name: &str,
    variant: Variant,
    source: &Path,
    out: &Path,
) -> anyhow::Result<bool> {
    let go = flavor.go;
    let dir = out.join(&flavor.dir_name);
    std::fs::create_dir_all(&dir)?;
    let binary_name = format!("{name}{}", variant.suffix);
    let binary = dir.join(&binary_name);
    let stamp_path = dir.join(format!("{binary_name}.stamp"));
    let code = package_sources(source)?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    code.hash(&mut hasher);
    shared_sources()?.hash(&mut hasher);
    go.name.hash(&mut hasher);
    flavor.goexperiment.hash(&mut hasher);
    variant.args.hash(&mut hasher);
    variant.cgo.hash(&mut hasher);
    variant.suffix.hash(&mut hasher);
    let stamp = format!("{:016x}", hasher.finish());
    if binary.is_file()
        && std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
    {
        return Ok(false);
    }
    let cache = cache_dir();
    Cmd::new(go.root.join("bin/go"))
        .args(["build"])
        .args(variant.args)
        // The whole package: a fixture may have several files (presize's sites are
        // spread over files on purpose).
        .args(["-o".as_ref(), binary.as_os_str(), ".".as_ref()])
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", if variant.cgo { "1" } else { "0" })
        .env("GOEXPERIMENT", flavor.goexperiment)
        .env(
            "GOARCH",
            if variant.suffix == ARM64.suffix {
                "arm64"
            } else {
                "amd64"
            },
        )
        .env("GOFLAGS", "")
        .env("GOAMD64", "v1")
        .env("GOCACHE", cache.join("gocache"))
        .env("GOPATH", cache.join("gopath"))
        .current_dir(source.parent().expect("fixture dir"))
        .run()
        .with_context(|| format!("building fixture {binary_name} with {}", flavor.dir_name))?;
    std::fs::write(&stamp_path, stamp)?;
    Ok(true)
}
