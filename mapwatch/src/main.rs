use clap::Parser as _;
use mapwatch::cli::{Cli, UsageError};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MAPWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(error) = mapwatch::cli::run(Cli::parse()) {
        // User-fixable problems: one line, exit 2 (as clap does for bad arguments).
        if let Some(usage) = error.downcast_ref::<UsageError>() {
            eprintln!("mapwatch: {usage}");
            std::process::exit(2);
        }
        eprintln!("mapwatch: {error:#}");
        std::process::exit(1);
    }
}
