//! Sonde, the eBPF kernel telemetry agent, as a library: `main.rs` parses
//! the command line and calls [`daemon`]; tests and tools can call the
//! rest.
//!
//! Modules are layered and import only from layers below their own (or
//! from earlier modules of their own layer, without cycles); the table in
//! `tests/layers.rs` declares the layers and fails the build when an
//! import points up. Bottom to top:
//!
//! 0. leaves: [`time`], [`version`], [`syscall_table`], [`cgroup`],
//!    [`netif`], [`config`] (with `Mode` and the MAPE-K `Overlay`), [`cli`],
//!    [`family`] (metric family builder), [`notify`] (systemd's protocol),
//!    [`tasks`] (supervision), [`pods`] (pod identity over CRI),
//!    [`map_batch`] (batched map reads), [`heap`] (the allocator's policy)
//! 1. probe helpers, signals and events: `probes::{btf, capabilities,
//!    tiers}`, [`signals`] (each signal's tiers, maps and families),
//!    [`events`]
//! 2. the loader: [`probes`], `probes::{loader, baseline}`
//! 3. [`collectors`]
//! 4. [`metrics`]
//! 5. [`mapek`]: a loop over collector snapshots, configuration and the
//!    collector handle
//! 6. [`state`]: the running agent's shared handle (with `HealthState`)
//! 7. [`health`], [`otlp`]
//! 8. [`http`]
//! 9. [`daemon`]: the commands and the wiring of a running agent

pub mod cgroup;
pub mod cli;
pub mod collectors;
pub mod config;
pub mod daemon;
pub mod diskstats;
pub mod events;
pub mod family;
pub mod health;
pub mod heap;
pub mod http;
pub mod map_batch;
pub mod mapek;
pub mod metrics;
pub mod netif;
pub mod netstat;
pub mod notify;
pub mod otlp;
pub mod pods;
pub mod probes;
pub mod serving;
pub mod signals;
pub mod state;
pub mod syscall_table;
pub mod tasks;
pub mod time;
pub mod version;
