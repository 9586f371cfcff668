//! The top layer: the commands `sonde run`, `sonde check`, `sonde config`
//! and `sonde baseline`, and the wiring of a running agent (its tasks, signals and
//! shutdown). Everything below it is a library that knows nothing of
//! tasks or exit codes; [`Failure`] carries the exit code `main` returns.

mod check;
mod config_command;
mod failure;
mod netwatch;
mod reload;
mod run;
mod setup;

pub use check::{baseline, check};
pub use config_command::config;
pub use failure::Failure;
pub use run::run;
