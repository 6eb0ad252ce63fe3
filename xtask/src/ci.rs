//! `cargo xtask ci`: everything CI checks, cheapest first so failures come fast.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::util::run;

pub fn run_ci() -> Result<()> {
    let started = Instant::now();
    step("fmt", || run(cargo().args(["fmt", "--all", "--", "--check"])))?;
    step("build-ebpf", crate::ebpf::build_ebpf)?;
    step("clippy", || {
        run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))
    })?;
    step("test", || run(cargo().args(["test", "--workspace"])))?;
    println!("ci: all steps passed in {:.0?}", started.elapsed());
    Ok(())
}

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("ci: == {name} ==");
    let t = Instant::now();
    f().with_context(|| format!("ci step {name} failed"))?;
    println!("ci: {name} passed in {:.0?}", t.elapsed());
    Ok(())
}

/// The cargo that runs us (so `cargo +toolchain xtask ci` stays on that toolchain).
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}
