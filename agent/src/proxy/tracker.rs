//! `ServiceTracker`: the current Services and EndpointSlices, turned into [`DesiredState`].
//!
//! Pure: objects in, desired state out. Services without a ClusterIP (headless) and IPv6
//! addresses are skipped; endpoints are matched to Service ports by port name and protocol, as
//! kube-proxy does.
//!
//! Incremental: every change marks its Service dirty (a slice change marks the Service its
//! `kubernetes.io/service-name` label names, before and after the change), and [`update`]
//! re-derives only dirty Services, so one endpoint change costs the same at 10 or 10,000
//! Services. It returns the Service ports that may have changed, which
//! [`Proxier::sync_changed`](super::Proxier::sync_changed) takes.
//!
//! [`update`]: ServiceTracker::update

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::source::Object;
use super::{DesiredState, Endpoint, Protocol, ServicePort, ServicePortKey, ServicePortName};

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Service annotation choosing the per-packet selection: `maglev` or `random` (default).
pub const LB_ALGORITHM_ANNOTATION: &str = "service.skiff.io/lb-algorithm";
/// Default `ClientIP` affinity timeout (3 h), as in Kubernetes.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

type ObjKey = (String, String);

/// Services and EndpointSlices by namespace and name, and the desired state derived from them.
#[derive(Debug, Clone, Default)]
pub struct ServiceTracker {
    node: String,
    services: BTreeMap<ObjKey, Service>,
    slices: BTreeMap<ObjKey, EndpointSlice>,
    /// IPv4 slices per Service they belong to, and each such slice's Service.
    slices_of: BTreeMap<ObjKey, BTreeSet<ObjKey>>,
    owner_of: BTreeMap<ObjKey, ObjKey>,
    /// Derived from the objects, except for the Services in `dirty`.
    state: DesiredState,
    /// The keys each Service contributed to `state`.
    ports_of: BTreeMap<ObjKey, Vec<ServicePortKey>>,
    dirty: BTreeSet<ObjKey>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjKey {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The Service an IPv4 slice belongs to (by its label); `None` for other slices.
fn owner(key: &ObjKey, slice: &EndpointSlice) -> Option<ObjKey> {
    if slice.address_type != "IPv4" {
        return None;
    }
    let labels = slice.metadata.labels.as_ref()?;
    labels.get(SERVICE_NAME_LABEL).map(|svc| (key.0.clone(), svc.clone()))
}

impl ServiceTracker {
    /// A tracker for the agent on `node` (endpoints with that `nodeName` are local).
    pub fn new(node: &str) -> Self {
        ServiceTracker { node: node.to_owned(), ..Self::default() }
    }

    pub fn upsert_service(&mut self, svc: Service) {
        let key = key_of(&svc.metadata);
        self.dirty.insert(key.clone());
        self.services.insert(key, svc);
    }
    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        self.services.remove(&key);
        self.dirty.insert(key);
    }
    pub fn upsert_slice(&mut self, slice: EndpointSlice) {
        let key = key_of(&slice.metadata);
        self.unlink_slice(&key);
        if let Some(svc) = owner(&key, &slice) {
            self.slices_of.entry(svc.clone()).or_default().insert(key.clone());
            self.owner_of.insert(key.clone(), svc.clone());
            self.dirty.insert(svc);
        }
        self.slices.insert(key, slice);
    }
    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        self.unlink_slice(&key);
        self.slices.remove(&key);
    }
    /// Forgets everything (before loading a complete new snapshot).
    pub fn clear(&mut self) {
        let services: Vec<ObjKey> = self.services.keys().cloned().collect();
        self.dirty.extend(services);
        self.dirty.extend(self.ports_of.keys().cloned());
        self.services.clear();
        self.slices.clear();
        self.slices_of.clear();
        self.owner_of.clear();
    }

    /// Makes the held objects exactly `objects` (a complete snapshot, e.g. a re-read file):
    /// only objects that differ from what is held mark their Service dirty.
    pub fn replace_all(&mut self, objects: Vec<Object>) {
        let mut services = BTreeMap::new();
        let mut slices = BTreeMap::new();
        for obj in objects {
            match obj {
                Object::Service(s) => {
                    services.insert(key_of(&s.metadata), *s);
                }
                Object::EndpointSlice(s) => {
                    slices.insert(key_of(&s.metadata), *s);
                }
            }
        }
        let gone: Vec<ObjKey> =
            self.services.keys().filter(|k| !services.contains_key(*k)).cloned().collect();
        for (ns, name) in gone {
            self.delete_service(&ns, &name);
        }
        let gone: Vec<ObjKey> =
            self.slices.keys().filter(|k| !slices.contains_key(*k)).cloned().collect();
        for (ns, name) in gone {
            self.delete_slice(&ns, &name);
        }
        for (k, s) in services {
            if self.services.get(&k) != Some(&s) {
                self.upsert_service(s);
            }
        }
        for (k, s) in slices {
            if self.slices.get(&k) != Some(&s) {
                self.upsert_slice(s);
            }
        }
    }

    fn unlink_slice(&mut self, key: &ObjKey) {
        if let Some(svc) = self.owner_of.remove(key) {
            if let Some(set) = self.slices_of.get_mut(&svc) {
                set.remove(key);
                if set.is_empty() {
                    self.slices_of.remove(&svc);
                }
            }
            self.dirty.insert(svc);
        }
    }

    /// Re-derives the Services changed since the last call and returns the Service ports that
    /// were added, removed or may have changed (a superset: unchanged ports of a dirty Service
    /// are included; a proxier compares them).
    pub fn update(&mut self) -> BTreeSet<ServicePortKey> {
        let mut changed = BTreeSet::new();
        for key in std::mem::take(&mut self.dirty) {
            for k in self.ports_of.remove(&key).into_iter().flatten() {
                self.state.remove(&k);
                changed.insert(k);
            }
            let ports = self.derive(&key);
            if ports.is_empty() {
                continue;
            }
            let mut keys = Vec::with_capacity(ports.len());
            for sp in ports {
                let k = (sp.name.clone(), sp.protocol);
                changed.insert(k.clone());
                keys.push(k.clone());
                self.state.insert(k, sp);
            }
            self.ports_of.insert(key, keys);
        }
        changed
    }

    /// The desired state as of the last [`update`](Self::update).
    pub fn state(&self) -> &DesiredState {
        &self.state
    }

    /// An EndpointSlice held now.
    pub fn slice(&self, namespace: &str, name: &str) -> Option<&EndpointSlice> {
        self.slices.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Every EndpointSlice held now, by namespace and name.
    pub fn slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.slices.values()
    }

    /// The desired data plane for the objects held now, derived from scratch (independent of
    /// [`update`](Self::update)).
    pub fn desired(&self) -> DesiredState {
        let mut out = DesiredState::new();
        for key in self.services.keys() {
            for sp in self.derive(key) {
                out.insert((sp.name.clone(), sp.protocol), sp);
            }
        }
        out
    }

    /// The Service ports of one Service (none when it is missing or headless).
    #[expect(
        clippy::too_many_lines,
        reason = "one pass over Service ports, field by field as in kube-proxy"
    )]
    fn derive(&self, key: &ObjKey) -> Vec<ServicePort> {
        let mut out = Vec::new();
        let Some(svc) = self.services.get(key) else { return out };
        let (ns, name) = key;
        let slices: Vec<&EndpointSlice> = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
            .collect();
        {
            let Some(spec) = &svc.spec else { return out };
            let cluster_ip = spec
                .cluster_ip
                .as_deref()
                .filter(|ip| *ip != "None")
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
            let Some(cluster_ip) = cluster_ip else { return out };
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
            for port in spec.ports.iter().flatten() {
                let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
                    "TCP" => Protocol::Tcp,
                    "UDP" => Protocol::Udp,
                    _ => continue,
                };
                let Ok(port_num) = u16::try_from(port.port) else { continue };
                let port_name = port.name.clone().unwrap_or_default();
                let mut endpoints = Vec::new();
                for slice in &slices {
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
                out.push(sp);
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
                Object::Service(s) => t.upsert_service(*s),
                Object::EndpointSlice(s) => t.upsert_slice(*s),
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

    fn parse(json: &str) -> Vec<Object> {
        super::super::source::parse_objects(json).unwrap()
    }

    fn service(name: &str, ip: &str) -> String {
        format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}","namespace":"d"}},
                "spec":{{"clusterIP":"{ip}","ports":[{{"port":80}},{{"name":"u","port":53,"protocol":"UDP"}}]}}}}"#
        )
    }

    fn slice(name: &str, service: &str, ips: &[&str]) -> String {
        let eps: Vec<String> =
            ips.iter().map(|ip| format!(r#"{{"addresses":["{ip}"]}}"#)).collect();
        format!(
            r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
                "metadata":{{"name":"{name}","namespace":"d","labels":{{"kubernetes.io/service-name":"{service}"}}}},
                "addressType":"IPv4","ports":[{{"port":8080}}],"endpoints":[{}]}}"#,
            eps.join(",")
        )
    }

    fn apply(t: &mut ServiceTracker, json: &str) {
        for obj in parse(json) {
            match obj {
                Object::Service(s) => t.upsert_service(*s),
                Object::EndpointSlice(s) => t.upsert_slice(*s),
            }
        }
    }

    fn names(changed: &BTreeSet<ServicePortKey>) -> Vec<String> {
        changed.iter().map(|(n, p)| format!("{n}/{}", p.as_str())).collect()
    }

    /// After every change, the incrementally kept state equals a derivation from scratch, and
    /// `update` names only the ports of the Services the change touched.
    #[test]
    fn updates_rederive_only_the_services_that_changed() {
        let mut t = ServiceTracker::new("node-a");
        let check = |t: &mut ServiceTracker, want: &[&str]| {
            let changed = t.update();
            assert_eq!(names(&changed), want);
            assert_eq!(t.state(), &t.desired());
        };
        apply(
            &mut t,
            &format!(
                "[{},{},{}]",
                service("a", "10.96.0.1"),
                service("b", "10.96.0.2"),
                slice("a-1", "a", &["10.0.0.1", "10.0.0.2"])
            ),
        );
        check(&mut t, &["d/a/TCP", "d/a:u/UDP", "d/b/TCP", "d/b:u/UDP"]);
        check(&mut t, &[]);
        // One endpoint fewer in a's slice: only a's ports.
        apply(&mut t, &slice("a-1", "a", &["10.0.0.1"]));
        check(&mut t, &["d/a/TCP", "d/a:u/UDP"]);
        assert_eq!(t.state().values().find(|s| s.name.name == "a").unwrap().endpoints.len(), 1);
        // The slice moves to b (label change): both Services.
        apply(&mut t, &slice("a-1", "b", &["10.0.0.1"]));
        check(&mut t, &["d/a/TCP", "d/a:u/UDP", "d/b/TCP", "d/b:u/UDP"]);
        // A second slice for b, then the first one deleted.
        apply(&mut t, &slice("b-2", "b", &["10.0.0.9"]));
        check(&mut t, &["d/b/TCP", "d/b:u/UDP"]);
        t.delete_slice("d", "a-1");
        check(&mut t, &["d/b/TCP", "d/b:u/UDP"]);
        // A Service deleted; a slice whose Service does not exist (yet) changes nothing.
        t.delete_service("d", "a");
        check(&mut t, &["d/a/TCP", "d/a:u/UDP"]);
        apply(&mut t, &slice("c-1", "c", &["10.0.0.3"]));
        check(&mut t, &[]);
        apply(&mut t, &service("c", "10.96.0.3"));
        check(&mut t, &["d/c/TCP", "d/c:u/UDP"]);
        // A full snapshot that differs from the held objects in b's slice only.
        let snapshot = format!(
            "[{},{},{},{}]",
            service("b", "10.96.0.2"),
            service("c", "10.96.0.3"),
            slice("b-2", "b", &["10.0.0.8"]),
            slice("c-1", "c", &["10.0.0.3"])
        );
        t.replace_all(parse(&snapshot));
        check(&mut t, &["d/b/TCP", "d/b:u/UDP"]);
        t.replace_all(parse(&snapshot));
        check(&mut t, &[]);
        t.clear();
        check(&mut t, &["d/b/TCP", "d/b:u/UDP", "d/c/TCP", "d/c:u/UDP"]);
        assert!(t.state().is_empty());
    }
}
