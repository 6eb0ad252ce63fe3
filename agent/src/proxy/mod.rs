//! The Service proxy: Services + EndpointSlices in, a programmed data plane out.
//!
//! [`tracker::ServiceTracker`] turns Kubernetes objects into [`DesiredState`] (one
//! [`ServicePort`] per Service port); a [`Proxier`] makes the kernel match it. Two proxiers
//! exist: [`ebpf::EbpfProxier`] (socket-level load balancing with cgroup `sock_addr` programs and
//! maps) and [`iptables::IptablesProxier`] (kube-proxy's rule structure through
//! `iptables-restore`). Objects come from a [`source`] (a file or stdin today, the API server
//! later). [`maglev`] builds consistent-hashing lookup tables.

pub mod ebpf;
pub mod iptables;
pub mod maglev;
pub mod source;
pub mod standalone;
pub mod tracker;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

/// L4 protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The name Kubernetes uses (`TCP`, `UDP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
    /// The name iptables uses (`tcp`, `udp`).
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `namespace/name:port-name`, as kube-proxy names a Service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// The port's name; empty for a Service's only, unnamed port.
    pub port: String,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
        }
    }
}

/// One endpoint address of a Service port, with its EndpointSlice conditions.
#[expect(
    clippy::struct_excessive_bools,
    reason = "mirrors the EndpointSlice conditions one to one"
)]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// True when the endpoint runs on this node (for `externalTrafficPolicy: Local`).
    pub local: bool,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// Everything a proxier needs to program one Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: ServicePortName,
    pub protocol: Protocol,
    pub port: u16,
    /// `None` for headless Services (which the proxy ignores).
    pub cluster_ip: Option<Ipv4Addr>,
    pub external_ips: Vec<Ipv4Addr>,
    pub node_port: Option<u16>,
    /// `ClientIP` session affinity timeout in seconds.
    pub affinity_timeout_s: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    pub health_check_node_port: Option<u16>,
    /// Maglev instead of random selection on the per-packet (tc NodePort) path, from the
    /// annotation `service.skiff.io/lb-algorithm: maglev`.
    pub maglev: bool,
    /// Sorted by address and port.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// Endpoints that receive new connections: the ready ones, or, when none is ready, those
    /// still serving while terminating (KEP-1669).
    pub fn usable_endpoints(&self) -> Vec<&Endpoint> {
        let ready: Vec<&Endpoint> = self.endpoints.iter().filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        self.endpoints.iter().filter(|e| e.serving && e.terminating).collect()
    }

    /// Endpoints that get no new connections but whose existing connections must continue.
    pub fn draining_endpoints(&self) -> Vec<&Endpoint> {
        let usable = self.usable_endpoints();
        self.endpoints.iter().filter(|e| e.terminating && !usable.contains(e)).collect()
    }

    /// Frontend addresses (ClusterIP first, then external IPs).
    pub fn frontends(&self) -> Vec<Ipv4Addr> {
        self.cluster_ip.into_iter().chain(self.external_ips.iter().copied()).collect()
    }
}

/// Key of a Service port in [`DesiredState`].
pub type ServicePortKey = (ServicePortName, Protocol);

/// The whole desired data plane.
pub type DesiredState = BTreeMap<ServicePortKey, ServicePort>;

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Service ports whose kernel state was written.
    pub changed: usize,
    /// Service ports removed.
    pub removed: usize,
    /// Service ports that could not be programmed (e.g. a full map), with the reason. The rest
    /// of the sync still took effect.
    pub failed: Vec<(ServicePortName, String)>,
}

/// Why a sync failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Lb(#[from] crate::kernel::bpf_lb::LbError),
    #[error(transparent)]
    Iptables(#[from] crate::kernel::iptables::IptablesError),
    #[error("service source: {0}")]
    Source(#[from] source::SourceError),
}

/// A data-plane backend: makes the kernel match the desired state.
///
/// Implementations keep what they programmed last and write only differences; the first sync
/// after a restart compares against what the kernel already holds.
pub trait Proxier {
    /// `ebpf` or `iptables`.
    fn mode(&self) -> &'static str;
    /// Programs `desired`. Per-service failures are reported in [`SyncReport::failed`].
    fn sync(&mut self, desired: &DesiredState) -> Result<SyncReport, ProxyError>;
    /// Programs `desired` when only the Service ports in `changed` can differ from the last
    /// sync (added, removed or changed; [`tracker::ServiceTracker::update`] returns them), so a
    /// proxier can work in proportion to the change. The default compares everything.
    fn sync_changed(
        &mut self,
        desired: &DesiredState,
        changed: &BTreeSet<ServicePortKey>,
    ) -> Result<SyncReport, ProxyError> {
        let _ = changed;
        self.sync(desired)
    }
    /// Prometheus text exposition of this proxier's metrics.
    fn metrics(&self) -> String;
}
