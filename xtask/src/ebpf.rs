//! `cargo xtask build-ebpf`: compiles `ebpf/*.c` into `target/ebpf/` with the shared build step.

use anyhow::Result;

use crate::util::{target_dir, workspace_root};

pub fn build_ebpf() -> Result<()> {
    let out = target_dir().join("ebpf");
    let objects =
        skiff_bpf_build::build_all(&workspace_root().join("ebpf"), &out, std::env::consts::ARCH)?;
    for o in &objects {
        let state = if o.rebuilt { "built     " } else { "up to date" };
        println!("build-ebpf: {state} {}", o.path.display());
    }
    Ok(())
}
