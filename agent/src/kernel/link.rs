//! Links, addresses, routes and network sysctls, in the host namespace or a named one.
//!
//! Link changes go through iproute2's `ip` (`ip -n <netns> ...`): the agent changes links only
//! when topology changes (pod start, test setup), never on a hot path, and `ip` is the tool an
//! operator uses to check the result. Errors carry the command and `ip`'s own message.

use std::fmt;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::process::Command;

use super::netns::{NetNs, NetNsError};

/// Why a link operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("sysctl {key}: {source}")]
    Sysctl { key: String, source: io::Error },
    #[error(transparent)]
    NetNs(#[from] NetNsError),
}

/// An IPv4 prefix such as `10.77.0.1/24` (address plus prefix length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub const fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        Ipv4Net { addr, prefix }
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `ip` bound to one network namespace (or the host's).
#[derive(Debug, Clone, Copy)]
pub struct Ip<'a> {
    netns: Option<&'a NetNs>,
}

impl Ip<'static> {
    /// Operates in the caller's (host) namespace.
    pub fn host() -> Self {
        Ip { netns: None }
    }
}

impl<'a> Ip<'a> {
    /// Operates inside `netns`.
    pub fn netns(netns: &'a NetNs) -> Self {
        Ip { netns: Some(netns) }
    }

    /// Runs `ip [-n <netns>] <args>` and returns its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String, LinkError> {
        let mut cmd = Command::new("ip");
        if let Some(ns) = self.netns {
            cmd.args(["-n", ns.name()]);
        }
        cmd.args(args);
        let command = format!("{cmd:?}").replace('"', "");
        let out =
            cmd.output().map_err(|source| LinkError::Spawn { command: command.clone(), source })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            Err(LinkError::Failed { command, stderr })
        }
    }

    /// Creates a veth pair: `name` here, `peer` in `peer_ns` (or here too).
    pub fn add_veth(
        &self,
        name: &str,
        peer: &str,
        peer_ns: Option<&NetNs>,
    ) -> Result<(), LinkError> {
        let mut args = vec!["link", "add", name, "type", "veth", "peer", "name", peer];
        if let Some(ns) = peer_ns {
            args.extend(["netns", ns.name()]);
        }
        self.run(&args).map(drop)
    }

    pub fn set_up(&self, dev: &str) -> Result<(), LinkError> {
        self.run(&["link", "set", "dev", dev, "up"]).map(drop)
    }

    pub fn delete_link(&self, dev: &str) -> Result<(), LinkError> {
        self.run(&["link", "del", "dev", dev]).map(drop)
    }

    pub fn add_address(&self, dev: &str, net: Ipv4Net) -> Result<(), LinkError> {
        self.run(&["addr", "add", &net.to_string(), "dev", dev]).map(drop)
    }

    /// Adds a route to `dst` (`None`: the default route) via `gateway` and/or out of `dev`.
    pub fn add_route(
        &self,
        dst: Option<Ipv4Net>,
        gateway: Option<Ipv4Addr>,
        dev: Option<&str>,
    ) -> Result<(), LinkError> {
        let dst = dst.map_or_else(|| "default".to_owned(), |d| d.to_string());
        let gateway = gateway.map(|g| g.to_string());
        let mut args = vec!["route", "add", dst.as_str()];
        if let Some(g) = &gateway {
            args.extend(["via", g.as_str()]);
        }
        if let Some(d) = dev {
            args.extend(["dev", d]);
        }
        self.run(&args).map(drop)
    }

    /// Sets a network sysctl such as `net.ipv4.ip_forward` in this namespace.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<(), LinkError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let write = || {
            fs::write(&path, value)
                .map_err(|source| LinkError::Sysctl { key: key.to_owned(), source })
        };
        // /proc/sys/net resolves to the namespace of the task that opens it.
        match self.netns {
            Some(ns) => ns.run(write)?,
            None => write(),
        }
    }
}
