//! The product's loop end to end, as far as it exists today: a sample app applied with the real
//! kubectl to three `skiff-master`s gets a ClusterIP from the API server; the Service and its
//! EndpointSlice, read back through the API, program each proxier (eBPF socket LB, then
//! kube-proxy-style iptables) on a topology of real namespaces; a client connecting to the
//! allocated ClusterIP reaches every backend.
//!
//! The EndpointSlice is written by the test, as the EndpointSlice controller will once pods run
//! on agents (later issues); its addresses are the topology's backend servers.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use skiff_agent::kernel::bpf_lb::{self, LbMapSizes};
use skiff_agent::kernel::iptables::Iptables;
use skiff_agent::proxy::ebpf::{EbpfConfig, EbpfProxier};
use skiff_agent::proxy::iptables::{IptablesConfig, IptablesProxier};
use skiff_agent::proxy::source::{Object, parse_objects};
use skiff_agent::proxy::tracker::ServiceTracker;
use skiff_agent::proxy::{DesiredState, Proxier};
use skiff_e2e::api::{Cluster, Kubectl};
use skiff_e2e::dataplane::{BACKEND_PORT, Topology, backend_ip};
use skiff_e2e::{privileged, unique_tag};

const BACKENDS: usize = 4;

/// The sample app: a Deployment (stored; no agent runs its pods yet) and its Service.
const SAMPLE_APP: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
spec:
  replicas: 4
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: 8080
";

/// The EndpointSlice the controller would write: the topology's backends, all ready.
fn endpoint_slice() -> String {
    let mut endpoints = String::new();
    for i in 0..BACKENDS {
        let _ = writeln!(
            endpoints,
            "- addresses: [\"{}\"]\n  conditions: {{ready: true}}",
            backend_ip(i)
        );
    }
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: {BACKEND_PORT}
  protocol: TCP
endpoints:
{endpoints}"
    )
}

/// Services and EndpointSlices as the API serves them → the proxy's desired state.
fn desired_from_api(k: &Kubectl) -> Result<(DesiredState, Ipv4Addr)> {
    let json = k.ok(&["get", "services,endpointslices", "-n", "demo", "-o", "json"])?;
    let list: Value = serde_json::from_str(&json)?;
    let ip = list["items"]
        .as_array()
        .and_then(|items| items.iter().find(|o| o["kind"] == "Service"))
        .and_then(|s| s["spec"]["clusterIP"].as_str())
        .context("the Service has a clusterIP")?
        .parse()?;
    let mut tracker = ServiceTracker::new("node");
    for object in parse_objects(&json)? {
        match object {
            Object::Service(s) => tracker.upsert_service(*s),
            Object::EndpointSlice(s) => tracker.upsert_slice(*s),
        }
    }
    Ok((tracker.desired(), ip))
}

/// Distinct backends reached by `n` new TCP connections to `ip:80` from the client namespace.
fn backends_reached(topo: &mut Topology, ip: Ipv4Addr, n: usize) -> Result<BTreeSet<String>> {
    let words = topo.probe().ok(&format!("tcp {ip} 80 {n}"))?;
    let first = words.first().context("probe answer")?;
    Ok(first.split(',').map(str::to_owned).collect())
}

/// A private bpffs for the eBPF proxier's pins, unmounted and removed on drop.
struct Bpffs(PathBuf);

impl Bpffs {
    fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("skiff-test-{tag}-bpf"));
        bpf_lb::ensure_bpffs(&dir)?;
        Ok(Self(dir))
    }
    fn pin_root(&self) -> PathBuf {
        self.0.join("skiff")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = bpf_lb::remove_pins(&self.pin_root());
        let _ = bpf_lb::unmount_bpffs(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn kubectl_service_routes_through_both_proxiers() {
    let name = "kubectl_service_routes_through_both_proxiers";
    if !privileged::privileged(name) || !privileged::tools(name, &["ip", "iptables", "kubectl"]) {
        return;
    }
    check().unwrap_or_else(|e| panic!("{e:#}"));
}

fn check() -> Result<()> {
    let tag = unique_tag();
    let cluster = Cluster::start(&tag, skiff_apiserver::cache::HISTORY)?;
    let k = Kubectl::new(&tag, &cluster.kubeconfig(1)?)?;
    k.ok_stdin(&["apply", "-f", "-"], SAMPLE_APP)?;
    k.ok_stdin(&["apply", "-f", "-"], &endpoint_slice())?;
    let (desired, ip) = desired_from_api(&k)?;
    ensure!(
        ip.octets()[0] == 10 && (96..112).contains(&ip.octets()[1]),
        "ClusterIP {ip} comes from the service CIDR 10.96.0.0/12"
    );

    let mut topo =
        Topology::build(&tag, BACKENDS, Path::new(env!("CARGO_BIN_EXE_skiff-netprobe")))?;
    let every: BTreeSet<String> = (0..BACKENDS).map(|i| format!("b{i}")).collect();

    // eBPF: the client's connect() to the ClusterIP is rewritten in its cgroup.
    let bpffs = Bpffs::new(&tag)?;
    let config = EbpfConfig {
        pin_root: bpffs.pin_root(),
        cgroup: topo.cgroup.path.clone(),
        map_sizes: LbMapSizes::default(),
        node_addresses: Vec::new(),
    };
    let mut ebpf = EbpfProxier::start(&config)?;
    let reached = ebpf
        .sync(&desired)
        .map_err(anyhow::Error::from)
        .and_then(|_| backends_reached(&mut topo, ip, 80));
    ebpf.cleanup(&config.pin_root)?;
    let reached = reached?;
    ensure!(reached == every, "eBPF: {ip}:80 reaches {reached:?}, not all of {every:?}");

    // iptables: the node namespace DNATs the same ClusterIP.
    let mut ipt = IptablesProxier::start(
        Iptables::detect(Some(topo.node.name()))?,
        IptablesConfig::default(),
    )?;
    let reached = ipt
        .sync(&desired)
        .map_err(anyhow::Error::from)
        .and_then(|_| backends_reached(&mut topo, ip, 80));
    ipt.cleanup()?;
    let reached = reached?;
    ensure!(reached == every, "iptables: {ip}:80 reaches {reached:?}, not all of {every:?}");
    println!("ClusterIP {ip} allocated by Skiff routes to {every:?} in eBPF and iptables mode");
    Ok(())
}
