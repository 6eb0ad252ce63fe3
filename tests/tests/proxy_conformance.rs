//! The proxy conformance suite: every behaviour test runs against both proxiers (eBPF socket LB
//! and kube-proxy-style iptables) on the same topology of real namespaces, real servers and a
//! real client process (see `skiff_e2e::dataplane`). Desired state goes in as Kubernetes
//! Services and EndpointSlices, through the same tracker the agent uses.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use skiff_agent::kernel::bpf_lb::{LbMapSizes, TcNodePort};
use skiff_agent::kernel::iptables::{Iptables, IptablesBackend};
use skiff_agent::proxy::ebpf::MAGLEV_SEED;
use skiff_agent::proxy::ebpf::{EbpfConfig, EbpfProxier};
use skiff_agent::proxy::iptables::{IptablesConfig, IptablesProxier};
use skiff_agent::proxy::maglev;
use skiff_agent::proxy::source::{Object, parse_objects};
use skiff_agent::proxy::tracker::ServiceTracker;
use skiff_agent::proxy::{Proxier, SyncReport};
use skiff_e2e::dataplane::{
    BACKEND_PORT, CLIENT_IP, NODE_CLIENT_SIDE, NODE_REMOTE_SIDE, Proc, REMOTE_BACKEND_IP, Topology,
    agent_binary, backend_ip,
};
use skiff_e2e::{privileged, unique_tag, wait};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ebpf,
    /// The backend `iptables --version` reports (nft on our machines).
    Iptables,
    /// `iptables-legacy`, explicitly.
    IptablesLegacy,
}

enum Backend {
    Ebpf(Box<EbpfProxier>),
    Iptables(IptablesProxier),
}

impl Backend {
    fn proxier(&mut self) -> &mut dyn Proxier {
        match self {
            Backend::Ebpf(p) => p.as_mut(),
            Backend::Iptables(p) => p,
        }
    }
}

/// Endpoint condition in a test Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cond {
    Ready,
    Terminating,
}

/// A Service with one TCP port (`tcp`, 80) and one UDP port (`udp`, 80) on `vip`, backed by the
/// given backends (by index) on port 8080.
#[derive(Debug, Clone)]
struct Svc {
    name: String,
    vip: Ipv4Addr,
    external_ips: Vec<Ipv4Addr>,
    endpoints: Vec<(usize, Cond)>,
    affinity: bool,
    /// Annotation `service.skiff.io/lb-algorithm: maglev`.
    maglev: bool,
    /// `externalTrafficPolicy: Local`; backends with an index in `local` run on this node.
    external_local: bool,
    local: Vec<usize>,
}

fn svc(name: &str, vip: [u8; 4], endpoints: &[usize]) -> Svc {
    Svc {
        name: name.to_owned(),
        vip: Ipv4Addr::from(vip),
        external_ips: Vec::new(),
        external_local: false,
        maglev: false,
        local: Vec::new(),
        endpoints: endpoints.iter().map(|i| (*i, Cond::Ready)).collect(),
        affinity: false,
    }
}

/// Endpoint index of the backend on node2 (server `r0`), reached through the node's link to
/// node2; every other index is a backend in the backend namespace.
const REMOTE: usize = 99;

fn endpoint_ip(i: usize) -> Ipv4Addr {
    if i == REMOTE { REMOTE_BACKEND_IP } else { backend_ip(i) }
}

fn objects(services: &[Svc]) -> Vec<Value> {
    let mut out = Vec::new();
    for s in services {
        let mut spec = json!({
            "clusterIP": s.vip.to_string(),
            "ports": [{"name": "tcp", "port": 80, "protocol": "TCP", "nodePort": NODE_PORT},
                      {"name": "udp", "port": 80, "protocol": "UDP", "nodePort": NODE_PORT}],
            "type": "NodePort",
        });
        if s.affinity {
            spec["sessionAffinity"] = json!("ClientIP");
        }
        if s.external_local {
            spec["externalTrafficPolicy"] = json!("Local");
        }
        if !s.external_ips.is_empty() {
            spec["externalIPs"] =
                json!(s.external_ips.iter().map(ToString::to_string).collect::<Vec<_>>());
        }
        let annotations =
            if s.maglev { json!({"service.skiff.io/lb-algorithm": "maglev"}) } else { json!({}) };
        out.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": s.name, "namespace": "conf", "annotations": annotations}, "spec": spec}));
        let endpoints: Vec<Value> = s
            .endpoints
            .iter()
            .map(|(i, c)| {
                let conditions = match c {
                    Cond::Ready => json!({"ready": true, "serving": true, "terminating": false}),
                    Cond::Terminating => {
                        json!({"ready": false, "serving": true, "terminating": true})
                    }
                };
                let node = match i {
                    &REMOTE => "node2",
                    i if s.local.contains(i) => "node",
                    _ => "other-node",
                };
                json!({"addresses": [endpoint_ip(*i).to_string()], "conditions": conditions, "nodeName": node})
            })
            .collect();
        out.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{}-1", s.name), "namespace": "conf", "labels": {"kubernetes.io/service-name": s.name}},
            "addressType": "IPv4",
            "ports": [{"name": "tcp", "port": BACKEND_PORT, "protocol": "TCP"}, {"name": "udp", "port": BACKEND_PORT, "protocol": "UDP"}],
            "endpoints": endpoints,
        }));
    }
    out
}

fn parsed(services: &[Svc]) -> Result<Vec<Object>> {
    let text = serde_json::to_string(
        &json!({"apiVersion": "v1", "kind": "List", "items": objects(services)}),
    )?;
    Ok(parse_objects(&text)?)
}

struct Harness {
    mode: Mode,
    /// eBPF mode: the tc NodePort programs on the node's interfaces (towards the client, towards
    /// node2).
    nodeport: Vec<TcNodePort>,
    // Drop order: the proxier (its Drop below cleans up), then the topology.
    backend: Option<Backend>,
    topo: Topology,
    pin_root: PathBuf,
    sizes: LbMapSizes,
    /// Kept across syncs, as in the agent: each sync hands the proxier only what changed.
    tracker: ServiceTracker,
}

impl Harness {
    fn new(mode: Mode, backends: usize, sizes: LbMapSizes) -> Result<Self> {
        let tag = unique_tag();
        let topo = Topology::build(
            &tag,
            backends,
            std::path::Path::new(env!("CARGO_BIN_EXE_skiff-netprobe")),
        )?;
        // A private bpffs instance: pins never touch the host's /sys/fs/bpf.
        let bpffs = std::env::temp_dir().join(format!("skiff-test-{tag}-bpf"));
        skiff_agent::kernel::bpf_lb::ensure_bpffs(&bpffs)?;
        let pin_root = bpffs.join("skiff");
        let mut h = Harness {
            mode,
            nodeport: Vec::new(),
            backend: None,
            topo,
            pin_root,
            sizes,
            tracker: ServiceTracker::new("node"),
        };
        h.start()?;
        Ok(h)
    }

    fn start(&mut self) -> Result<()> {
        self.backend = Some(match self.mode {
            Mode::Ebpf => Backend::Ebpf(Box::new(EbpfProxier::start(&EbpfConfig {
                pin_root: self.pin_root.clone(),
                cgroup: self.topo.cgroup.path.clone(),
                map_sizes: self.sizes,
                node_addresses: vec![NODE_CLIENT_SIDE, NODE_REMOTE_SIDE],
            })?)),
            Mode::Iptables => {
                let ipt = Iptables::detect(Some(self.topo.node.name()))?;
                Backend::Iptables(IptablesProxier::start(ipt, IptablesConfig::default())?)
            }
            Mode::IptablesLegacy => {
                let ipt = Iptables::new(IptablesBackend::Legacy, Some(self.topo.node.name()));
                Backend::Iptables(IptablesProxier::start(ipt, IptablesConfig::default())?)
            }
        });
        // After the socket LB: its maps (sized from the flags) are the ones the tc programs adopt.
        if self.mode == Mode::Ebpf && self.nodeport.is_empty() {
            for (dev, ip) in [
                (self.topo.node_client_dev(), NODE_CLIENT_SIDE),
                (self.topo.node_remote_dev(), NODE_REMOTE_SIDE),
            ] {
                let (pin_root, sizes) = (self.pin_root.clone(), self.sizes);
                let np = self
                    .topo
                    .node
                    .run(move || TcNodePort::attach(&pin_root, sizes, ip, &dev))??;
                self.nodeport.push(np);
            }
        }
        Ok(())
    }

    /// Drops the proxier without cleaning up, as an agent that exits, and starts a new one.
    fn restart(&mut self) -> Result<()> {
        self.backend = None;
        self.nodeport.clear();
        self.start()
    }

    fn sync(&mut self, services: &[Svc]) -> Result<SyncReport> {
        self.tracker.replace_all(parsed(services)?);
        let changed = self.tracker.update();
        ensure!(self.tracker.state() == &self.tracker.desired(), "incremental tracker state");
        let proxier = self.backend.as_mut().context("started")?.proxier();
        Ok(proxier.sync_changed(self.tracker.state(), &changed)?)
    }

    fn metrics(&mut self) -> String {
        self.backend.as_mut().map(|b| b.proxier().metrics()).unwrap_or_default()
    }

    /// Backend ids of `n` new TCP connections to `vip:80`.
    fn tcp(&mut self, vip: Ipv4Addr, n: usize) -> Result<Vec<String>> {
        let words = self.topo.probe().ok(&format!("tcp {vip} 80 {n}"))?;
        Ok(words[0].split(',').map(str::to_owned).collect())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.nodeport.clear();
        match self.backend.take() {
            Some(Backend::Ebpf(p)) => {
                let _ = p.cleanup(&self.pin_root);
            }
            Some(Backend::Iptables(p)) => {
                let _ = p.cleanup();
            }
            None => {}
        }
        // Pins left by a proxier that failed half-way go with the private bpffs.
        let _ = skiff_agent::kernel::bpf_lb::remove_pins(&self.pin_root);
        if let Some(bpffs) = self.pin_root.parent() {
            let _ = skiff_agent::kernel::bpf_lb::unmount_bpffs(bpffs);
            let _ = std::fs::remove_dir(bpffs);
        }
    }
}

fn counts(ids: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for id in ids {
        *m.entry(id.clone()).or_insert(0) += 1;
    }
    m
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE_PORT: u16 = 30080;

fn run(mode: Mode, name: &str, test: fn(&mut Harness) -> Result<()>) {
    let full = format!("{mode:?}::{name}");
    if !privileged::privileged(&full)
        || !privileged::tools(
            &full,
            &["ip", "iptables", "iptables-nft-restore", "iptables-legacy-restore"],
        )
    {
        return;
    }
    let backends = 4;
    let sizes = if name == "map_full_is_an_error_and_a_metric" {
        LbMapSizes { services: 8, ..LbMapSizes::default() }
    } else {
        LbMapSizes::default()
    };
    let mut h = Harness::new(mode, backends, sizes).expect("build the test topology");
    test(&mut h).unwrap_or_else(|e| panic!("{full}: {e:#}"));
}

// ---- behaviour tests (each runs in both modes) ----

/// Random selection: 400 connections over 4 backends pass a chi-square test (df 3, p = 0.001).
fn random_distribution_is_even(h: &mut Harness) -> Result<()> {
    h.sync(&[svc("web", [10, 96, 0, 10], &[0, 1, 2, 3])])?;
    let ids = h.tcp(VIP, 400)?;
    let c = counts(&ids);
    ensure!(c.len() == 4, "every backend is used: {c:?}");
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let chi2: f64 = c.values().map(|n| (*n as f64 - 100.0).powi(2) / 100.0).sum();
    ensure!(chi2 < 16.27, "chi-square {chi2:.2} over the 0.001 bound for {c:?}");
    Ok(())
}

/// `ClientIP` affinity: one client always reaches the same backend.
fn client_ip_affinity_is_stable(h: &mut Harness) -> Result<()> {
    let mut s = svc("sticky", [10, 96, 0, 10], &[0, 1, 2, 3]);
    s.affinity = true;
    h.sync(&[s])?;
    let ids = h.tcp(VIP, 40)?;
    ensure!(counts(&ids).len() == 1, "one backend for one client: {:?}", counts(&ids));
    Ok(())
}

/// The application sees the Service address as its peer, not the backend's.
fn getpeername_shows_the_service_address(h: &mut Harness) -> Result<()> {
    h.sync(&[svc("web", [10, 96, 0, 10], &[0, 1])])?;
    let words = h.topo.probe().ok(&format!("tcp {VIP} 80 1"))?;
    ensure!(words[1] == format!("peer={VIP}:80"), "{words:?}");
    Ok(())
}

/// UDP both ways: unconnected datagrams are answered from the VIP; a connected UDP socket stays
/// on one backend.
fn udp_works_both_ways(h: &mut Harness) -> Result<()> {
    h.sync(&[svc("dns", [10, 96, 0, 10], &[0, 1, 2, 3])])?;
    let words = h.topo.probe().ok(&format!("udp {VIP} 80 40"))?;
    ensure!(words[1] == format!("from={VIP}:80"), "replies come from the VIP: {words:?}");
    let spread = counts(&words[0].split(',').map(str::to_owned).collect::<Vec<_>>());
    ensure!(spread.len() > 1, "new sockets are balanced: {spread:?}");
    let words = h.topo.probe().ok(&format!("udpconn {VIP} 80 20"))?;
    let ids: Vec<String> = words[0].split(',').map(str::to_owned).collect();
    ensure!(counts(&ids).len() == 1, "connected socket sticks to one backend: {ids:?}");
    ensure!(words[1] == format!("peer={VIP}:80"), "{words:?}");
    Ok(())
}

/// An external IP is a frontend too, for TCP and UDP, and the client sees it as the peer.
fn external_ip_is_balanced_like_the_cluster_ip(h: &mut Harness) -> Result<()> {
    let ext = Ipv4Addr::new(192, 0, 2, 10);
    let mut s = svc("web", [10, 96, 0, 10], &[0, 1, 2, 3]);
    s.external_ips.push(ext);
    h.sync(&[s])?;
    let words = h.topo.probe().ok(&format!("tcp {ext} 80 40"))?;
    let spread = counts(&words[0].split(',').map(str::to_owned).collect::<Vec<_>>());
    ensure!(spread.len() > 1, "balanced over backends: {spread:?}");
    ensure!(words[1] == format!("peer={ext}:80"), "{words:?}");
    let words = h.topo.probe().ok(&format!("udp {ext} 80 10"))?;
    ensure!(
        words[1] == format!("from={ext}:80"),
        "UDP replies come from the external IP: {words:?}"
    );
    Ok(())
}

/// NodePort from an "external" namespace (the client does not go through socket LB for the
/// node's own address): TCP is balanced and answered from the node address, UDP both ways.
fn node_port_from_outside(h: &mut Harness) -> Result<()> {
    h.sync(&[svc("web", [10, 96, 0, 10], &[0, 1, 2, 3])])?;
    let node = NODE_CLIENT_SIDE;
    let words = h.topo.outside_probe()?.ok(&format!("tcp {node} {NODE_PORT} 40"))?;
    let spread = counts(&words[0].split(',').map(str::to_owned).collect::<Vec<_>>());
    ensure!(spread.len() > 1, "balanced over backends: {spread:?}");
    ensure!(words[1] == format!("peer={node}:{NODE_PORT}"), "{words:?}");
    let words = h.topo.outside_probe()?.ok(&format!("udp {node} {NODE_PORT} 10"))?;
    ensure!(
        words[1] == format!("from={node}:{NODE_PORT}"),
        "UDP replies come from the node: {words:?}"
    );
    if let Some(np) = h.nodeport.first_mut() {
        let tracked = np.conntrack_entries()?;
        ensure!(tracked >= 2 * 50, "the tc program tracked every flow both ways: {tracked}");
        ensure!(np.gc(Duration::from_hours(1))? == 0, "no flow is an hour old");
        ensure!(np.gc(Duration::ZERO)? == tracked, "idle GC removes every entry");
        ensure!(np.conntrack_entries()? == 0);
    }
    Ok(())
}

/// NodePort from a process on the node itself (its packets never cross a node interface's
/// ingress): balanced, answered from the node address, TCP and UDP. eBPF balances it at the
/// socket (the destination is one of the node's addresses), iptables in nat OUTPUT.
fn node_port_from_the_node_itself(h: &mut Harness) -> Result<()> {
    h.sync(&[svc("web", [10, 96, 0, 10], &[0, 1, 2, 3])])?;
    for node in [NODE_CLIENT_SIDE, NODE_REMOTE_SIDE] {
        let probe = h.topo.node_probe()?;
        let words = probe.ok(&format!("tcp {node} {NODE_PORT} 40"))?;
        let spread = counts(&words[0].split(',').map(str::to_owned).collect::<Vec<_>>());
        ensure!(spread.len() > 1, "balanced over backends: {spread:?}");
        ensure!(words[1] == format!("peer={node}:{NODE_PORT}"), "{words:?}");
        let words = probe.ok(&format!("udp {node} {NODE_PORT} 10"))?;
        ensure!(words[1] == format!("from={node}:{NODE_PORT}"), "UDP from the node: {words:?}");
    }
    // Another port on a node address is not a Service: left alone (nothing listens there).
    let answer = h.topo.node_probe()?.cmd(&format!("tcp {NODE_CLIENT_SIDE} 30999 1"))?;
    ensure!(answer == "err ConnectionRefused", "{answer}");
    Ok(())
}

/// `externalTrafficPolicy: Local`: NodePort traffic from outside reaches only the endpoints on
/// this node; the ClusterIP, and the NodePort from the node itself, still reach all of them.
fn external_traffic_policy_local(h: &mut Harness) -> Result<()> {
    let mut s = svc("web", [10, 96, 0, 10], &[0, 1, 2, 3]);
    s.external_local = true;
    s.local = vec![1, 2];
    h.sync(&[s])?;
    let words = h.topo.outside_probe()?.ok(&format!("tcp {NODE_CLIENT_SIDE} {NODE_PORT} 40"))?;
    let spread = counts(&words[0].split(',').map(str::to_owned).collect::<Vec<_>>());
    ensure!(spread.keys().all(|b| b == "b1" || b == "b2"), "only local endpoints: {spread:?}");
    ensure!(spread.len() == 2, "both local endpoints used: {spread:?}");
    let all = counts(&h.tcp(VIP, 60)?);
    ensure!(all.len() == 4, "the ClusterIP uses every endpoint: {all:?}");
    // A client on the node itself is not "external": the NodePort uses every endpoint (as
    // kube-proxy's KUBE-EXT chain sends LOCAL-source traffic to the Service chain).
    let words = h.topo.node_probe()?.ok(&format!("tcp {NODE_CLIENT_SIDE} {NODE_PORT} 60"))?;
    let spread = counts(&words[0].split(',').map(str::to_owned).collect::<Vec<_>>());
    ensure!(spread.len() == 4, "node-local NodePort clients use every endpoint: {spread:?}");
    Ok(())
}

/// `(id, source address the server saw)` per answer of `tcpsrc`/`udpsrc`.
fn sources(list: &str) -> Result<Vec<(String, std::net::SocketAddr)>> {
    list.split(',')
        .map(|e| {
            let (id, src) = e.split_once('@').context("ID@SRC")?;
            Ok((id.to_owned(), src.parse()?))
        })
        .collect()
}

/// NodePort with `externalTrafficPolicy: Cluster` to a backend on another node whose route
/// back to the client does not pass this node: the node SNATs the request to its own address,
/// so the reply comes back through it and reaches the client from `NODE_IP:nodePort` (TCP and
/// UDP). A local backend of the same Service keeps working alongside.
fn node_port_snat_to_a_remote_backend(h: &mut Harness) -> Result<()> {
    let mut s = svc("web", [10, 96, 0, 10], &[REMOTE]);
    s.local = vec![0];
    h.sync(&[s.clone()])?;
    let node = NODE_CLIENT_SIDE;
    let words = h.topo.outside_probe()?.ok(&format!("tcpsrc {node} {NODE_PORT} 10"))?;
    ensure!(words[1] == format!("peer={node}:{NODE_PORT}"), "reply from the node: {words:?}");
    for (id, src) in sources(&words[0])? {
        ensure!(id == "r0", "{words:?}");
        ensure!(
            src.ip() == std::net::IpAddr::V4(NODE_REMOTE_SIDE),
            "SNATed to the node: {words:?}"
        );
        if h.mode == Mode::Ebpf {
            ensure!(src.port() >= 61000, "SNAT port from the tc program's range: {words:?}");
        }
    }
    let words = h.topo.outside_probe()?.ok(&format!("udpsrc {node} {NODE_PORT} 5"))?;
    ensure!(words[1] == format!("from={node}:{NODE_PORT}"), "UDP reply from the node: {words:?}");
    for (id, src) in sources(&words[0])? {
        ensure!(id == "r0" && src.ip() == std::net::IpAddr::V4(NODE_REMOTE_SIDE), "{words:?}");
    }
    // A held stream keeps its SNAT mapping (the same flow both ways, many packets), also
    // across an agent restart (the conntrack entries are pinned).
    let words = h.topo.outside_probe()?.ok(&format!("hold {node} {NODE_PORT}"))?;
    for round in 0..2 {
        for _ in 0..3 {
            let echo = h.topo.outside_probe()?.ok(&format!("ping {}", words[0]))?;
            ensure!(echo == ["r0", "ping"], "round {round}: {echo:?}");
        }
        if round == 0 {
            h.restart()?;
            h.sync(&[s.clone()])?;
        }
    }
    if h.mode == Mode::Ebpf {
        // The LRU (or an idle GC) may drop one direction of a live flow: the next request puts
        // back its reply and un-SNAT entries, on the same SNAT port, and the stream carries on.
        for dir in [CT_UNSNAT, CT_REPLY] {
            let gone = forget_conntrack(h, dir)?;
            ensure!(gone > 0, "the held stream had conntrack entries of direction {dir}");
            let echo = h.topo.outside_probe()?.ok(&format!("ping {}", words[0]))?;
            ensure!(echo == ["r0", "ping"], "after losing direction {dir}: {echo:?}");
        }
    }
    // A local and a remote backend together: both reachable, the remote one SNATed.
    s.endpoints = vec![(0, Cond::Ready), (REMOTE, Cond::Ready)];
    h.sync(&[s])?;
    let words = h.topo.outside_probe()?.ok(&format!("tcpsrc {node} {NODE_PORT} 40"))?;
    let seen = sources(&words[0])?;
    let ids: BTreeMap<&str, usize> = seen.iter().fold(BTreeMap::new(), |mut m, (id, _)| {
        *m.entry(id.as_str()).or_insert(0) += 1;
        m
    });
    ensure!(ids.len() == 2, "both backends used: {ids:?}");
    for (id, src) in &seen {
        if id == "r0" {
            ensure!(src.ip() == std::net::IpAddr::V4(NODE_REMOTE_SIDE), "{words:?}");
        }
    }
    if h.mode == Mode::Ebpf {
        // One SNAT port per flow to r0 (TCP and UDP), none refused, and it shows on /metrics.
        let remote_flows = 10 + 5 + 1 + seen.iter().filter(|(id, _)| id == "r0").count();
        let m = h.metrics();
        let counter = |name: &str| -> Option<usize> {
            m.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!("skiff_lb_program_total{{counter=\"{name}\"}} "))
                })
                .and_then(|v| v.parse().ok())
        };
        ensure!(counter("nodeport_snat") == Some(remote_flows), "{remote_flows} SNAT flows: {m}");
        ensure!(counter("nodeport_snat_no_port") == Some(0), "{m}");
    }
    Ok(())
}

/// The pin path and the entries (`bpftool -j map dump`) of the pinned map `name`.
fn dump_map(h: &Harness, name: &str) -> Result<(PathBuf, Vec<Value>)> {
    let pin = h.pin_root.join(format!("v{}", skiff_agent::kernel::bpf_lb::LB_LAYOUT)).join(name);
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&pin)
        .output()?;
    ensure!(out.status.success(), "bpftool map dump: {}", String::from_utf8_lossy(&out.stderr));
    Ok((pin, serde_json::from_slice(&out.stdout)?))
}

/// `enum ct_dir` in `ebpf/tc_nodeport.c`.
const CT_REPLY: u8 = 1;
const CT_UNSNAT: u8 = 3;

/// Deletes every `ct4` entry of direction `dir` (byte 13 of `struct ct4_key`), as an LRU
/// eviction would, with `bpftool` on the pinned map. Returns how many.
fn forget_conntrack(h: &Harness, dir: u8) -> Result<usize> {
    let (pin, entries) = dump_map(h, "ct4")?;
    let pin = pin.to_str().context("pin path")?;
    let mut gone = 0;
    for e in entries {
        let key: Vec<String> = e["key"]
            .as_array()
            .context("key bytes")?
            .iter()
            .map(|b| b.as_str().map(|b| b.trim_start_matches("0x").to_owned()))
            .collect::<Option<_>>()
            .context("hex key bytes")?;
        if key.get(13).map(|b| u8::from_str_radix(b, 16)) != Some(Ok(dir)) {
            continue;
        }
        let out = std::process::Command::new("bpftool")
            .args(["map", "delete", "pinned", pin, "key", "hex"])
            .args(&key)
            .output()?;
        ensure!(out.status.success(), "bpftool delete: {}", String::from_utf8_lossy(&out.stderr));
        gone += 1;
    }
    Ok(gone)
}

/// `externalTrafficPolicy: Local` never gets source NAT: NodePort traffic reaches only the local
/// endpoint (not the remote one) and the backend sees the client's own address (TCP and UDP).
fn external_traffic_policy_local_keeps_the_client_source(h: &mut Harness) -> Result<()> {
    let mut s = svc("web", [10, 96, 0, 10], &[1, REMOTE]);
    s.external_local = true;
    s.local = vec![1];
    h.sync(&[s])?;
    let node = NODE_CLIENT_SIDE;
    let words = h.topo.outside_probe()?.ok(&format!("tcpsrc {node} {NODE_PORT} 20"))?;
    ensure!(words[1] == format!("peer={node}:{NODE_PORT}"), "{words:?}");
    for (id, src) in sources(&words[0])? {
        ensure!(id == "b1", "only the local endpoint: {words:?}");
        ensure!(src.ip() == std::net::IpAddr::V4(CLIENT_IP), "client source kept: {words:?}");
    }
    let words = h.topo.outside_probe()?.ok(&format!("udpsrc {node} {NODE_PORT} 5"))?;
    ensure!(words[1] == format!("from={node}:{NODE_PORT}"), "{words:?}");
    for (id, src) in sources(&words[0])? {
        ensure!(id == "b1" && src.ip() == std::net::IpAddr::V4(CLIENT_IP), "{words:?}");
    }
    Ok(())
}

/// A removed endpoint gets no new connections (within 1 s of the sync).
fn removed_endpoint_gets_no_new_connections(h: &mut Harness) -> Result<()> {
    h.sync(&[svc("web", [10, 96, 0, 10], &[0, 1, 2, 3])])?;
    ensure!(h.tcp(VIP, 60)?.contains(&"b3".to_owned()), "b3 serves before removal");
    h.sync(&[svc("web", [10, 96, 0, 10], &[0, 1, 2])])?;
    wait::until("no new connections to the removed endpoint", Duration::from_secs(1), || {
        Ok(!h.tcp(VIP, 60)?.contains(&"b3".to_owned()))
    })?;
    ensure!(!h.tcp(VIP, 100)?.contains(&"b3".to_owned()), "b3 stays out");
    Ok(())
}

/// A Service without endpoints refuses connections (ECONNREFUSED), as kube-proxy's REJECT.
fn service_without_endpoints_refuses(h: &mut Harness) -> Result<()> {
    h.sync(&[svc("empty", [10, 96, 0, 10], &[])])?;
    let answer = h.topo.probe().cmd(&format!("tcp {VIP} 80 1"))?;
    ensure!(answer == "err ConnectionRefused", "{answer}");
    if h.mode == Mode::Ebpf {
        // The program counted the refusal and sent an event; a sync drains events into tracing.
        h.sync(&[svc("empty", [10, 96, 0, 10], &[])])?;
        let m = h.metrics();
        ensure!(m.contains("skiff_lb_program_total{counter=\"refused_no_endpoints\"} 1"), "{m}");
        ensure!(m.contains("skiff_proxy_program_events_total 1"), "{m}");
    }
    Ok(())
}

/// A terminating endpoint gets no new connections but its open connections keep working.
fn terminating_endpoint_keeps_existing_connections(h: &mut Harness) -> Result<()> {
    h.sync(&[svc("web", [10, 96, 0, 10], &[0, 1])])?;
    let mut held = None;
    for _ in 0..64 {
        let words = h.topo.probe().ok(&format!("hold {VIP} 80"))?;
        if words[1] == "b0" {
            held = Some(words[0].clone());
            break;
        }
    }
    let held = held.context("a connection to b0")?;
    let mut s = svc("web", [10, 96, 0, 10], &[1]);
    s.endpoints.push((0, Cond::Terminating));
    h.sync(&[s])?;
    let ids = h.tcp(VIP, 60)?;
    ensure!(
        !ids.contains(&"b0".to_owned()),
        "terminating b0 got a new connection: {:?}",
        counts(&ids)
    );
    let echo = h.topo.probe().ok(&format!("ping {held}"))?;
    ensure!(echo == ["b0", "ping"], "{echo:?}");
    Ok(())
}

/// An agent restart keeps an established TCP stream, and the data plane keeps working.
fn restart_keeps_established_connections(h: &mut Harness) -> Result<()> {
    let services = [svc("web", [10, 96, 0, 10], &[0, 1, 2, 3])];
    h.sync(&services)?;
    let words = h.topo.probe().ok(&format!("hold {VIP} 80"))?;
    let (index, id) = (words[0].clone(), words[1].clone());
    // A NodePort flow too (per-packet NAT in tc or iptables: needs the state to survive).
    let words = h.topo.outside_probe()?.ok(&format!("hold {NODE_CLIENT_SIDE} {NODE_PORT}"))?;
    let (np_index, np_id) = (words[0].clone(), words[1].clone());
    h.restart()?;
    let echo = h.topo.probe().ok(&format!("ping {index}"))?;
    ensure!(echo == [id.as_str(), "ping"], "{echo:?}");
    let echo = h.topo.outside_probe()?.ok(&format!("ping {np_index}"))?;
    ensure!(echo == [np_id.as_str(), "ping"], "NodePort stream across the restart: {echo:?}");
    let report = h.sync(&services)?;
    if h.mode == Mode::Ebpf {
        ensure!(report.changed == 0, "adopted maps already match: {report:?}");
    }
    ensure!(h.tcp(VIP, 10)?.len() == 10);
    let echo = h.topo.probe().ok(&format!("ping {index}"))?;
    ensure!(echo == [id.as_str(), "ping"], "{echo:?}");
    Ok(())
}

/// A full map fails the Services that do not fit, with an error and a metric; the rest work.
/// (Only the eBPF mode has fixed-size maps; in iptables mode all Services fit.)
fn map_full_is_an_error_and_a_metric(h: &mut Harness) -> Result<()> {
    let services: Vec<Svc> = (0..6u8)
        .map(|i| svc(&format!("s{i}"), [10, 96, 1, i + 1], &[usize::from(i % 4)]))
        .collect();
    let report = h.sync(&services)?;
    if h.mode == Mode::Ebpf {
        ensure!(!report.failed.is_empty(), "8 entries cannot hold 12 frontends: {report:?}");
        let m = h.metrics();
        ensure!(!m.contains("skiff_proxy_map_full_total 0"), "{m}");
    }
    let first = services[0].vip;
    ensure!(h.tcp(first, 3)? == ["b0", "b0", "b0"], "a Service that fit works");
    if h.mode == Mode::Ebpf {
        // The Services go, also those that failed half-written: nothing is left in the maps.
        let report = h.sync(&[])?;
        ensure!(report.failed.is_empty(), "{report:?}");
        for map in ["svc4", "be4", "revnat4"] {
            let (_, entries) = dump_map(h, map)?;
            ensure!(entries.is_empty(), "{map} left: {entries:?}");
        }
    }
    Ok(())
}

/// Everything a test creates is gone after it, also when it panics half-way.
fn cleanup_after_panic(mode: Mode) {
    let name = "cleanup_after_panic";
    if !privileged::privileged(name) || !privileged::tools(name, &["ip", "iptables"]) {
        return;
    }
    let mut paths = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut h = Harness::new(mode, 2, LbMapSizes::default()).expect("topology");
        h.sync(&[svc("web", [10, 96, 0, 10], &[0, 1])]).expect("sync");
        paths.push(h.topo.cgroup.path.clone());
        paths.push(h.topo.client.path().to_owned());
        paths.push(h.topo.node.path().to_owned());
        paths.push(h.topo.backend.path().to_owned());
        paths.push(h.topo.node2.path().to_owned());
        paths.extend(h.pin_root.parent().map(std::path::Path::to_owned));
        panic!("deliberate failure with the data plane programmed");
    }));
    assert!(result.is_err());
    for p in &paths {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

/// eBPF only (iptables leaves this to the kernel's conntrack): the socket reverse-NAT entries of
/// a removed Service are garbage-collected, and the count shows on /metrics.
#[test]
fn ebpf_gc_removes_reverse_nat_entries_of_removed_services() {
    let name = "ebpf_gc_removes_reverse_nat_entries_of_removed_services";
    if !privileged::privileged(name) {
        return;
    }
    let mut h = Harness::new(Mode::Ebpf, 2, LbMapSizes::default()).expect("topology");
    h.sync(&[svc("dns", [10, 96, 0, 10], &[0, 1])]).unwrap();
    h.topo.probe().ok(&format!("udp {VIP} 80 5")).unwrap();
    h.sync(&[]).unwrap();
    let Some(Backend::Ebpf(p)) = h.backend.as_mut() else { panic!("eBPF mode") };
    let removed = p.gc().unwrap();
    assert!(removed >= 5, "one entry per UDP socket: {removed}");
    assert_eq!(p.gc().unwrap(), 0, "nothing left to collect");
    let m = h.metrics();
    assert!(m.contains(&format!("skiff_proxy_gc_removed_total {removed}")), "{m}");
}

/// eBPF only (iptables leaves this to the kernel's conntrack): a new TCP connection on the
/// tuple of an earlier NodePort flow (a client that reuses its port) keeps that flow's backend
/// while it is still an active endpoint, and chooses again once it has been removed.
#[test]
fn ebpf_nodeport_syn_on_an_old_tuple_leaves_a_removed_backend() {
    nodeport_flow_leaves_a_removed_backend(
        "ebpf_nodeport_syn_on_an_old_tuple_leaves_a_removed_backend",
        &format!("tcpfrom {NODE_CLIENT_SIDE} {NODE_PORT} 40123"),
    );
}

/// eBPF only: a UDP NodePort flow stays with its backend while that is an endpoint and moves
/// once it is removed (kube-proxy deletes the conntrack entries of a removed UDP endpoint for
/// the same reason).
#[test]
fn ebpf_nodeport_udp_flow_leaves_a_removed_backend() {
    nodeport_flow_leaves_a_removed_backend(
        "ebpf_nodeport_udp_flow_leaves_a_removed_backend",
        &format!("udpfrom {NODE_CLIENT_SIDE} {NODE_PORT} 40124"),
    );
}

/// `cmd` (a probe from one fixed client port) reaches b0, keeps reaching it once b1 is added,
/// and reaches b1 once b0 is removed.
fn nodeport_flow_leaves_a_removed_backend(name: &str, cmd: &str) {
    if !privileged::privileged(name) {
        return;
    }
    let mut h = Harness::new(Mode::Ebpf, 2, LbMapSizes::default()).expect("topology");
    h.sync(&[svc("web", [10, 96, 0, 10], &[0])]).unwrap();
    assert_eq!(h.topo.outside_probe().unwrap().ok(cmd).unwrap(), ["b0"]);
    h.sync(&[svc("web", [10, 96, 0, 10], &[0, 1])]).unwrap();
    for _ in 0..3 {
        assert_eq!(h.topo.outside_probe().unwrap().ok(cmd).unwrap(), ["b0"], "kept");
    }
    h.sync(&[svc("web", [10, 96, 0, 10], &[1])]).unwrap();
    assert_eq!(h.topo.outside_probe().unwrap().ok(cmd).unwrap(), ["b1"], "b0 was removed");
}

/// eBPF only: an upgraded agent leaves the pins of an older map layout (whose programs keep
/// serving, the new maps being empty) until its first sync has filled its own maps; the
/// caller removes them after that.
#[test]
fn ebpf_older_layout_pins_stay_until_the_first_sync() {
    let name = "ebpf_older_layout_pins_stay_until_the_first_sync";
    if !privileged::privileged(name) {
        return;
    }
    let mut h = Harness::new(Mode::Ebpf, 2, LbMapSizes::default()).expect("topology");
    let old = h.pin_root.join("v1");
    std::fs::create_dir_all(old.join("links")).unwrap();
    h.restart().unwrap();
    assert!(old.join("links").exists(), "starting keeps the older layout's pins");
    h.sync(&[svc("web", [10, 96, 0, 10], &[0, 1])]).unwrap();
    EbpfProxier::remove_other_layouts(&h.pin_root).unwrap();
    assert!(!old.exists(), "removed after the first sync");
    assert!(h.pin_root.join(format!("v{}", skiff_agent::kernel::bpf_lb::LB_LAYOUT)).exists());
    assert_eq!(counts(&h.tcp(VIP, 10).unwrap()).len(), 2, "the Service still works");
}

/// eBPF only (iptables has no Maglev): with the Maglev annotation every NodePort flow reaches
/// exactly the backend the userspace table names for its hash, so every node maps it alike and
/// a backend change moves only the flows the table moves (≈ 1/N, unit-tested in `maglev`).
#[test]
fn ebpf_nodeport_maglev_follows_the_table() {
    let name = "ebpf_nodeport_maglev_follows_the_table";
    if !privileged::privileged(name) {
        return;
    }
    let mut h = Harness::new(Mode::Ebpf, 4, LbMapSizes::default()).expect("topology");
    let mut s = svc("web", [10, 96, 0, 10], &[0, 1, 2, 3]);
    s.maglev = true;
    h.sync(&[s]).unwrap();
    let names: Vec<String> = (0..4).map(|i| format!("{}:{BACKEND_PORT}", backend_ip(i))).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let table = maglev::build_table(&refs, MAGLEV_SEED, 1021);
    let words = h
        .topo
        .outside_probe()
        .unwrap()
        .ok(&format!("tcpports {NODE_CLIENT_SIDE} {NODE_PORT} 40"))
        .unwrap();
    let mut seen = BTreeMap::new();
    for flow in words[0].split(',') {
        let (id, port) = flow.split_once(':').unwrap();
        let port: u16 = port.parse().unwrap();
        let hash = maglev::flow_hash(CLIENT_IP, NODE_CLIENT_SIDE, port, NODE_PORT, 6);
        let want = format!("b{}", table[(hash % 1021) as usize]);
        assert_eq!(id, want, "flow from port {port}");
        *seen.entry(want).or_insert(0) += 1;
    }
    assert!(seen.len() > 1, "flows spread over backends: {seen:?}");
}

/// eBPF only: the `skiff-agent proxy` binary adopts a pinned data plane, answers `/healthz`,
/// and on SIGTERM exits 0 leaving the data plane programmed (maps and links are pinned).
#[test]
fn ebpf_agent_binary_stops_on_sigterm_and_keeps_the_data_plane() {
    let name = "ebpf_agent_binary_stops_on_sigterm_and_keeps_the_data_plane";
    if !privileged::privileged(name) {
        return;
    }
    let mut h = Harness::new(Mode::Ebpf, 2, LbMapSizes::default()).expect("topology");
    let services = [svc("web", [10, 96, 0, 10], &[0, 1])];
    h.sync(&services).unwrap();
    // The binary takes over, as after an agent restart: the library proxier goes, no cleanup.
    h.backend = None;
    h.nodeport.clear();
    let source =
        TempFile(std::env::temp_dir().join(format!("skiff-test-{}-services.json", h.topo.tag)));
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects(&services)});
    std::fs::write(&source.0, serde_json::to_vec(&list).unwrap()).unwrap();
    let port = skiff_e2e::free_port().unwrap();
    let child = std::process::Command::new(agent_binary().unwrap())
        .args(["proxy", "--mode", "ebpf", "--source"])
        .arg(&source.0)
        .arg("--pin-root")
        .arg(&h.pin_root)
        .arg("--cgroup")
        .arg(&h.topo.cgroup.path)
        .args(["--healthz", &format!("127.0.0.1:{port}"), "--node", "node"])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut agent = Proc::new(child);
    wait::until("the agent's /healthz", Duration::from_secs(20), || {
        Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
    })
    .unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(agent.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut status = None;
    wait::until("the agent to exit", Duration::from_secs(10), || {
        status = agent.try_wait()?;
        Ok(status.is_some())
    })
    .unwrap();
    assert!(status.is_some_and(|s| s.success()), "exit status {status:?}");
    let c = counts(&h.tcp(VIP, 20).unwrap());
    assert!(c.keys().all(|b| b == "b0" || b == "b1") && c.len() == 2, "still balanced: {c:?}");
}

/// eBPF only (kube-proxy no longer holds NodePort sockets open since 1.25, so iptables mode
/// lets such a bind succeed): binding a NodePort on a node address fails with EADDRINUSE, TCP
/// and UDP, and is counted; other ports, the wildcard and loopback bind.
#[test]
fn ebpf_bind_to_a_node_port_is_refused() {
    let name = "ebpf_bind_to_a_node_port_is_refused";
    if !privileged::privileged(name) {
        return;
    }
    let mut h = Harness::new(Mode::Ebpf, 2, LbMapSizes::default()).expect("topology");
    h.sync(&[svc("web", [10, 96, 0, 10], &[0, 1])]).unwrap();
    let probe = h.topo.node_probe().unwrap();
    for cmd in ["bind", "bindudp"] {
        for ip in [NODE_CLIENT_SIDE, NODE_REMOTE_SIDE] {
            let answer = probe.cmd(&format!("{cmd} {ip} {NODE_PORT}")).unwrap();
            assert_eq!(answer, "err AddrInUse", "{cmd} {ip}:{NODE_PORT}");
        }
        assert_eq!(probe.cmd(&format!("{cmd} {NODE_CLIENT_SIDE} 30999")).unwrap(), "ok bound");
        // The wildcard is a pod's own namespace's too: not guarded.
        assert_eq!(probe.cmd(&format!("{cmd} 0.0.0.0 {NODE_PORT}")).unwrap(), "ok bound");
        assert_eq!(probe.cmd(&format!("{cmd} 127.0.0.1 {NODE_PORT}")).unwrap(), "ok bound");
    }
    let m = h.metrics();
    assert!(m.contains("skiff_lb_program_total{counter=\"nodeport_bind_refused\"} 4"), "{m}");
}

/// A file removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn ebpf_cleanup_after_panic() {
    cleanup_after_panic(Mode::Ebpf);
}

#[test]
fn iptables_cleanup_after_panic() {
    cleanup_after_panic(Mode::Iptables);
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod ebpf {
            $( #[test] fn $name() { super::run(super::Mode::Ebpf, stringify!($name), super::$name); } )*
        }
        mod iptables {
            $( #[test] fn $name() { super::run(super::Mode::Iptables, stringify!($name), super::$name); } )*
        }
        mod iptables_legacy {
            $( #[test] fn $name() { super::run(super::Mode::IptablesLegacy, stringify!($name), super::$name); } )*
        }
    };
}

conformance!(
    random_distribution_is_even,
    client_ip_affinity_is_stable,
    getpeername_shows_the_service_address,
    udp_works_both_ways,
    external_ip_is_balanced_like_the_cluster_ip,
    node_port_from_outside,
    node_port_from_the_node_itself,
    node_port_snat_to_a_remote_backend,
    external_traffic_policy_local,
    external_traffic_policy_local_keeps_the_client_source,
    removed_endpoint_gets_no_new_connections,
    service_without_endpoints_refuses,
    terminating_endpoint_keeps_existing_connections,
    restart_keeps_established_connections,
    map_full_is_an_error_and_a_metric,
);
