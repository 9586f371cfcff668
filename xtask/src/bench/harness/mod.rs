//! Helpers every scenario shares: child processes that are always stopped,
//! the agent and the tools it is compared with, the benchmark network,
//! kernel counters and summary statistics.

pub mod agent;
pub mod kernel;
pub mod net;
pub mod process;
pub mod stats;
pub mod tracer;

pub use agent::{Agent, Bins, Metrics};
pub use net::BenchNet;
pub use process::Proc;
pub use stats::Summary;
