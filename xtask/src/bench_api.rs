//! `cargo xtask bench api`: builds `skiff-master` and `skiff-api-bench` in release mode and runs
//! the API benchmark (three masters on this machine; the anchor is the same writes sent straight
//! to the store). Writes `docs/benchmarks/api.md` and `api.json`.

use std::process::Command;

use anyhow::Result;

use crate::util::{build_release, run, workspace_root};

/// Runs the benchmark; `small` is a quick smoke scale.
pub fn bench_api(small: bool, note: Option<&str>) -> Result<()> {
    let release =
        build_release(&[("skiff-master", "skiff-master"), ("skiff-e2e", "skiff-api-bench")])?;
    let mut cmd = Command::new(release.join("skiff-api-bench"));
    cmd.current_dir(workspace_root()).env("SKIFF_MASTER_BIN", release.join("skiff-master"));
    cmd.args(["--out", &workspace_root().join("docs/benchmarks").display().to_string()]);
    if small {
        cmd.args(["--pods", "1000", "--clients", "16", "--watchers", "100", "--events", "20"]);
    }
    if let Some(n) = note {
        cmd.args(["--note", n]);
    }
    run(&mut cmd)
}
