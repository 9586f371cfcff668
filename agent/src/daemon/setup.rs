//! What every command does first: load the configuration (file, then
//! environment, then flags) and start logging.

use super::failure::Failure;
use crate::{
    cli::CommonArgs,
    config::{Config, LogFormat},
};

/// The target of the daemon's own log lines: `sonde`, as when they were
/// written in the binary crate's root (log filters name it).
pub(super) const LOG_TARGET: &str = "sonde";

pub(super) fn load_config(args: &CommonArgs) -> Result<Config, Failure> {
    let mut config =
        Config::load(args.config.as_deref(), std::env::vars()).map_err(Failure::usage)?;
    if !args.interfaces.is_empty() {
        config.network.interfaces = args.interfaces.clone();
        config.validate().map_err(Failure::usage)?;
    }
    Ok(config)
}

pub(super) fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.init(),
        // Fields at the top level, so a log pipeline reads `message`,
        // `level` and `target` without unnesting.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}
