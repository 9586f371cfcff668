//! Sonde's kernel programs. One module per hook family; every entry point is
//! a thin wrapper around a function that does the work, and every failure is
//! counted in `COUNTERS` rather than dropped silently. This object carries
//! events on BPF ring buffers (`events.rs`); `main_perf.rs` builds the same
//! programs with perf event arrays for kernels before 5.8.
#![no_std]
#![no_main]
// Atomic adds on shared map values (the BPF target has no core atomics).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod addr;
mod baseline;
mod block;
mod drops;
mod events;
mod handshakes;
mod maps;
mod member;
mod net;
mod process;
mod record;
mod runtime;
mod sched;
mod syscalls;
mod tcp;
