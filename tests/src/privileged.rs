//! The gate every privileged test passes first.
//!
//! Without root and the needed capabilities a privileged test skips with a message, unless
//! `SKIFF_REQUIRE_PRIVILEGED=1` (set by `.ci/run`), in which case it fails: CI must never report
//! green for tests that did not run.

use std::path::Path;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn required() -> bool {
    std::env::var("SKIFF_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

fn skip_or_fail(test: &str, why: &str) -> bool {
    assert!(!required(), "{test}: {why}, and SKIFF_REQUIRE_PRIVILEGED=1 forbids skipping");
    eprintln!("SKIPPED {test}: {why} (set SKIFF_REQUIRE_PRIVILEGED=1 to make this a failure)");
    false
}

fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// True when the process may create namespaces, change links and load eBPF programs.
pub fn privileged(test: &str) -> bool {
    let caps = effective_caps();
    let missing: Vec<&str> = [
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
    ]
    .into_iter()
    .filter(|(bit, _)| caps & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        true
    } else {
        skip_or_fail(test, &format!("needs root with {}", missing.join(", ")))
    }
}

/// True when every program is on `PATH` (they come with `cargo xtask setup`).
pub fn tools(test: &str, programs: &[&str]) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| !std::env::split_paths(&path).any(|dir| dir.join(p).is_file()))
        .collect();
    if missing.is_empty() {
        true
    } else {
        skip_or_fail(
            test,
            &format!("{} not installed (run `cargo xtask setup`)", missing.join(", ")),
        )
    }
}

/// True when `path` exists (a kernel or system feature the test relies on).
pub fn feature(test: &str, path: &str, what: &str) -> bool {
    Path::new(path).exists() || skip_or_fail(test, &format!("{what} missing ({path})"))
}
