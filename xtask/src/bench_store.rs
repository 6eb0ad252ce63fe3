//! `cargo xtask bench <area>`: benchmarks that run their anchor in the same run and write
//! `docs/benchmarks/<area>.md` + `.json`.

use std::process::Command;

use anyhow::Result;

use crate::util::{run, target_dir, workspace_root};

/// `cargo xtask bench store`: a 3-member Skiff store against a 3-member etcd 3.4, same client.
/// `small` runs a quick smoke scale (fewer writes, shorter phases).
pub fn bench_store(small: bool, note: Option<&str>) -> Result<()> {
    let root = workspace_root();
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "skiff-master",
            "-p",
            "skiff-e2e",
            "--bin",
            "skiff-master",
            "--bin",
            "store-bench",
        ]))?;
    let mut cmd = Command::new(target_dir().join("release").join("store-bench"));
    cmd.current_dir(&root).arg("--out").arg(root.join("docs/benchmarks"));
    if small {
        cmd.arg("--small");
    }
    if let Some(n) = note {
        cmd.args(["--note", n]);
    }
    run(&mut cmd)
}
