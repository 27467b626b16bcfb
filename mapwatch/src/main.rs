use clap::Parser as _;
use mapwatch::cli::{Cli, GateFailed, UsageError};

fn main() {
    let cli = Cli::parse();
    cli.init_logging();
    if let Err(error) = mapwatch::cli::run(cli) {
        // User-fixable problems: one line, exit 2 (as clap does for bad arguments).
        if error.downcast_ref::<GateFailed>().is_some() {
            std::process::exit(3);
        }
        if let Some(usage) = error.downcast_ref::<UsageError>() {
            eprintln!("mapwatch: {usage}");
            std::process::exit(2);
        }
        eprintln!("mapwatch: {error:#}");
        std::process::exit(1);
    }
}
