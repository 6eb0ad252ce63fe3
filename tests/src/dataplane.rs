//! The data-plane test topology: a client, a node, a backend and a second node's network
//! namespace joined by veths and routes, real TCP/UDP servers in the backend namespace and on
//! the second node, a test-owned cgroup2 directory for the client process, and guards that
//! remove all of it (also on panic).
//!
//! ```text
//! client netns  10.200.1.2 ──veth── 10.200.1.1  node netns  10.200.2.1 ──veth── backend netns
//!   (probe process,                            (iptables rules,          10.200.2.11..  (servers)
//!    in the test cgroup)                         tc programs)
//!      10.200.4.2                               10.200.3.1
//!          │                                        │ veth
//!          └───veth─── 10.200.4.1  node2 netns  10.200.3.2
//!                      remote backend 10.200.5.11 (server r0)
//! ```
//! The client's default route goes through the node, so a Service address that no one owns is
//! routed to the node, where iptables mode rewrites it; in eBPF mode the client's own
//! `connect()` is rewritten by the programs attached to the test cgroup. The node reaches the
//! remote backend through node2, but node2 routes the client's network over its direct link to
//! the client: a reply from the remote backend comes back through the node only if the node
//! rewrote the request's source to its own address (SNAT).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use skiff_agent::kernel::link::{Ip, Ipv4Net};
use skiff_agent::kernel::netns::NetNs;

use crate::wait;

/// The cgroup2 mount on our hybrid hosts (`/sys/fs/cgroup` on pure v2 hosts).
pub fn cgroup2_root() -> PathBuf {
    let hybrid = Path::new("/sys/fs/cgroup/unified");
    if hybrid.join("cgroup.procs").exists() {
        hybrid.to_owned()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 2);
pub const NODE_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 1);
pub const NODE_BACKEND_SIDE: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 1);
/// Backend `i` (0-based) listens on 10.200.2.(11 + i).
pub fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 2, 11 + u8::try_from(i).unwrap_or(0))
}
/// The node's address on its link to node2 (its SNAT address for the remote backend).
pub const NODE_REMOTE_SIDE: Ipv4Addr = Ipv4Addr::new(10, 200, 3, 1);
pub const NODE2_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 3, 2);
/// The client's and node2's addresses on their direct link.
pub const CLIENT_DIRECT_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 4, 2);
pub const NODE2_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 200, 4, 1);
/// The backend on node2 (server id `r0`).
pub const REMOTE_BACKEND_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 5, 11);
/// TCP and UDP port of every backend server.
pub const BACKEND_PORT: u16 = 8080;

/// The `skiff-agent` binary of this checkout (`SKIFF_AGENT_BIN`, or built with `cargo build -p
/// skiff-agent`, a no-op when it is up to date).
pub fn agent_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("SKIFF_AGENT_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).context("test binary has no target dir")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "--quiet", "-p", "skiff-agent", "--bin", "skiff-agent"])
        .status()?;
    if !st.success() {
        bail!("building skiff-agent failed");
    }
    Ok(dir.join("skiff-agent"))
}

/// A test cgroup2 directory; removed on drop (after its processes are gone).
#[derive(Debug)]
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn create(tag: &str) -> Result<Self> {
        let path = cgroup2_root().join(format!("skiff-test-{tag}"));
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(TestCgroup { path })
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The probe was killed first; rmdir fails while a process is still inside, so retry.
        let _ = wait::until("cgroup to empty", Duration::from_secs(5), || {
            Ok(fs::remove_dir(&self.path).is_ok())
        });
    }
}

/// A process started by a test, killed by PID on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn new(child: Child) -> Self {
        Proc { child }
    }
    pub fn id(&self) -> u32 {
        self.child.id()
    }
    /// The exit status once the process has ended.
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `skiff-netprobe client` process in the test cgroup and the client namespace.
#[derive(Debug)]
pub struct Probe {
    proc: Proc,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Probe {
    /// Sends one command and returns the answer line (`ok ...` or `err ...`).
    pub fn cmd(&mut self, command: &str) -> Result<String> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.is_empty() {
            let status = self.proc.child.try_wait()?;
            bail!("probe exited ({status:?}) on {command:?}");
        }
        Ok(line.trim().to_owned())
    }

    /// Runs a command that must succeed; returns the words after `ok`.
    pub fn ok(&mut self, command: &str) -> Result<Vec<String>> {
        let answer = self.cmd(command)?;
        match answer.strip_prefix("ok ") {
            Some(rest) => Ok(rest.split_whitespace().map(str::to_owned).collect()),
            None => bail!("{command:?} failed: {answer}"),
        }
    }
}

/// The three namespaces, the servers, the cgroup and the probe.
#[derive(Debug)]
pub struct Topology {
    pub tag: String,
    // Drop order = field order: processes first, then the cgroup, then the namespaces.
    probe: Option<Probe>,
    /// A probe in the node namespace (a process on the node itself), started on first use.
    node_probe: Option<Probe>,
    /// A probe in the client namespace but outside the test cgroup: a client on another
    /// machine, which the socket programs never see. Started on first use.
    outside_probe: Option<Probe>,
    _servers: Proc,
    pub cgroup: TestCgroup,
    pub client: NetNs,
    pub node: NetNs,
    pub backend: NetNs,
    pub node2: NetNs,
    pub backends: usize,
    probe_bin: PathBuf,
}

impl Topology {
    /// Builds the namespaces, starts `backends` TCP+UDP servers (ids `b0`, `b1`, ...) and the
    /// probe; `probe_bin` is `env!("CARGO_BIN_EXE_skiff-netprobe")` of the calling test.
    pub fn build(tag: &str, backends: usize, probe_bin: &Path) -> Result<Self> {
        let client = NetNs::create(&format!("skt-{tag}-client"))?;
        let node = NetNs::create(&format!("skt-{tag}-node"))?;
        let backend = NetNs::create(&format!("skt-{tag}-backend"))?;
        let node2 = NetNs::create(&format!("skt-{tag}-node2"))?;
        let (c0, n0, n1, b0) = (
            format!("skt{tag}c"),
            format!("skt{tag}n"),
            format!("skt{tag}m"),
            format!("skt{tag}b"),
        );
        // node <-> node2, client <-> node2.
        let (n2, r0, c1, r1) = (
            format!("skt{tag}o"),
            format!("skt{tag}p"),
            format!("skt{tag}d"),
            format!("skt{tag}e"),
        );
        Ip::netns(&client).add_veth(&c0, &n0, Some(&node))?;
        Ip::netns(&node).add_veth(&n1, &b0, Some(&backend))?;
        Ip::netns(&node).add_veth(&n2, &r0, Some(&node2))?;
        Ip::netns(&client).add_veth(&c1, &r1, Some(&node2))?;
        for ns in [&client, &node, &backend, &node2] {
            Ip::netns(ns).set_up("lo")?;
            Ip::netns(ns).set_sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        }
        let ip = Ip::netns(&client);
        ip.add_address(&c0, Ipv4Net::new(CLIENT_IP, 24))?;
        ip.set_up(&c0)?;
        ip.add_route(None, Some(NODE_CLIENT_SIDE), None)?;
        ip.add_address(&c1, Ipv4Net::new(CLIENT_DIRECT_IP, 24))?;
        ip.set_up(&c1)?;
        let ip = Ip::netns(&node);
        ip.add_address(&n0, Ipv4Net::new(NODE_CLIENT_SIDE, 24))?;
        ip.add_address(&n1, Ipv4Net::new(NODE_BACKEND_SIDE, 24))?;
        ip.add_address(&n2, Ipv4Net::new(NODE_REMOTE_SIDE, 24))?;
        ip.set_up(&n0)?;
        ip.set_up(&n1)?;
        ip.set_up(&n2)?;
        ip.add_route(Some(Ipv4Net::new(Ipv4Addr::new(10, 200, 5, 0), 24)), Some(NODE2_IP), None)?;
        ip.set_sysctl("net.ipv4.ip_forward", "1")?;
        // A node has a route for Service addresses (usually its default route), so a packet to
        // a VIP without endpoints reaches the filter table's REJECT rather than "no route".
        ip.add_route(Some(Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 12)), None, Some(&n1))?;
        let ip = Ip::netns(&backend);
        for i in 0..backends {
            ip.add_address(&b0, Ipv4Net::new(backend_ip(i), 24))?;
        }
        ip.set_up(&b0)?;
        ip.add_route(None, Some(NODE_BACKEND_SIDE), None)?;
        // node2: the remote backend on its loopback; the client's network over the direct link
        // (not through the node), everything else through the node.
        let ip = Ip::netns(&node2);
        ip.add_address("lo", Ipv4Net::new(REMOTE_BACKEND_IP, 32))?;
        ip.add_address(&r0, Ipv4Net::new(NODE2_IP, 24))?;
        ip.add_address(&r1, Ipv4Net::new(NODE2_CLIENT_SIDE, 24))?;
        ip.set_up(&r0)?;
        ip.set_up(&r1)?;
        ip.add_route(
            Some(Ipv4Net::new(Ipv4Addr::new(10, 200, 1, 0), 24)),
            Some(CLIENT_DIRECT_IP),
            None,
        )?;
        ip.add_route(None, Some(NODE_REMOTE_SIDE), None)?;

        let mut cmd = Command::new(probe_bin);
        cmd.arg("serve").arg("--netns").arg(backend.path());
        for i in 0..backends {
            let spec = format!("{}:{BACKEND_PORT}=b{i}", backend_ip(i));
            cmd.arg("--tcp").arg(&spec).arg("--udp").arg(&spec);
        }
        let spec = format!("{REMOTE_BACKEND_IP}:{BACKEND_PORT}=r0");
        cmd.arg("--netns").arg(node2.path()).arg("--tcp").arg(&spec).arg("--udp").arg(&spec);
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn().context("starting servers")?;
        let mut ready = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut ready)?;
        }
        let servers = Proc { child };
        if ready.trim() != "ready" {
            bail!("servers did not start");
        }
        let cgroup = TestCgroup::create(tag)?;
        let mut me = Topology {
            tag: tag.to_owned(),
            probe: None,
            node_probe: None,
            outside_probe: None,
            _servers: servers,
            cgroup,
            client,
            node,
            backend,
            node2,
            backends,
            probe_bin: probe_bin.to_owned(),
        };
        me.restart_probe()?;
        Ok(me)
    }

    /// (Re)starts the probe process (a fresh client, same cgroup and namespace).
    pub fn restart_probe(&mut self) -> Result<()> {
        self.probe = None;
        self.probe = Some(self.start_probe(self.client.path(), true)?);
        Ok(())
    }

    fn start_probe(&self, netns: &Path, in_cgroup: bool) -> Result<Probe> {
        let mut cmd = Command::new(&self.probe_bin);
        cmd.arg("client");
        if in_cgroup {
            cmd.arg("--cgroup").arg(&self.cgroup.path);
        }
        let mut child = cmd
            .arg("--netns")
            .arg(netns)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting probe")?;
        let stdin = child.stdin.take().context("probe stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("probe stdout")?);
        Ok(Probe { proc: Proc { child }, stdin, stdout })
    }

    /// A probe running on the node itself (node namespace, test cgroup).
    pub fn node_probe(&mut self) -> Result<&mut Probe> {
        if self.node_probe.is_none() {
            self.node_probe = Some(self.start_probe(self.node.path(), true)?);
        }
        self.node_probe.as_mut().context("node probe")
    }

    /// A probe in the client namespace outside the test cgroup: NodePort "from outside" (a
    /// client the socket programs do not see, as on another machine).
    pub fn outside_probe(&mut self) -> Result<&mut Probe> {
        if self.outside_probe.is_none() {
            self.outside_probe = Some(self.start_probe(self.client.path(), false)?);
        }
        self.outside_probe.as_mut().context("outside probe")
    }

    /// The node's interface towards the client (its NodePort-facing "external" interface).
    pub fn node_client_dev(&self) -> String {
        format!("skt{}n", self.tag)
    }

    /// The node's interface towards node2.
    pub fn node_remote_dev(&self) -> String {
        format!("skt{}o", self.tag)
    }

    pub fn probe(&mut self) -> &mut Probe {
        self.probe.as_mut().expect("probe started in build")
    }
}
