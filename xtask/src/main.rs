//! `cargo xtask <task>`: everything the project needs beyond `cargo build`, set up by
//! the project itself on a fresh machine (Debian 12, root), idempotently.
mod bench;
mod demo;
mod deploy;
mod fixtures;
mod fuzz;
mod offsets;
mod setup;
mod soak;
mod util;
mod vendor;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "mapwatch project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (Debian packages, bpf-linker, rust-src,
    /// Go toolchains); quick when everything is there.
    Setup,
    /// Build the Go fixtures for every Go version into target/fixtures.
    Fixtures,
    /// Setup, fixtures, then every check and test (as CI runs them).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        cargo_test_args: Vec<String>,
    },
    /// Measure probe cost, a service under load, the daemon, attach latency and
    /// inspect, and rewrite BENCHMARKS.md (root; under 20 minutes).
    Bench {
        /// Fewer rounds and shorter runs, for iterating (numbers are noisier).
        #[arg(long)]
        quick: bool,
        /// Run only these sections and print them; BENCHMARKS.md is left as it is
        /// (for iterating on one cost).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<bench::Section>,
    },
    /// Run every fuzz target for a bounded time (also part of `test`).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        seconds: u64,
    },
    /// Regenerate the struct-offsets table (for binaries without DWARF) from the DWARF
    /// of every fixture.
    GenOffsets,
    /// Setup, then profile a bundled Go workload and print its metrics.
    Demo {
        /// How long to profile.
        #[arg(long, default_value = "20")]
        seconds: u64,
    },
    /// Run `mapwatch run` under steady load and process churn for a while, printing its
    /// memory, open files, lost records and attach errors; fail on growth (root; not
    /// part of `test`).
    Soak {
        /// How long.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// Check that vendor/aya is aya 0.14.0 plus its documented patch (also part of `test`).
    VendorCheck,
    /// Check deploy/ offline: kustomize, Kubernetes and CRD schemas, promtool, hadolint,
    /// dashboards, and a smoke test of the image's root filesystem.
    DeployCheck {
        /// Regenerate deploy/overlays/operator/prometheusrule.yaml from rules.yml.
        #[arg(long)]
        write: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run().map(|_| ()),
        Task::Fixtures => {
            let env = setup::run()?;
            fixtures::build_all(&env).map(|_| ())
        }
        Task::Test { cargo_test_args } => test(&cargo_test_args),
        Task::GenOffsets => offsets::run(),
        Task::Bench { quick, only } => bench::run(quick, &only),
        Task::Fuzz { seconds } => {
            setup::run()?;
            fuzz::run(seconds)
        }
        Task::Demo { seconds } => demo::run(seconds),
        Task::VendorCheck => vendor::check(),
        Task::Soak { minutes } => soak::run(minutes),
        Task::DeployCheck { write } => {
            let env = setup::run()?;
            let fixtures_dir = fixtures::build_all(&env)?;
            deploy::run(&deploy::Options {
                write,
                fixtures_dir: &fixtures_dir,
            })
        }
    }
}

fn test(cargo_test_args: &[String]) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let env = setup::run()?;
    let fixtures_dir = fixtures::build_all(&env)?;
    util::step("vendor/aya is aya 0.14.0 + its patch", vendor::check)?;
    util::step("cargo fmt --check", || {
        util::cargo(&["fmt", "--all", "--check"]).run()
    })?;
    util::step("cargo clippy (-D warnings)", || {
        util::cargo(&["clippy", "--all-targets", "--", "-D", "warnings"]).run()
    })?;
    util::step("cargo test", || {
        // Default members only: the eBPF crate does not build for the host.
        let mut args = vec!["test"];
        args.extend(cargo_test_args.iter().map(String::as_str));
        util::cargo(&args)
            .env("MAPWATCH_FIXTURES", &fixtures_dir)
            .run()
    })?;
    fuzz::run(fuzz::DEFAULT_SECONDS)?;
    deploy::run(&deploy::Options {
        write: false,
        fixtures_dir: &fixtures_dir,
    })?;
    println!("xtask test: all passed in {:.0?}", started.elapsed());
    Ok(())
}
