//! `sonde config check FILE` and `sonde config defaults`: the configuration
//! judged and shown without root or kernel access, so an operator (or a CI
//! job) can validate a file before it reaches a node.

use super::failure::Failure;
use crate::{
    cli::ConfigCommand,
    config::{Config, DEFAULTS_TOML},
};

pub fn config(command: ConfigCommand) -> Result<(), Failure> {
    match command {
        ConfigCommand::Check { file, no_env } => {
            let overrides: Vec<(String, String)> = if no_env {
                Vec::new()
            } else {
                std::env::vars()
                    .filter(|(k, _)| Config::is_override(k))
                    .collect()
            };
            let config = Config::load(Some(&file), overrides.clone()).map_err(Failure::usage)?;
            if let Some(web) = &config.http.web_config_file {
                crate::http::web_config::WebConfig::load(web).map_err(Failure::usage)?;
            }
            let names: Vec<&str> = overrides.iter().map(|(k, _)| k.as_str()).collect();
            if names.is_empty() {
                println!("{}: valid", file.display());
            } else {
                println!(
                    "{}: valid with the environment's overrides ({})",
                    file.display(),
                    names.join(", ")
                );
            }
            Ok(())
        }
        ConfigCommand::Defaults => {
            print!("{DEFAULTS_TOML}");
            Ok(())
        }
    }
}
