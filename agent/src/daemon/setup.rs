//! What every command does first: load the configuration (file, then
//! environment, then flags) and start logging.

use std::{net::SocketAddr, path::PathBuf};

use super::failure::Failure;
use crate::{
    cli::CommonArgs,
    config::{Config, ConfigError, LogFormat},
};

/// The target of the daemon's own log lines: `sonde`, as when they were
/// written in the binary crate's root (log filters name it).
pub(super) const LOG_TARGET: &str = "sonde";

/// The configuration's sources as the command line named them: the file,
/// and the flags that override it. Kept for SIGHUP, which re-reads the file
/// and the environment under the same flags (else every reload would take
/// `--listen` and `--interface` for changes that need a restart).
#[derive(Debug, Clone, Default)]
pub(super) struct Sources {
    pub config: Option<PathBuf>,
    pub interfaces: Vec<String>,
    pub listen: Option<SocketAddr>,
    pub web_config_file: Option<PathBuf>,
}

impl Sources {
    pub(super) fn of(args: &CommonArgs) -> Sources {
        Sources {
            config: args.config.clone(),
            interfaces: args.interfaces.clone(),
            ..Sources::default()
        }
    }

    /// File, then environment, then flags.
    pub(super) fn load(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load(self.config.as_deref(), std::env::vars())?;
        if !self.interfaces.is_empty() {
            config.network.interfaces = self.interfaces.clone();
            config.validate()?;
        }
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(path) = &self.web_config_file {
            config.http.web_config_file = Some(path.clone());
        }
        Ok(config)
    }
}

pub(super) fn load_config(args: &CommonArgs) -> Result<Config, Failure> {
    Sources::of(args).load().map_err(Failure::usage)
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
