//! `cargo xtask bench <area>`: benchmarks that run their anchor in the same run and write
//! `docs/benchmarks/<area>.md` + `.json`.

use std::process::Command;

use anyhow::Result;

use crate::util::{build_release, run, workspace_root};

/// `cargo xtask bench store`: a 3-member Skiff store against a 3-member etcd 3.4, same client.
/// `small` runs a quick smoke scale (fewer writes, shorter phases).
pub fn bench_store(small: bool, note: Option<&str>) -> Result<()> {
    let root = workspace_root();
    let release = build_release(&[("skiff-master", "skiff-master"), ("skiff-e2e", "store-bench")])?;
    let mut cmd = Command::new(release.join("store-bench"));
    cmd.current_dir(&root).arg("--out").arg(root.join("docs/benchmarks"));
    if small {
        cmd.arg("--small");
    }
    if let Some(n) = note {
        cmd.args(["--note", n]);
    }
    run(&mut cmd)
}
