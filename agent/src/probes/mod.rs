//! Kernel programs: what this kernel can do (`capabilities`), and loading
//! and attaching Sonde's programs with run-time fallbacks (`loader`), after
//! removing what a killed Sonde left attached (`leftovers`).

pub mod baseline;
pub mod btf;
pub mod capabilities;
pub mod leftovers;
pub mod loader;
pub mod tiers;

pub use loader::{Attachment, KernelMaps, ProbeError, Probes};
