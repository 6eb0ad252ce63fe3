//! `cargo xtask <task>`: see `cargo xtask --help`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Skiff developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the Debian packages Skiff needs (root) and verify the machine.
    Setup,
    /// Compile ebpf/*.c with clang-19 into target/ebpf/.
    BuildEbpf,
    /// Build the local OCI image tarballs (pause, busybox) into target/images/.
    Images,
    /// Everything CI runs: fmt, build-ebpf, clippy -D warnings, all tests.
    Ci,
    /// The main job: a 3-master cluster with a sample app, then eBPF vs iptables (see README).
    Demo,
    /// Internal to `bench dataplane`: sequential TCP connects to ADDR, prints latency percentiles.
    #[command(hide = true)]
    ConnectLatency { addr: std::net::SocketAddr, count: usize },
    /// Benchmarks against their anchors; results in docs/benchmarks/<area>.{md,json}.
    Bench {
        #[command(subcommand)]
        area: BenchArea,
    },
}

/// How much of a benchmark to run, and what to say about the run.
#[derive(clap::Args)]
struct RunArgs {
    /// Quick smoke scale instead of the full run.
    #[arg(long)]
    small: bool,
    /// A note for the report (e.g. that the machine was busy).
    #[arg(long)]
    note: Option<String>,
}

#[derive(Subcommand)]
enum BenchArea {
    /// 3-member Skiff store vs 3-member etcd 3.4 with the same client.
    /// `--small`: 2k writes and 2 s phases.
    Store(RunArgs),
    /// API server on 3 masters: pod creates at 64 clients, lists of 10k pods, 1000 watchers.
    /// `--small`: 1k pods and 100 watchers.
    Api(RunArgs),
    /// Service routing: direct vs iptables vs eBPF (root; nginx, wrk, gnuplot).
    Dataplane(xtask::bench_dataplane::DataplaneArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup => xtask::setup::run_setup(),
        Task::BuildEbpf => xtask::ebpf::build_ebpf(),
        Task::Images => xtask::images::build_images(),
        Task::Ci => xtask::ci::run_ci(),
        Task::Demo => xtask::demo::run_demo(),
        Task::Bench { area: BenchArea::Store(a) } => {
            xtask::bench_store::bench_store(a.small, a.note.as_deref())
        }
        Task::ConnectLatency { addr, count } => {
            xtask::bench_dataplane::connect_latency(addr, count)
        }
        Task::Bench { area: BenchArea::Api(a) } => {
            xtask::bench_api::bench_api(a.small, a.note.as_deref())
        }
        Task::Bench { area: BenchArea::Dataplane(args) } => {
            xtask::bench_dataplane::run_dataplane(&args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The message, with its causes; no backtrace (RUST_BACKTRACE is often set globally).
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
