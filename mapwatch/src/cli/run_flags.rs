//! Flags of `mapwatch run`. Every setting is an `Option` so that "not given" leaves the
//! config file's value (or the default) in place: see [`RunFlags::apply_to`].
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    config::{ConfigError, NamePattern, Percent, RunConfig},
    discover::KubernetesMode,
    plan::HotProbe,
};

#[derive(Debug, Clone, Default, clap::Args)]
#[command(after_long_help = "\
Every setting can also live in a TOML file given with --config, under the flag's name \
with '_' for '-' (--overhead-budget -> overhead_budget; the filters as tables: \
[include] binary = [\"api-*\"], [exclude] namespace = [\"kube-system\"]). A flag that is \
given wins over the file; a list flag replaces the file's list. --print-config shows \
the result.

Examples:
  mapwatch run --listen 127.0.0.1:9433
  mapwatch run --config /etc/mapwatch/mapwatch.toml --exclude-namespace 'kube-*'
  mapwatch run --include-binary 'api-*,worker' --hot-probes mapassign_fast64 --print-config")]
pub struct RunFlags {
    /// TOML file with the same settings as these flags (flags win).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (defaults, then the file, then the flags) as
    /// TOML — a valid --config file — and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Address to serve /metrics, /healthz and /readyz on, IP:PORT or HOST:PORT
    /// [default: 0.0.0.0:9433].
    #[arg(long, value_name = "ADDR", value_parser = crate::config::parse_listen)]
    pub listen: Option<SocketAddr>,

    /// CPU the probes may cost each process, as a share of one core, like 1% or 0.5%
    /// [default: 1%]. Probes that would cost more are duty-cycled, and their counts
    /// scaled and marked as estimates.
    #[arg(long, value_name = "PERCENT")]
    pub overhead_budget: Option<Percent>,

    /// And at most this share of the process's own CPU use, like 1% [default: 1%]: a
    /// service that keeps half a core busy gets half of --overhead-budget, so the
    /// probes add about 1% to the CPU each of its requests takes. Never less than
    /// 0.01% of a core, so an idle process's rare probes stay attached.
    #[arg(long, value_name = "PERCENT")]
    pub overhead_share: Option<Percent>,

    /// CPU the probes may cost all processes of the node together, as a share of the
    /// node's CPU, like 5% [default: no node-wide limit].
    #[arg(long, value_name = "PERCENT")]
    pub node_budget: Option<Percent>,

    /// Opt-in probes on hot runtime functions, comma-separated [default: none].
    /// mapassign_fast64: where int64-keyed map assigns land in their tables (the bucket
    /// heatmap); mallocgc: every heap allocation. Hot code calls these millions of times
    /// a second.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub hot_probes: Option<Vec<HotProbe>>,

    /// Probe slice growth (runtime.growslice) [default: true; --slice-growth=false turns
    /// it off]. Busy services call it ~400k times a second per core: always on it cost
    /// one 27-43% of its throughput, so the overhead budget attaches it only part of the
    /// time there and scales its counts.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub slice_growth: Option<bool>,

    /// Profile only executables whose file name matches one of these patterns
    /// (comma-separated globs: *, ?, [a-z]).
    #[arg(long, value_delimiter = ',', value_name = "GLOBS")]
    pub include_binary: Option<Vec<NamePattern>>,

    /// Profile only pods in these namespaces (globs). Processes outside Kubernetes have
    /// the empty namespace: add "" to keep them.
    #[arg(long, value_delimiter = ',', value_name = "GLOBS")]
    pub include_namespace: Option<Vec<NamePattern>>,

    /// Profile only containers with these names (globs).
    #[arg(long, value_delimiter = ',', value_name = "GLOBS")]
    pub include_container: Option<Vec<NamePattern>>,

    /// Never profile executables whose file name matches (globs). Excludes win over
    /// includes.
    #[arg(long, value_delimiter = ',', value_name = "GLOBS")]
    pub exclude_binary: Option<Vec<NamePattern>>,

    /// Never profile pods in these namespaces (globs), e.g. 'kube-*'.
    #[arg(long, value_delimiter = ',', value_name = "GLOBS")]
    pub exclude_namespace: Option<Vec<NamePattern>>,

    /// Never profile containers with these names (globs), e.g. istio-proxy.
    #[arg(long, value_delimiter = ',', value_name = "GLOBS")]
    pub exclude_container: Option<Vec<NamePattern>>,

    /// Call sites kept as `function`/`file`/`line` labels per workload; later sites are
    /// counted as `other` [default: 50].
    #[arg(long, value_name = "N")]
    pub max_sites: Option<u32>,

    /// Element types kept as `elem_type` labels per workload; later types are counted as
    /// `other` [default: 20].
    #[arg(long, value_name = "N")]
    pub max_elem_types: Option<u32>,

    /// Series /metrics exports at most, whatever the number of workloads [default: 2000].
    /// Over it, the least active workloads' call sites and element types are folded
    /// into `other`, then whole workloads into one aggregate workload (all its labels
    /// `other`); the busiest keep their detail, and no count is lost.
    #[arg(long, value_name = "N")]
    pub series_budget: Option<u32>,

    /// How often /proc is rescanned for Go processes that exec events missed, like 30s
    /// or 2m [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub rescan_interval: Option<Duration>,

    /// How long a workload's series stay in /metrics after its last process exited,
    /// like 10m [default: 10m]. Counters of a workload that is gone would otherwise stay
    /// forever.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub series_expiry: Option<Duration>,

    /// Name workloads by their Kubernetes namespace, pod and container [default: auto]:
    /// auto does so when running in a pod with a service account, on requires it, off
    /// never asks the Kubernetes API.
    #[arg(long, value_name = "MODE")]
    pub kubernetes: Option<KubernetesMode>,
}

impl RunFlags {
    /// The configuration to run with: defaults, overridden by the `--config` file's keys,
    /// overridden by the flags that were given.
    pub fn effective_config(&self) -> Result<RunConfig, ConfigError> {
        let mut config = RunConfig::load(self.config.as_deref())?;
        self.apply_to(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Lays the flags that were given over `config`: each replaces its setting whole (a
    /// list flag the file's list), and a flag not given leaves the setting as it is.
    pub fn apply_to(&self, config: &mut RunConfig) {
        fn set<T: Clone>(target: &mut T, flag: &Option<T>) {
            if let Some(value) = flag {
                *target = value.clone();
            }
        }
        set(&mut config.listen, &self.listen);
        set(&mut config.overhead_budget, &self.overhead_budget);
        set(&mut config.overhead_share, &self.overhead_share);
        if self.node_budget.is_some() {
            config.node_budget = self.node_budget;
        }
        set(&mut config.hot_probes, &self.hot_probes);
        set(&mut config.slice_growth, &self.slice_growth);
        set(&mut config.max_sites, &self.max_sites);
        set(&mut config.max_elem_types, &self.max_elem_types);
        set(&mut config.series_budget, &self.series_budget);
        set(&mut config.rescan_interval, &self.rescan_interval);
        set(&mut config.series_expiry, &self.series_expiry);
        set(&mut config.kubernetes, &self.kubernetes);
        set(&mut config.include.binary, &self.include_binary);
        set(&mut config.include.namespace, &self.include_namespace);
        set(&mut config.include.container, &self.include_container);
        set(&mut config.exclude.binary, &self.exclude_binary);
        set(&mut config.exclude.namespace, &self.exclude_namespace);
        set(&mut config.exclude.container, &self.exclude_container);
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(flatten)]
        flags: RunFlags,
    }

    fn parse(args: &[&str]) -> Result<RunFlags, clap::Error> {
        Harness::try_parse_from(std::iter::once("run").chain(args.iter().copied())).map(|h| h.flags)
    }

    #[test]
    fn nothing_given_is_all_none() {
        let flags = parse(&[]).unwrap();
        assert!(flags.listen.is_none() && flags.slice_growth.is_none());
        assert!(flags.hot_probes.is_none() && flags.include_binary.is_none());
        assert!(!flags.print_config);
    }

    #[test]
    fn values_parse_into_their_types() {
        let flags = parse(&[
            "--listen",
            "127.0.0.1:9500",
            "--overhead-budget",
            "0.5%",
            "--hot-probes",
            "mapassign_fast64,mallocgc",
            "--slice-growth",
            "--include-binary",
            "api-*,worker",
            "--exclude-namespace",
            "kube-*",
            "--exclude-namespace",
            "monitoring",
            "--rescan-interval",
            "2m",
            "--kubernetes",
            "off",
        ])
        .unwrap();
        assert_eq!(flags.overhead_budget.unwrap().percent(), 0.5);
        assert_eq!(
            flags.hot_probes.unwrap(),
            [HotProbe::MapassignFast64, HotProbe::Mallocgc]
        );
        assert_eq!(flags.slice_growth, Some(true));
        let names = |list: Option<Vec<NamePattern>>| -> Vec<String> {
            list.unwrap()
                .iter()
                .map(|p| p.as_str().to_string())
                .collect()
        };
        assert_eq!(names(flags.include_binary), ["api-*", "worker"]);
        assert_eq!(names(flags.exclude_namespace), ["kube-*", "monitoring"]);
        assert_eq!(flags.rescan_interval, Some(Duration::from_secs(120)));
        assert_eq!(flags.kubernetes, Some(KubernetesMode::Off));
        assert_eq!(
            parse(&["--slice-growth=false"]).unwrap().slice_growth,
            Some(false)
        );
    }

    fn pattern(text: &str) -> NamePattern {
        text.parse().unwrap()
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = std::env::temp_dir().join(format!("mapwatch-run-flags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("mapwatch.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\nmax_sites = 7\nslice_growth = true\n\
             [include]\nnamespace = [\"a\", \"b\"]\n",
        )
        .unwrap();
        let flags = RunFlags {
            config: Some(file),
            listen: Some("127.0.0.1:2".parse().unwrap()),
            slice_growth: Some(false),
            include_namespace: Some(vec![pattern("c")]),
            ..RunFlags::default()
        };
        let config = flags.effective_config().unwrap();
        assert_eq!(config.listen, "127.0.0.1:2".parse().unwrap());
        assert!(!config.slice_growth);
        assert_eq!(config.include.namespace, [pattern("c")]);
        // Not given as a flag: the file's value stays.
        assert_eq!(config.max_sites, 7);
        // Neither: the default.
        assert_eq!(config.max_elem_types, crate::config::DEFAULT_MAX_ELEM_TYPES);

        let missing = RunFlags {
            config: Some(dir.join("absent.toml")),
            ..flags
        };
        let error = missing.effective_config().unwrap_err();
        assert!(error.to_string().contains("absent.toml"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_flags_leave_the_config_as_it_was() {
        let mut config = RunConfig {
            max_sites: 7,
            hot_probes: vec![HotProbe::Mallocgc],
            ..RunConfig::default()
        };
        let before = config.clone();
        RunFlags::default().apply_to(&mut config);
        assert_eq!(config, before);
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let error = parse(&["--overhead-budget", "1"]).unwrap_err().to_string();
        assert!(error.contains("write it like \"1%\""), "{error}");
        let error = parse(&["--hot-probes", "growslice"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("mapassign_fast64"), "{error}");
        assert!(parse(&["--include-binary", "[x"]).is_err());
    }
}
