//! Kernel programs: what this kernel can do (`capabilities`), and loading
//! and attaching Sonde's programs with run-time fallbacks (`loader`).

pub mod baseline;
pub mod btf;
pub mod capabilities;
pub mod loader;
pub mod tiers;

pub use loader::{Attachment, KernelMaps, ProbeError, Probes};
