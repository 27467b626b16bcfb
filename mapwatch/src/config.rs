//! The `mapwatch run` configuration: defaults, then an optional TOML file, then the
//! command-line flags — a flag that is given wins over the file's key of the same name
//! (`--overhead-budget` ↔ `overhead_budget`; a list flag replaces the file's list).
//! This module holds the defaults and the file; the CLI lays its flags over them
//! (`RunFlags::apply_to` in cli/run_flags.rs), so the settings do not depend on the
//! command line that sets them.
//!
//! ```toml
//! listen = "0.0.0.0:9433"
//! overhead_budget = "1%"
//! hot_probes = ["mapassign_fast64"]
//! kubernetes = "auto"
//!
//! [include]
//! namespace = ["shop", "payments-*"]
//!
//! [exclude]
//! binary = ["*-debug"]
//! ```
use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    discover::{KubernetesMode, WorkloadIdentity},
    plan::HotProbe,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A syntax error, a wrong type, an invalid value or an unknown key, at its place
    /// in the file.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    InvalidFile { path: PathBuf, message: String },
    #[error("printing the configuration as TOML: {0}")]
    Print(#[from] toml::ser::Error),
    /// A value that parses but cannot work (checked once flags and file are merged).
    #[error("{key} (--{flag}) = {value}: {rule}")]
    OutOfRange {
        key: &'static str,
        flag: String,
        value: String,
        rule: &'static str,
    },
}

/// Limits of the settings that are numbers or durations (see [`RunConfig::validate`]).
pub const MIN_RESCAN_INTERVAL: Duration = Duration::from_secs(1);
pub const MIN_SERIES_EXPIRY: Duration = Duration::from_secs(1);
/// Per-workload label caps: each kept value is a few series per metric family, and the
/// node's series budget is finite.
pub const MAX_LABEL_CAP: u32 = 1000;
/// Below this the aggregate workload and mapwatch's own series alone may not fit.
pub const MIN_SERIES_BUDGET: u32 = 100;
pub const MAX_SERIES_BUDGET: u32 = 10_000_000;

/// Resolves a listen address written as `IP:PORT` or `HOST:PORT` (configs name hosts:
/// `localhost:9433`); an IPv4 address is preferred when a name has both.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    // A fuzzer's thousands of host names must not become DNS queries.
    if cfg!(fuzzing) {
        return Err(format!("{text:?}: no name lookups while fuzzing"));
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|e| format!("{text:?} is not an address to listen on (HOST:PORT): {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// serde: a listen address as [`parse_listen`] reads it.
mod listen_text {
    use std::net::SocketAddr;

    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &SocketAddr, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_listen(&text).map_err(serde::de::Error::custom)
    }
}

/// A CPU share written as a percentage, like `1%` or `0.5%`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(f64);

impl Percent {
    pub fn from_percent(percent: f64) -> Result<Percent, String> {
        if percent.is_finite() && percent > 0.0 && percent <= 100.0 {
            Ok(Percent(percent))
        } else {
            Err(format!(
                "{percent}% is out of range: a budget is above 0% and at most 100%"
            ))
        }
    }

    /// The share as a fraction (1% → 0.01).
    pub fn fraction(self) -> f64 {
        self.0 / 100.0
    }

    pub fn percent(self) -> f64 {
        self.0
    }
}

impl FromStr for Percent {
    type Err = String;

    fn from_str(text: &str) -> Result<Percent, String> {
        // The '%' is required: "0.01" could be meant as a fraction or as a percent.
        let number = text
            .trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
            .ok_or_else(|| {
                format!("{text:?} is not a percentage: write it like \"1%\" or \"0.5%\"")
            })?;
        Percent::from_percent(number)
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Percent, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A shell-style name pattern (`*`, `?`, `[a-z]`), matched against a whole name.
#[derive(Debug, Clone)]
pub struct NamePattern {
    text: String,
    pattern: glob::Pattern,
}

impl NamePattern {
    pub fn matches(&self, name: &str) -> bool {
        self.pattern.matches(name)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for NamePattern {
    fn eq(&self, other: &NamePattern) -> bool {
        self.text == other.text
    }
}

impl FromStr for NamePattern {
    type Err = String;

    fn from_str(text: &str) -> Result<NamePattern, String> {
        let pattern = glob::Pattern::new(text)
            .map_err(|e| format!("{text:?} is not a valid name pattern: {e}"))?;
        Ok(NamePattern {
            text: text.to_string(),
            pattern,
        })
    }
}

impl Serialize for NamePattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for NamePattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<NamePattern, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Name patterns per dimension of a workload's identity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterRules {
    /// The executable's file name (`/proc/PID/exe`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub binary: Vec<NamePattern>,
    /// The Kubernetes namespace; empty outside Kubernetes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespace: Vec<NamePattern>,
    /// The container's name in its pod; empty outside Kubernetes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub container: Vec<NamePattern>,
}

impl FilterRules {
    fn dimensions<'a>(
        &'a self,
        workload: &'a WorkloadIdentity,
    ) -> [(&'a [NamePattern], &'a str); 3] {
        [
            (&self.binary, &workload.binary),
            (&self.namespace, &workload.namespace),
            (&self.container, &workload.container),
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.binary.is_empty() && self.namespace.is_empty() && self.container.is_empty()
    }
}

/// Which workloads are profiled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    pub include: FilterRules,
    pub exclude: FilterRules,
}

impl Filters {
    /// A workload is admitted when, in every dimension that has include patterns, it
    /// matches one of them, and it matches no exclude pattern at all. So
    /// `include.namespace = ["shop"]` admits only pods of `shop` — and no process
    /// outside Kubernetes, whose namespace is empty (`""` as a pattern admits those).
    /// Whether the binary-name patterns alone admit `binary`: checked before a binary
    /// is analysed or its pod looked up.
    pub fn admits_binary(&self, binary: &str) -> bool {
        let included =
            self.include.binary.is_empty() || self.include.binary.iter().any(|p| p.matches(binary));
        included && !self.exclude.binary.iter().any(|p| p.matches(binary))
    }

    pub fn admits(&self, workload: &WorkloadIdentity) -> bool {
        let included = self
            .include
            .dimensions(workload)
            .iter()
            .all(|(patterns, name)| {
                patterns.is_empty() || patterns.iter().any(|p| p.matches(name))
            });
        let excluded = self
            .exclude
            .dimensions(workload)
            .iter()
            .any(|(patterns, name)| patterns.iter().any(|p| p.matches(name)));
        included && !excluded
    }
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:9433";
pub const DEFAULT_MAX_SITES: u32 = 50;
pub const DEFAULT_MAX_ELEM_TYPES: u32 = 20;
/// Series per node: a 1,000-node fleet then stays around 2 M series.
pub const DEFAULT_SERIES_BUDGET: u32 = 2000;
/// New processes are normally seen through exec events; the rescan catches what those
/// miss (a lost event, processes of a container started before the daemon).
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(30);
/// Long enough to outlive a restart (and a few scrapes), short enough that a node's
/// churn of short-lived processes does not pile up series.
pub const DEFAULT_SERIES_EXPIRY: Duration = Duration::from_secs(600);

/// The effective configuration of `mapwatch run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Where /metrics, /healthz and /readyz are served.
    #[serde(with = "listen_text")]
    pub listen: SocketAddr,
    /// CPU the probes may cost each process, as a share of one core.
    pub overhead_budget: Percent,
    /// And at most this share of the process's own CPU use.
    pub overhead_share: Percent,
    /// CPU the probes may cost all processes of the node together, as a share of the
    /// node's CPU; unset: only the per-process budget applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_budget: Option<Percent>,
    /// Opt-in probes on hot runtime functions.
    pub hot_probes: Vec<HotProbe>,
    /// Probe runtime.growslice. A JSON service calls it tens of times per request, so
    /// always on it would cost several times the service's own CPU (BENCHMARKS.md,
    /// `attach --exact`); under the overhead budget it is duty-cycled like the rest.
    pub slice_growth: bool,
    /// Call sites kept as labels per workload; later ones are counted as `other`.
    pub max_sites: u32,
    /// Element types kept as labels per workload; later ones are counted as `other`.
    pub max_elem_types: u32,
    /// Series /metrics exports at most, whatever the number of workloads: the least
    /// active workloads' detail is folded into `other`, then into one aggregate.
    pub series_budget: u32,
    /// How often /proc is scanned for processes the exec events missed.
    #[serde(with = "duration_text")]
    pub rescan_interval: Duration,
    /// How long the series of a workload stay after its last process exited.
    #[serde(with = "duration_text")]
    pub series_expiry: Duration,
    pub kubernetes: KubernetesMode,
    pub include: FilterRules,
    pub exclude: FilterRules,
}

impl Default for RunConfig {
    fn default() -> RunConfig {
        RunConfig {
            listen: DEFAULT_LISTEN.parse().expect("default listen address"),
            overhead_budget: Percent(1.0),
            overhead_share: Percent(1.0),
            node_budget: None,
            hot_probes: Vec::new(),
            slice_growth: true,
            max_sites: DEFAULT_MAX_SITES,
            max_elem_types: DEFAULT_MAX_ELEM_TYPES,
            series_budget: DEFAULT_SERIES_BUDGET,
            rescan_interval: DEFAULT_RESCAN_INTERVAL,
            series_expiry: DEFAULT_SERIES_EXPIRY,
            kubernetes: KubernetesMode::Auto,
            include: FilterRules::default(),
            exclude: FilterRules::default(),
        }
    }
}

impl RunConfig {
    /// Defaults, overridden by the file's keys (if a file is given); the flags that were
    /// given go on top of this.
    pub fn load(file: Option<&Path>) -> Result<RunConfig, ConfigError> {
        match file {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                RunConfig::from_toml_bytes(&bytes, path)
            }
            None => Ok(RunConfig::default()),
        }
    }

    /// Parses a config file's bytes; text that is not UTF-8 (a Latin-1 `é` in a comment)
    /// is an error at its first bad byte, like any other.
    pub fn from_toml_bytes(bytes: &[u8], path: &Path) -> Result<RunConfig, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|error| {
            let valid = String::from_utf8_lossy(&bytes[..error.valid_up_to()]);
            let (line, column) = line_column(&valid, valid.len());
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message: "not UTF-8: TOML files are UTF-8 text".to_string(),
            }
        })?;
        RunConfig::from_toml(text, path)
    }

    /// Parses a config file's text; `path` names it in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<RunConfig, ConfigError> {
        toml::from_str(text).map_err(|error| match error.span() {
            Some(span) => {
                let (line, column) = line_column(text, span.start);
                ConfigError::Invalid {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message: error.message().trim().to_string(),
                }
            }
            None => ConfigError::InvalidFile {
                path: path.to_path_buf(),
                message: error.message().trim().to_string(),
            },
        })
    }

    /// The configuration as a config file (`mapwatch run --print-config`): feeding it
    /// back with `--config` gives the same configuration.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        Ok(format!(
            "# mapwatch run: effective configuration (defaults < config file < flags)\n{}",
            toml::to_string(self)?
        ))
    }

    /// Checks what parsing cannot: every duration and number can work. Called on the
    /// effective configuration, so a value from a flag and one from the file are
    /// checked alike (a zero rescan interval used to reach a panic).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let out_of_range = |key: &'static str, value: String, rule: &'static str| {
            Err(ConfigError::OutOfRange {
                key,
                flag: key.replace('_', "-"),
                value,
                rule,
            })
        };
        if self.rescan_interval < MIN_RESCAN_INTERVAL {
            return out_of_range(
                "rescan_interval",
                humantime::format_duration(self.rescan_interval).to_string(),
                "must be at least 1s (a /proc scan costs the node CPU; exec notices find \
                 new processes in between)",
            );
        }
        if self.series_expiry < MIN_SERIES_EXPIRY {
            return out_of_range(
                "series_expiry",
                humantime::format_duration(self.series_expiry).to_string(),
                "must be at least 1s",
            );
        }
        for (key, cap) in [
            ("max_sites", self.max_sites),
            ("max_elem_types", self.max_elem_types),
        ] {
            if cap == 0 || cap > MAX_LABEL_CAP {
                return out_of_range(
                    key,
                    cap.to_string(),
                    "must be between 1 and 1000 (each kept value adds series)",
                );
            }
        }
        if !(MIN_SERIES_BUDGET..=MAX_SERIES_BUDGET).contains(&self.series_budget) {
            return out_of_range(
                "series_budget",
                self.series_budget.to_string(),
                "must be between 100 and 10000000 (mapwatch's own series and the \
                 aggregate workload need a few hundred)",
            );
        }
        Ok(())
    }

    pub fn filters(&self) -> Filters {
        Filters {
            include: self.include.clone(),
            exclude: self.exclude.clone(),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Durations as text the way the flags take them: "30s", "2m", "1h 30m".
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({e}): write it like \"30s\" or \"2m\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RunConfig, ConfigError> {
        RunConfig::from_toml(text, Path::new("mapwatch.toml"))
    }

    fn error_text(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    fn pattern(text: &str) -> NamePattern {
        text.parse().unwrap()
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config, RunConfig::default());
        assert_eq!(config.listen, "0.0.0.0:9433".parse().unwrap());
        assert_eq!(config.overhead_budget.fraction(), 0.01);
        assert_eq!(config.overhead_share.fraction(), 0.01);
        assert!(config.slice_growth);
        assert!(config.hot_probes.is_empty());
        assert_eq!((config.max_sites, config.max_elem_types), (50, 20));
        assert_eq!(config.kubernetes, KubernetesMode::Auto);
    }

    #[test]
    fn every_key_is_read() {
        let config = parse(
            r#"
listen = "127.0.0.1:9500"
overhead_budget = "0.5%"
overhead_share = "2%"
node_budget = "2%"
hot_probes = ["mapassign_fast64", "mallocgc"]
slice_growth = false
max_sites = 10
max_elem_types = 5
rescan_interval = "2m"
kubernetes = "off"

[include]
binary = ["api-*"]
namespace = ["shop", "pay*"]

[exclude]
container = ["istio-proxy"]
"#,
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:9500".parse().unwrap());
        assert_eq!(config.overhead_budget.percent(), 0.5);
        assert_eq!(config.overhead_share.percent(), 2.0);
        assert_eq!(config.node_budget.map(Percent::percent), Some(2.0));
        assert_eq!(
            config.hot_probes,
            [HotProbe::MapassignFast64, HotProbe::Mallocgc]
        );
        assert!(!config.slice_growth);
        assert_eq!((config.max_sites, config.max_elem_types), (10, 5));
        assert_eq!(config.rescan_interval, Duration::from_secs(120));
        assert_eq!(config.kubernetes, KubernetesMode::Off);
        assert_eq!(config.include.binary, [pattern("api-*")]);
        assert_eq!(config.include.namespace, [pattern("shop"), pattern("pay*")]);
        assert_eq!(config.exclude.container, [pattern("istio-proxy")]);
    }

    #[test]
    fn unknown_key_is_named_with_its_line_and_column() {
        let message = error_text("listen = \"0.0.0.0:9433\"\n  overhead_budgte = \"1%\"\n");
        assert!(
            message.starts_with("mapwatch.toml:2:3: unknown field `overhead_budgte`"),
            "{message}"
        );
        // The valid keys are listed, so the typo is easy to fix.
        assert!(message.contains("overhead_budget"), "{message}");
        let nested = error_text("[include]\nbinaries = [\"x\"]\n");
        assert!(
            nested.starts_with("mapwatch.toml:2:1: unknown field `binaries`"),
            "{nested}"
        );
    }

    #[test]
    fn bad_values_point_at_the_value() {
        for (text, place, words) in [
            ("overhead_budget = \"1\"\n", "1:19", "write it like \"1%\""),
            ("overhead_budget = \"150%\"\n", "1:19", "out of range"),
            ("node_budget = \"0%\"\n", "1:15", "out of range"),
            ("\n\nrescan_interval = \"soon\"\n", "3:19", "not a duration"),
            (
                "hot_probes = [\"growslice\"]\n",
                "1:15",
                "unknown variant `growslice`",
            ),
            ("kubernetes = \"yes\"\n", "1:14", "unknown variant `yes`"),
            ("listen = \"9433\"\n", "1:10", "invalid socket address"),
            ("max_sites = -1\n", "1:13", ""),
            ("slice_growth = \"true\"\n", "1:16", "invalid type"),
            (
                "[exclude]\nbinary = [\"[oops\"]\n",
                "2:10",
                "not a valid name pattern",
            ),
        ] {
            let message = error_text(text);
            assert!(
                message.starts_with(&format!("mapwatch.toml:{place}: ")) && message.contains(words),
                "{text:?} gave {message:?}"
            );
        }
    }

    #[test]
    fn syntax_errors_have_a_place_too() {
        let message = error_text("listen = \"0.0.0.0:9433\"\nmax_sites = \n");
        assert!(message.starts_with("mapwatch.toml:2:"), "{message}");
    }

    #[test]
    fn text_that_is_not_utf8_is_an_error_at_its_place() {
        // A Latin-1 'é' in a comment: reading the file as a String failed without a place.
        let bytes = b"kubernetes = \"on\"\n# caf\xe9\n";
        let error = RunConfig::from_toml_bytes(bytes, Path::new("mapwatch.toml")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "mapwatch.toml:2:6: not UTF-8: TOML files are UTF-8 text"
        );
    }

    #[test]
    fn printed_config_reads_back_the_same() {
        let mut config = RunConfig {
            node_budget: Some("3%".parse().unwrap()),
            hot_probes: vec![HotProbe::Mallocgc],
            rescan_interval: Duration::from_secs(90),
            ..RunConfig::default()
        };
        config.exclude.namespace = vec![pattern("kube-*")];
        for config in [RunConfig::default(), config] {
            let text = config.to_toml().unwrap();
            assert_eq!(parse(&text).unwrap(), config, "{text}");
        }
        let text = RunConfig::default().to_toml().unwrap();
        assert!(text.contains("overhead_budget = \"1%\""), "{text}");
        assert!(text.contains("rescan_interval = \"30s\""), "{text}");
    }

    fn workload(binary: &str, namespace: &str, container: &str) -> WorkloadIdentity {
        WorkloadIdentity {
            binary: binary.into(),
            go_version: "go1.24.11".into(),
            namespace: namespace.into(),
            pod: if namespace.is_empty() { "" } else { "p-1" }.into(),
            container: container.into(),
        }
    }

    fn rules(binary: &[&str], namespace: &[&str], container: &[&str]) -> FilterRules {
        let patterns = |list: &[&str]| list.iter().map(|p| pattern(p)).collect();
        FilterRules {
            binary: patterns(binary),
            namespace: patterns(namespace),
            container: patterns(container),
        }
    }

    #[test]
    fn no_filters_admit_everything() {
        let filters = Filters::default();
        assert!(filters.admits(&workload("api", "shop", "server")));
        assert!(filters.admits(&workload("api", "", "")));
    }

    #[test]
    fn include_is_and_across_dimensions_or_within() {
        let filters = Filters {
            include: rules(&["api-*", "worker"], &["shop", "pay*"], &[]),
            exclude: FilterRules::default(),
        };
        assert!(filters.admits(&workload("api-v2", "shop", "x")));
        assert!(filters.admits(&workload("worker", "payments", "x")));
        assert!(!filters.admits(&workload("api-v2", "kube-system", "x")));
        assert!(!filters.admits(&workload("cron", "shop", "x")));
        // Outside Kubernetes the namespace is empty: a namespace include leaves it out…
        assert!(!filters.admits(&workload("api-v2", "", "")));
        // …unless "" is one of the patterns.
        let with_host = Filters {
            include: rules(&[], &["shop", ""], &[]),
            exclude: FilterRules::default(),
        };
        assert!(with_host.admits(&workload("anything", "", "")));
    }

    #[test]
    fn exclude_wins_in_any_dimension() {
        let filters = Filters {
            include: rules(&["*"], &[], &[]),
            exclude: rules(&["*-debug"], &["kube-*"], &["istio-proxy", "linkerd-?roxy"]),
        };
        assert!(filters.admits(&workload("api", "shop", "server")));
        assert!(!filters.admits(&workload("api-debug", "shop", "server")));
        assert!(!filters.admits(&workload("coredns", "kube-system", "coredns")));
        assert!(!filters.admits(&workload("pilot-agent", "shop", "istio-proxy")));
        assert!(!filters.admits(&workload("proxy", "shop", "linkerd-proxy")));
        // Patterns match whole names, not substrings.
        assert!(filters.admits(&workload("api-debugger", "shop", "server")));
    }

    #[test]
    fn percent_text_round_trips() {
        for text in ["1%", "0.5%", "100%", "12.25%"] {
            assert_eq!(text.parse::<Percent>().unwrap().to_string(), text);
        }
        assert_eq!(" 2 % ".parse::<Percent>().unwrap().percent(), 2.0);
        for bad in ["", "%", "1", "0%", "-1%", "NaN%", "inf%", "101%"] {
            assert!(bad.parse::<Percent>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_and_caps_that_cannot_work_are_refused() {
        let valid = RunConfig::default();
        assert!(valid.validate().is_ok());
        let refused = |config: RunConfig| config.validate().unwrap_err().to_string();
        let error = refused(RunConfig {
            rescan_interval: Duration::ZERO,
            ..valid.clone()
        });
        assert!(
            error.starts_with("rescan_interval (--rescan-interval) = 0s: must be at least 1s"),
            "{error}"
        );
        assert!(
            refused(RunConfig {
                series_expiry: Duration::from_millis(10),
                ..valid.clone()
            })
            .contains("series_expiry")
        );
        assert!(
            refused(RunConfig {
                max_sites: 0,
                ..valid.clone()
            })
            .contains("max_sites")
        );
        assert!(
            refused(RunConfig {
                max_elem_types: MAX_LABEL_CAP + 1,
                ..valid.clone()
            })
            .contains("max_elem_types")
        );
        let error = refused(RunConfig {
            series_budget: 10,
            ..valid.clone()
        });
        assert!(
            error.starts_with("series_budget (--series-budget) = 10: must be between 100"),
            "{error}"
        );
        assert!(
            RunConfig {
                max_sites: MAX_LABEL_CAP,
                rescan_interval: MIN_RESCAN_INTERVAL,
                ..valid
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn listen_addresses_may_name_a_host() {
        assert_eq!(
            parse_listen("localhost:9433").unwrap(),
            "127.0.0.1:9433".parse().unwrap()
        );
        assert_eq!(
            parse_listen("[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert!(parse_listen("9433").is_err());
        let config =
            RunConfig::from_toml("listen = \"localhost:1\"\n", Path::new("x.toml")).unwrap();
        assert_eq!(config.listen, "127.0.0.1:1".parse().unwrap());
    }
}
