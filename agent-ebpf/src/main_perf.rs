//! The same kernel programs as main.rs, with events on perf event arrays
//! (`events_perf.rs`) instead of BPF ring buffers: the object user space
//! loads on kernels before 5.8, which lack the ring buffer map type (aya
//! creates every map of an object, so one object cannot carry both). Every
//! other module is main.rs's own file.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod addr;
mod baseline;
mod block;
mod drops;
#[path = "events_perf.rs"]
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
