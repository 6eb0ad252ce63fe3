//! `ServiceTracker`: the current Services and EndpointSlices, turned into [`DesiredState`].
//!
//! Pure: objects in, desired state out. Services without a ClusterIP (headless) and IPv6
//! addresses are skipped; endpoints are matched to Service ports by port name and protocol, as
//! kube-proxy does.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{DesiredState, Endpoint, Protocol, ServicePort, ServicePortName};

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Service annotation choosing the per-packet selection: `maglev` or `random` (default).
pub const LB_ALGORITHM_ANNOTATION: &str = "service.skiff.io/lb-algorithm";
/// Default `ClientIP` affinity timeout (3 h), as in Kubernetes.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

type ObjKey = (String, String);

/// Services and EndpointSlices by namespace and name.
#[derive(Debug, Clone, Default)]
pub struct ServiceTracker {
    node: String,
    services: BTreeMap<ObjKey, Service>,
    slices: BTreeMap<ObjKey, EndpointSlice>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjKey {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        meta.name.clone().unwrap_or_default(),
    )
}

impl ServiceTracker {
    /// A tracker for the agent on `node` (endpoints with that `nodeName` are local).
    pub fn new(node: &str) -> Self {
        ServiceTracker { node: node.to_owned(), ..Self::default() }
    }

    pub fn upsert_service(&mut self, svc: Service) {
        self.services.insert(key_of(&svc.metadata), svc);
    }
    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        self.services.remove(&(namespace.to_owned(), name.to_owned()));
    }
    pub fn upsert_slice(&mut self, slice: EndpointSlice) {
        self.slices.insert(key_of(&slice.metadata), slice);
    }
    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        self.slices.remove(&(namespace.to_owned(), name.to_owned()));
    }
    /// Forgets everything (before loading a complete new snapshot).
    pub fn clear(&mut self) {
        self.services.clear();
        self.slices.clear();
    }

    /// The desired data plane for the objects held now.
    #[expect(
        clippy::too_many_lines,
        reason = "one pass over Service ports, field by field as in kube-proxy"
    )]
    pub fn desired(&self) -> DesiredState {
        let mut out = DesiredState::new();
        // Slices grouped by (namespace, service name).
        let mut by_service: BTreeMap<ObjKey, Vec<&EndpointSlice>> = BTreeMap::new();
        for ((ns, _), slice) in &self.slices {
            if slice.address_type != "IPv4" {
                continue;
            }
            let labels = slice.metadata.labels.as_ref();
            if let Some(svc) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) {
                by_service.entry((ns.clone(), svc.clone())).or_default().push(slice);
            }
        }
        for ((ns, name), svc) in &self.services {
            let Some(spec) = &svc.spec else { continue };
            let cluster_ip = spec
                .cluster_ip
                .as_deref()
                .filter(|ip| *ip != "None")
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
            let Some(cluster_ip) = cluster_ip else { continue };
            let external_ips: Vec<Ipv4Addr> =
                spec.external_ips.iter().flatten().filter_map(|ip| ip.parse().ok()).collect();
            let affinity_timeout_s =
                (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
                    spec.session_affinity_config
                        .as_ref()
                        .and_then(|c| c.client_ip.as_ref())
                        .and_then(|c| c.timeout_seconds)
                        .and_then(|t| u32::try_from(t).ok())
                        .filter(|t| *t > 0)
                        .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S)
                });
            let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
            let maglev = svc
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(LB_ALGORITHM_ANNOTATION))
                .is_some_and(|v| v == "maglev");
            let slices = by_service.get(&(ns.clone(), name.clone()));
            for port in spec.ports.iter().flatten() {
                let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
                    "TCP" => Protocol::Tcp,
                    "UDP" => Protocol::Udp,
                    _ => continue,
                };
                let Ok(port_num) = u16::try_from(port.port) else { continue };
                let port_name = port.name.clone().unwrap_or_default();
                let mut endpoints = Vec::new();
                for slice in slices.into_iter().flatten() {
                    let matching = slice.ports.iter().flatten().find(|p| {
                        p.name.clone().unwrap_or_default() == port_name
                            && p.protocol.as_deref().unwrap_or("TCP") == protocol.as_str()
                    });
                    let Some(target) =
                        matching.and_then(|p| p.port).and_then(|p| u16::try_from(p).ok())
                    else {
                        continue;
                    };
                    for ep in &slice.endpoints {
                        let cond = ep.conditions.clone().unwrap_or_default();
                        // Unset `ready` means ready; unset `serving` follows `ready`.
                        let ready = cond.ready.unwrap_or(true);
                        let terminating = cond.terminating.unwrap_or(false);
                        let serving = cond.serving.unwrap_or(ready);
                        let local = ep.node_name.as_deref() == Some(self.node.as_str());
                        for addr in &ep.addresses {
                            if let Ok(ip) = addr.parse::<Ipv4Addr>() {
                                endpoints.push(Endpoint {
                                    ip,
                                    port: target,
                                    ready,
                                    serving,
                                    terminating,
                                    local,
                                });
                            }
                        }
                    }
                }
                endpoints.sort();
                endpoints.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
                let name =
                    ServicePortName { namespace: ns.clone(), name: name.clone(), port: port_name };
                let sp = ServicePort {
                    name: name.clone(),
                    protocol,
                    port: port_num,
                    cluster_ip: Some(cluster_ip),
                    external_ips: external_ips.clone(),
                    node_port: port
                        .node_port
                        .and_then(|p| u16::try_from(p).ok())
                        .filter(|p| *p != 0),
                    affinity_timeout_s,
                    external_local,
                    health_check_node_port: spec
                        .health_check_node_port
                        .and_then(|p| u16::try_from(p).ok())
                        .filter(|p| *p != 0),
                    maglev,
                    endpoints,
                };
                out.insert((name, protocol), sp);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(json: &str) -> ServiceTracker {
        let mut t = ServiceTracker::new("node-a");
        for obj in super::super::source::parse_objects(json).unwrap() {
            match obj {
                super::super::source::Object::Service(s) => t.upsert_service(*s),
                super::super::source::Object::EndpointSlice(s) => t.upsert_slice(*s),
            }
        }
        t
    }

    #[test]
    fn services_and_slices_become_desired_state() {
        let t = objects(
            r#"{"kind":"List","apiVersion":"v1","items":[
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"prod"},
             "spec":{"clusterIP":"10.96.0.10","externalIPs":["192.0.2.7"],"sessionAffinity":"ClientIP",
                     "ports":[{"name":"http","port":80,"protocol":"TCP","nodePort":30080},
                              {"name":"dns","port":53,"protocol":"UDP"}]}},
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"headless","namespace":"prod"},
             "spec":{"clusterIP":"None","ports":[{"port":80}]}},
            {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
             "metadata":{"name":"web-abc","namespace":"prod","labels":{"kubernetes.io/service-name":"web"}},
             "addressType":"IPv4",
             "ports":[{"name":"http","port":8080,"protocol":"TCP"}],
             "endpoints":[{"addresses":["10.244.0.3"],"nodeName":"node-a"},
                          {"addresses":["10.244.1.3"],"conditions":{"ready":false,"serving":true,"terminating":true}},
                          {"addresses":["10.244.1.4"],"conditions":{"ready":false}}]}
            ]}"#,
        );
        let d = t.desired();
        assert_eq!(d.len(), 2, "two ports of web; headless skipped: {d:#?}");
        let http = d.values().find(|s| s.name.port == "http").unwrap();
        assert_eq!(http.cluster_ip, Some(Ipv4Addr::new(10, 96, 0, 10)));
        assert_eq!(http.node_port, Some(30080));
        assert_eq!(http.affinity_timeout_s, Some(DEFAULT_AFFINITY_TIMEOUT_S));
        assert_eq!(
            http.frontends(),
            vec![Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(192, 0, 2, 7)]
        );
        let usable: Vec<String> = http.usable_endpoints().iter().map(ToString::to_string).collect();
        assert_eq!(usable, ["10.244.0.3:8080"]);
        assert!(http.endpoints[0].local);
        let draining: Vec<String> =
            http.draining_endpoints().iter().map(ToString::to_string).collect();
        assert_eq!(draining, ["10.244.1.3:8080"]);
        let dns = d.values().find(|s| s.name.port == "dns").unwrap();
        assert!(dns.endpoints.is_empty(), "no slice port named dns");
    }

    #[test]
    fn terminating_endpoints_serve_only_when_nothing_is_ready() {
        let t = objects(
            r#"[{"apiVersion":"v1","kind":"Service","metadata":{"name":"s","namespace":"d"},
                 "spec":{"clusterIP":"10.96.0.1","ports":[{"port":80}]}},
                {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
                 "metadata":{"name":"s-1","namespace":"d","labels":{"kubernetes.io/service-name":"s"}},
                 "addressType":"IPv4","ports":[{"port":80}],
                 "endpoints":[{"addresses":["10.0.0.1"],"conditions":{"ready":false,"serving":true,"terminating":true}},
                              {"addresses":["10.0.0.2"],"conditions":{"ready":false,"serving":false,"terminating":true}}]}]"#,
        );
        let d = t.desired();
        let s = d.values().next().unwrap();
        let usable: Vec<String> = s.usable_endpoints().iter().map(ToString::to_string).collect();
        assert_eq!(usable, ["10.0.0.1:80"]);
        let draining: Vec<String> =
            s.draining_endpoints().iter().map(ToString::to_string).collect();
        assert_eq!(draining, ["10.0.0.2:80"]);
    }
}
