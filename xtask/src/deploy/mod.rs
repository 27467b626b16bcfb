//! `cargo xtask deploy-check`: everything in deploy/ checked offline with the real tools
//! (kustomize, kubernetes-validate, the operator's CRD schemas, promtool, hadolint), the
//! dashboards' structure and metrics, and a smoke test of the image's root filesystem.
//!
//! One file per job: `tools` installs and finds the checkers, `kubernetes` the
//! manifests, `prometheus` the alert rules and scrape configuration, `metric_contract`
//! the dashboards and rules against the registry's metrics (with `dashboards` reading
//! the Grafana JSON), `image` the Dockerfile and the runtime image's root filesystem.
pub mod dashboards;
mod image;
mod kubernetes;
mod metric_contract;
mod prometheus;
mod tools;

use std::path::{Path, PathBuf};

use crate::util::{step, workspace_root};

pub struct Options<'a> {
    /// Rewrite generated files (the PrometheusRule) instead of failing when stale.
    pub write: bool,
    /// Where `cargo xtask fixtures` put the Go fixtures (for `inspect` in the image).
    pub fixtures_dir: &'a Path,
}

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let deploy = deploy_dir();
    let tools = step(
        "deploy: tools (kustomize, kubernetes-validate, hadolint)",
        tools::install,
    )?;
    let scratch = workspace_root().join("target/tmp/deploy-check");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)?;
    }
    std::fs::create_dir_all(&scratch)?;

    step("deploy: PrometheusRule generated from rules.yml", || {
        prometheus::sync_prometheus_rule(&deploy, options.write)
    })?;
    let rendered = step("deploy: kustomize build", || {
        kubernetes::kustomize_build(&tools, &deploy, &scratch)
    })?;
    step("deploy: kubernetes-validate --strict", || {
        kubernetes::validate(&tools, &rendered, &scratch)
    })?;
    step(
        "deploy: ServiceMonitor, PrometheusRule against the operator CRDs",
        || kubernetes::validate_custom_resources(&tools, &deploy, &rendered, &scratch),
    )?;
    step("deploy: promtool (rules, rule tests, config)", || {
        prometheus::promtool_checks(&deploy, &scratch)
    })?;
    step("deploy: hadolint Dockerfile", || {
        image::hadolint(&tools, &deploy.join("Dockerfile"))
    })?;
    step(
        "deploy: dashboards (structure, metrics, PromQL syntax)",
        || metric_contract::check_dashboards_and_rules(&deploy, &scratch),
    )?;
    step("deploy: image root filesystem smoke test", || {
        image::smoke_test(&deploy.join("Dockerfile"), options.fixtures_dir, &scratch)
    })?;
    Ok(())
}
