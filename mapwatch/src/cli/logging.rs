//! Where mapwatch's own logs go: stderr, as plain lines or JSON objects, at a level
//! set by `MAPWATCH_LOG` (or `RUST_LOG`).
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Plain lines, coloured only when stderr is a terminal (a pod's log is not).
    Auto,
    /// Plain lines, never coloured.
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The level filter's variables, first found wins.
pub const LEVEL_VARIABLES: [&str; 2] = ["MAPWATCH_LOG", "RUST_LOG"];

/// Installs the global subscriber. `default_level` applies when neither variable is
/// set: the daemon says what it attaches (`info`); one-shot commands speak only when
/// something is wrong (`warn`), their results go to stdout/stderr directly.
pub fn init(format: LogFormat, default_level: &str) {
    let filter = LEVEL_VARIABLES
        .iter()
        .find_map(|name| EnvFilter::try_from_env(name).ok())
        .unwrap_or_else(|| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Auto => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Plain => builder.with_ansi(false).init(),
    }
}
