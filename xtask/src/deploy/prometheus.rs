//! Prometheus: the alert rules (deploy/prometheus/rules.yml, the one source of the
//! operator overlay's PrometheusRule), their unit tests and the scrape configuration,
//! all checked with promtool.
use std::path::Path;

use anyhow::{Context as _, bail};

use super::deploy_dir;
use crate::util::Cmd;

/// The scrape target written in deploy/prometheus/prometheus.yml, replaced by
/// [`render_prometheus_config`].
pub const PROMETHEUS_CONFIG_TARGET: &str = "127.0.0.1:9433";

/// The PrometheusRule for the operator overlay: rules.yml's `groups:` under `spec:`.
/// rules.yml stays the one source; this text is derived from it byte for byte, so a
/// plain comparison proves the two carry the same rules.
pub fn prometheus_rule_manifest(rules_yml: &str) -> String {
    let mut out = String::from(
        "# GENERATED from deploy/prometheus/rules.yml by `cargo xtask deploy-check --write`.\n\
         # Do not edit: change rules.yml and regenerate (deploy-check fails while they differ).\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  name: mapwatch\n  labels:\n    app.kubernetes.io/name: mapwatch\n\
         spec:\n",
    );
    // rules.yml's leading comments talk about loading the file; they stay behind.
    let body = rules_yml
        .lines()
        .skip_while(|line| line.starts_with('#') || line.trim().is_empty());
    for line in body {
        if !line.is_empty() {
            out.push_str("  ");
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

pub fn sync_prometheus_rule(deploy: &Path, write: bool) -> anyhow::Result<()> {
    let rules = std::fs::read_to_string(deploy.join("prometheus/rules.yml"))?;
    let wanted = prometheus_rule_manifest(&rules);
    let path = deploy.join("overlays/operator/prometheusrule.yaml");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current == wanted {
        println!("    up to date: {}", path.display());
    } else if write {
        std::fs::write(&path, wanted)?;
        println!("    wrote {}", path.display());
    } else {
        bail!(
            "{} is not what deploy/prometheus/rules.yml generates: run `cargo xtask deploy-check --write`",
            path.display()
        );
    }
    Ok(())
}

/// promtool on the rules, the rule tests, and the configuration as committed and as
/// the end-to-end test runs it.
pub fn promtool_checks(deploy: &Path, scratch: &Path) -> anyhow::Result<()> {
    let prometheus = deploy.join("prometheus");
    Cmd::new("promtool")
        .args(["check", "rules"])
        .args([prometheus.join("rules.yml")])
        .run()?;
    Cmd::new("promtool")
        .args(["test", "rules"])
        .args([prometheus.join("rules.test.yml")])
        .run()?;
    Cmd::new("promtool")
        .args(["check", "config"])
        .args([prometheus.join("prometheus.yml")])
        .run()?;
    // The configuration the end-to-end test will run, from another directory.
    let rendered = scratch.join("prometheus-e2e.yml");
    std::fs::write(
        &rendered,
        render_prometheus_config("127.0.0.1:19433", &prometheus.join("rules.yml"), 5)?,
    )?;
    Cmd::new("promtool")
        .args(["check", "config"])
        .args([rendered])
        .run()
}

/// deploy/prometheus/prometheus.yml with its scrape target replaced by `target`, the
/// rule file referenced by absolute path (so the result can live in any directory) and
/// the scrape and evaluation intervals set to `interval_seconds`. For the end-to-end
/// test, which starts a real Prometheus with it.
pub fn render_prometheus_config(
    target: &str,
    rules_file: &Path,
    interval_seconds: u32,
) -> anyhow::Result<String> {
    let path = deploy_dir().join("prometheus/prometheus.yml");
    let text = std::fs::read_to_string(&path)?;
    substitute_prometheus_config(&text, target, rules_file, interval_seconds)
        .with_context(|| format!("templating {}", path.display()))
}

fn substitute_prometheus_config(
    text: &str,
    target: &str,
    rules_file: &Path,
    interval_seconds: u32,
) -> anyhow::Result<String> {
    let replace_once = |text: &str, from: &str, to: &str| -> anyhow::Result<String> {
        match text.matches(from).count() {
            1 => Ok(text.replacen(from, to, 1)),
            n => bail!("expected {from:?} once, found it {n} times"),
        }
    };
    let rules = rules_file
        .to_str()
        .context("rules file path is not UTF-8")?;
    let text = replace_once(
        text,
        &format!("- {PROMETHEUS_CONFIG_TARGET}\n"),
        &format!("- {target}\n"),
    )?;
    let text = replace_once(&text, "\n  - rules.yml\n", &format!("\n  - {rules}\n"))?;
    let text = replace_once(
        &text,
        "  scrape_interval: 15s\n",
        &format!("  scrape_interval: {interval_seconds}s\n"),
    )?;
    replace_once(
        &text,
        "  evaluation_interval: 15s\n",
        &format!("  evaluation_interval: {interval_seconds}s\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_rule_nests_the_rule_groups_under_spec() {
        let rules = "# how to load\n\ngroups:\n  - name: g\n    rules:\n      - alert: A\n        annotations:\n          runbook: |\n            one\n\n            two\n";
        let manifest = prometheus_rule_manifest(rules);
        assert!(manifest.contains("kind: PrometheusRule\n"));
        assert!(!manifest.contains("how to load"));
        assert!(manifest.ends_with(
            "spec:\n  groups:\n    - name: g\n      rules:\n        - alert: A\n          annotations:\n            runbook: |\n              one\n\n              two\n"
        ));
    }

    #[test]
    fn the_committed_prometheus_rule_is_generated_from_rules_yml() {
        let deploy = deploy_dir();
        let rules = std::fs::read_to_string(deploy.join("prometheus/rules.yml")).unwrap();
        let committed =
            std::fs::read_to_string(deploy.join("overlays/operator/prometheusrule.yaml")).unwrap();
        assert!(
            committed == prometheus_rule_manifest(&rules),
            "run `cargo xtask deploy-check --write`"
        );
    }

    #[test]
    fn prometheus_config_is_templated_in_all_four_places() {
        let config =
            std::fs::read_to_string(deploy_dir().join("prometheus/prometheus.yml")).unwrap();
        let rendered = substitute_prometheus_config(
            &config,
            "127.0.0.1:40000",
            Path::new("/abs/rules.yml"),
            2,
        )
        .unwrap();
        assert!(rendered.contains("- 127.0.0.1:40000\n"));
        assert!(!rendered.contains(&format!("- {PROMETHEUS_CONFIG_TARGET}")));
        assert!(rendered.contains("\n  - /abs/rules.yml\n"));
        assert!(rendered.contains("scrape_interval: 2s\n"));
        assert!(rendered.contains("evaluation_interval: 2s\n"));
        assert!(substitute_prometheus_config("global: {}\n", "x", Path::new("/r"), 2).is_err());
    }
}
