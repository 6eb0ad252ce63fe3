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

/// A loopback TCP port that is free now, for a process under test to bind. It comes from below
/// the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768–60999 by default): a port
/// from `bind(:0)` is an ephemeral one, and any outgoing connection made before the process under
/// test binds it (a client, a gRPC peer, kubectl) may take it — CI saw a master fail with
/// "Address already in use" that way. Below the range only explicit binds compete; each test
/// process starts at its own offset and checks that the port binds.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()))
        .unwrap_or(32_768);
    if ephemeral_low <= LOW + 1_000 {
        // An unusual range leaves no room below it: fall back to an ephemeral port.
        return Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    }
    let span = ephemeral_low - LOW;
    let start = std::process::id().wrapping_mul(7_919);
    for _ in 0..span {
        let port = LOW + start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(port).expect("below the ephemeral range, so below 65536");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no free loopback port"))
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
