//! `cargo xtask demo`: the main job — a local cluster with a sample app, and the eBPF-vs-iptables
//! Service comparison.
//!
//! 1. Three `skiff-master`s (replicated store + API server each) start on loopback; the real
//!    kubectl applies a sample app (Namespace, Deployment, Service) and its EndpointSlice; the
//!    Service's ClusterIP, read back through the API, is routed by the eBPF proxier and by the
//!    iptables proxier to every backend server in a topology of network namespaces
//!    (the `cluster_service` end-to-end test, run with its output shown).
//! 2. A short run of the data-plane benchmark (direct vs iptables vs eBPF, nginx + wrk at 1 and
//!    1,000 Services) prints the comparison; its report goes to `target/demo/`, not `docs/`.
//!
//! Pods do not run yet (the kubelet is a later issue), so the Deployment is stored but not
//! started and the EndpointSlice is written as the controller would write it.

use std::process::Command;

use anyhow::{Context, Result};

use crate::bench_dataplane::{DataplaneArgs, run_dataplane};
use crate::util::{run, target_dir};

pub fn run_demo() -> Result<()> {
    crate::ebpf::build_ebpf()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!(
        "demo: 1/2 a 3-master cluster, a sample app applied with kubectl, its ClusterIP routed"
    );
    run(Command::new(&cargo)
        .args([
            "test",
            "--quiet",
            "-p",
            "skiff-e2e",
            "--test",
            "cluster_service",
            "--",
            "--nocapture",
        ])
        // A demo that silently skips proves nothing.
        .env("SKIFF_REQUIRE_PRIVILEGED", "1"))?;

    println!("demo: 2/2 Service routing compared: direct pod IP vs iptables vs eBPF (short run)");
    let out = target_dir().join("demo");
    run_dataplane(&DataplaneArgs {
        services: vec![1, 1000],
        duration: 3,
        connections: 16,
        churn: 5,
        repeat: 1,
        out: Some(out.clone()),
        note: "short run from `cargo xtask demo`; the full run is `cargo xtask bench dataplane`"
            .into(),
    })?;
    let report = out.join("dataplane.md");
    let text = std::fs::read_to_string(&report)
        .with_context(|| format!("reading {}", report.display()))?;
    println!("\n{text}");
    println!("demo: done; the report above is {}", report.display());
    Ok(())
}
