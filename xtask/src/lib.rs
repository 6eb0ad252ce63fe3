//! Developer tasks behind `cargo xtask`, as a library so tests can reuse them (the containerd
//! test builds its images with [`images::build_all`]).

pub mod bench_api;
pub mod bench_dataplane;
pub mod bench_store;
pub mod ci;
pub mod demo;
pub mod ebpf;
pub mod images;
pub mod setup;
pub mod util;
