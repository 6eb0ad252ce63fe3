//! Support for Skiff's end-to-end and privileged tests: the privileged-test gate, unique resource
//! names, waiting with deadlines, and guards for processes the tests start (containerd).
//!
//! The tests themselves live in `tests/tests/*.rs`.

pub mod api;
pub mod containerd;
pub mod dataplane;
pub mod masters;
pub mod privileged;
pub mod wait;

/// A free loopback TCP port: bound, then released for the process under test to bind (the
/// short race is acceptable in tests).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A short tag unique to this test process and call, for names of namespaces, veths, cgroups and
/// containers. Everything a test creates carries `skt` plus this tag, so a crashed run can never
/// collide with the next one (and leftovers are easy to spot: `ip netns | grep skt`).
pub fn unique_tag() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mixed = (std::process::id() << 12) ^ nanos ^ (NEXT.fetch_add(1, Ordering::Relaxed) << 20);
    format!("{:06x}", mixed & 0xff_ffff)
}
