//! The Kubernetes manifests: `kustomize build` of the base and the operator overlay,
//! both validated against the Kubernetes API schemas (kubernetes-validate) and the
//! overlay's ServiceMonitor and PrometheusRule against the Prometheus Operator's CRDs.
use std::path::Path;

use anyhow::{Context as _, bail};

use super::tools::{KUBERNETES_VALIDATE_VERSION, Tools};
use crate::util::Cmd;

/// `securityContext.appArmorProfile` exists from 1.30; the base is validated against
/// the oldest and the newest version kubernetes-validate knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30", KUBERNETES_VALIDATE_VERSION];

/// `kustomize build` output of deploy/base and deploy/overlays/operator.
pub struct Rendered {
    pub base: String,
    pub overlay: String,
}

/// Renders the base and the overlay, and checks that an overlay can move the base to
/// another namespace.
pub fn kustomize_build(tools: &Tools, deploy: &Path, scratch: &Path) -> anyhow::Result<Rendered> {
    let build = |dir: &str| {
        Cmd::new(&tools.kustomize)
            .args(["build"])
            .args([deploy.join(dir)])
            .output()
            .with_context(|| format!("kustomize build deploy/{dir} failed (run it to see why)"))
    };
    let base = build("base")?;
    let overlay = build("overlays/operator")?;
    // The base must be movable: an overlay's `namespace:` has to reach every
    // namespaced reference, including the ClusterRoleBinding's subject.
    let moved = scratch.join("moved-namespace");
    std::fs::create_dir_all(&moved)?;
    std::fs::write(
        moved.join("kustomization.yaml"),
        "namespace: moved-elsewhere\nresources:\n  - ../../../../deploy/base\n",
    )?;
    let rendered = Cmd::new(&tools.kustomize)
        .args(["build"])
        .args([&moved])
        .output()
        .context("kustomize build of a namespace overlay over deploy/base failed")?;
    let stale: Vec<&str> = rendered
        .lines()
        .filter(|l| l.trim() == "namespace: mapwatch")
        .collect();
    let namespace_moved = rendered.contains("\n  name: moved-elsewhere\n");
    if !stale.is_empty() || !namespace_moved {
        bail!(
            "an overlay setting `namespace:` leaves {} references to namespace mapwatch \
             (Namespace object renamed: {namespace_moved})",
            stale.len()
        );
    }
    Ok(Rendered { base, overlay })
}

/// kubernetes-validate --strict on the base and the overlay's core objects.
pub fn validate(tools: &Tools, rendered: &Rendered, scratch: &Path) -> anyhow::Result<()> {
    let base_file = scratch.join("base.yaml");
    std::fs::write(&base_file, &rendered.base)?;
    let (core, custom) = split_custom_resources(&rendered.overlay);
    if custom.len() != 2 {
        bail!(
            "the operator overlay should add a ServiceMonitor and a PrometheusRule, found {} custom resources",
            custom.len()
        );
    }
    let core_file = scratch.join("overlay-core.yaml");
    std::fs::write(&core_file, core.join("\n---\n") + "\n")?;
    for version in KUBERNETES_VERSIONS {
        Cmd::new(&tools.kubernetes_validate)
            .args(["--strict", "--quiet", "--kubernetes-version", version])
            .args([&base_file, &core_file])
            .run()?;
    }
    println!("    base and overlay core objects valid for Kubernetes {KUBERNETES_VERSIONS:?}");
    Ok(())
}

/// The overlay's ServiceMonitor and PrometheusRule against the CRD schemas in
/// deploy/crds (kubernetes-validate has none for custom resources).
pub fn validate_custom_resources(
    tools: &Tools,
    deploy: &Path,
    rendered: &Rendered,
    scratch: &Path,
) -> anyhow::Result<()> {
    let (_, custom) = split_custom_resources(&rendered.overlay);
    let file = scratch.join("overlay-custom.yaml");
    std::fs::write(&file, custom.join("\n---\n") + "\n")?;
    Cmd::new(&tools.python)
        .args([deploy.join("crds/validate.py"), deploy.join("crds"), file])
        .run()
}

/// `kustomize build` output split into core Kubernetes objects and custom resources of
/// the Prometheus Operator (which kubernetes-validate has no schemas for).
fn split_custom_resources(rendered: &str) -> (Vec<&str>, Vec<&str>) {
    rendered
        .split("\n---\n")
        .map(|doc| doc.trim_start_matches("---\n"))
        .filter(|doc| !doc.trim().is_empty())
        .partition(|doc| {
            !doc.lines()
                .any(|l| l.starts_with("apiVersion: monitoring.coreos.com/"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_output_splits_into_core_and_custom_resources() {
        let rendered = "apiVersion: v1\nkind: Service\n---\napiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\n---\napiVersion: apps/v1\nkind: DaemonSet\n";
        let (core, custom) = split_custom_resources(rendered);
        assert_eq!(core.len(), 2);
        assert_eq!(
            custom,
            ["apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor"]
        );
    }
}
