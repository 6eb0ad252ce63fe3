//! Running the proxy on its own (`skiff-agent proxy`): Services and EndpointSlices from a file,
//! one sync (`--once`) or a loop that re-syncs when the file changes, `/healthz` and `/metrics`
//! on a small HTTP listener (kube-proxy's port 10256), the health-check node ports of
//! `externalTrafficPolicy: Local` Services, periodic conntrack-style GC of the
//! socket reverse-NAT map, program events into `tracing`.
//!
//! SIGTERM or SIGINT ends the loop (exit 0); maps and links stay pinned, so the data plane
//! keeps working and the next start adopts it.
//!
//! Also the measurement hooks the data-plane benchmark drives: `--churn N` toggles one endpoint
//! N times after the first sync and reports each sync's latency and the process CPU time.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::kernel::bpf_lb::{self, LbMapSizes};
use crate::kernel::iptables::{Iptables, IptablesBackend};

use super::ebpf::{EbpfConfig, EbpfProxier};
use super::iptables::{IptablesConfig, IptablesProxier};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::tracker::ServiceTracker;
use super::{DesiredState, Proxier, ProxyError, source};

/// Which data plane to program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Ebpf,
    Iptables,
}

/// Everything `skiff-agent proxy` needs.
#[derive(Debug, Clone)]
pub struct StandaloneConfig {
    pub mode: Mode,
    pub source: PathBuf,
    pub node: String,
    pub pin_root: PathBuf,
    pub cgroup: PathBuf,
    pub map_sizes: LbMapSizes,
    /// Named network namespace for iptables rules (`None`: the host's).
    pub netns: Option<String>,
    /// `None`: whatever `iptables --version` reports.
    pub iptables_backend: Option<IptablesBackend>,
    pub cluster_cidr: Option<String>,
    /// Restore whole tables (flushing) instead of `--noflush` chain updates.
    pub iptables_full_tables: bool,
    pub once: bool,
    pub churn: usize,
    pub churn_interval: Duration,
    pub healthz: Option<SocketAddr>,
    pub gc_interval: Duration,
    /// eBPF mode: node interfaces to attach the tc NodePort programs to, each with its address
    /// (a NodePort address, and the SNAT source of flows that leave by it for another node).
    pub nodeport: Vec<(String, std::net::Ipv4Addr)>,
    /// NodePort conntrack entries idle this long are removed by the GC.
    pub conntrack_idle: Duration,
}

/// What `--once` reports (printed as JSON by the binary).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    pub mode: &'static str,
    pub service_ports: usize,
    pub full_sync_seconds: f64,
    pub change_sync_seconds: Vec<f64>,
    /// User + system CPU of this process and its children (iptables-restore) during the churn.
    pub churn_cpu_seconds: f64,
    pub churn_wall_seconds: f64,
    pub failed: usize,
}

enum Any {
    Ebpf(Box<EbpfProxier>),
    Iptables(IptablesProxier),
}

impl Any {
    fn get(&mut self) -> &mut dyn Proxier {
        match self {
            Any::Ebpf(p) => p.as_mut(),
            Any::Iptables(p) => p,
        }
    }
}

fn start(cfg: &StandaloneConfig) -> Result<Any, ProxyError> {
    Ok(match cfg.mode {
        Mode::Ebpf => Any::Ebpf(Box::new(EbpfProxier::start(&EbpfConfig {
            pin_root: cfg.pin_root.clone(),
            cgroup: cfg.cgroup.clone(),
            map_sizes: cfg.map_sizes,
            node_addresses: cfg.nodeport.iter().map(|(_, ip)| *ip).collect(),
        })?)),
        Mode::Iptables => {
            let ipt = match cfg.iptables_backend {
                Some(b) => Iptables::new(b, cfg.netns.as_deref()),
                None => Iptables::detect(cfg.netns.as_deref())?,
            };
            let icfg = IptablesConfig {
                cluster_cidr: cfg.cluster_cidr.clone(),
                full_tables: cfg.iptables_full_tables,
            };
            Any::Iptables(IptablesProxier::start(ipt, icfg)?)
        }
    })
}

/// Removes everything a proxy of `cfg.mode` left behind (pins and links, or chains).
pub fn cleanup(cfg: &StandaloneConfig) -> Result<(), ProxyError> {
    match cfg.mode {
        Mode::Ebpf => {
            let pins = cfg.pin_root.join(format!("v{}", bpf_lb::LB_LAYOUT)).join("links");
            if pins.exists() {
                std::fs::remove_dir_all(&pins).map_err(|source| bpf_lb::LbError::Io {
                    op: "remove link pins",
                    path: pins.clone(),
                    source,
                })?;
            }
            bpf_lb::remove_pins(&cfg.pin_root)?;
        }
        Mode::Iptables => {
            let ipt = match cfg.iptables_backend {
                Some(b) => Iptables::new(b, cfg.netns.as_deref()),
                None => Iptables::detect(cfg.netns.as_deref())?,
            };
            IptablesProxier::start(ipt, IptablesConfig::default())?.cleanup()?;
        }
    }
    Ok(())
}

fn cpu_seconds() -> f64 {
    let tv = |t: nix::sys::time::TimeVal| {
        #[expect(clippy::cast_precision_loss, reason = "seconds of CPU time fit an f64")]
        let s = t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        s
    };
    let mut total = 0.0;
    for who in
        [nix::sys::resource::UsageWho::RUSAGE_SELF, nix::sys::resource::UsageWho::RUSAGE_CHILDREN]
    {
        if let Ok(u) = nix::sys::resource::getrusage(who) {
            total += tv(u.user_time()) + tv(u.system_time());
        }
    }
    total
}

/// The EndpointSlice the churn toggles: the first (by namespace and name) with more than one
/// endpoint, and a copy of it without its last endpoint.
fn churn_slices(tracker: &ServiceTracker) -> Option<(EndpointSlice, EndpointSlice)> {
    let full = tracker.slices().find(|s| s.endpoints.len() > 1)?.clone();
    let mut less = full.clone();
    less.endpoints.pop();
    Some((full, less))
}

/// Blocks SIGTERM and SIGINT for this thread (and the threads it starts) and returns a
/// non-blocking signalfd that reports them.
fn stop_signals() -> Result<SignalFd, ProxyError> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    let io = |e: nix::Error| source::SourceError::Io {
        what: "signal handling".into(),
        source: std::io::Error::from_raw_os_error(e as i32),
    };
    mask.thread_block().map_err(io)?;
    Ok(SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK).map_err(io)?)
}

/// `--churn`: each step changes one EndpointSlice (one endpoint removed, then back) and times
/// the whole path an API event takes: tracker update, then the proxier's sync of what changed.
fn churn(
    tracker: &mut ServiceTracker,
    proxier: &mut dyn Proxier,
    cfg: &StandaloneConfig,
) -> Result<Vec<f64>, ProxyError> {
    let mut seconds = Vec::new();
    let Some((full, less)) = churn_slices(tracker) else { return Ok(seconds) };
    for step in 1..=cfg.churn {
        let next = Instant::now() + cfg.churn_interval;
        let slice = if step % 2 == 1 { less.clone() } else { full.clone() };
        let t = Instant::now();
        tracker.upsert_slice(slice);
        let ports = tracker.update();
        proxier.sync_changed(tracker.state(), &ports)?;
        seconds.push(t.elapsed().as_secs_f64());
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(seconds)
}

/// Runs the proxy as configured. With `once`, returns after the first sync (and the churn).
pub fn run(cfg: &StandaloneConfig) -> Result<Option<RunReport>, ProxyError> {
    let mut tracker = source::load(&cfg.source, &cfg.node)?;
    tracker.update();
    let mut proxier = start(cfg)?;
    let t0 = Instant::now();
    let first = proxier.get().sync(tracker.state())?;
    let full = t0.elapsed().as_secs_f64();
    let service_ports = tracker.state().len();
    tracing::info!(
        mode = proxier.get().mode(),
        service_ports,
        seconds = full,
        failed = first.failed.len(),
        "synced"
    );
    if cfg.once {
        if cfg.mode == Mode::Ebpf {
            EbpfProxier::remove_other_layouts(&cfg.pin_root)?;
        }
        let (cpu0, w0) = (cpu_seconds(), Instant::now());
        let changes = churn(&mut tracker, proxier.get(), cfg)?;
        let report = RunReport {
            mode: proxier.get().mode(),
            service_ports,
            full_sync_seconds: full,
            change_sync_seconds: changes,
            churn_cpu_seconds: cpu_seconds() - cpu0,
            churn_wall_seconds: w0.elapsed().as_secs_f64(),
            failed: first.failed.len(),
        };
        return Ok(Some(report));
    }
    // SIGTERM/SIGINT end the loop cleanly: blocked here (threads spawned below inherit the
    // mask) and read from a signalfd once per round.
    let signals = stop_signals()?;
    let state = Arc::new(Mutex::new((SystemTime::now(), proxier.get().metrics())));
    if let Some(addr) = cfg.healthz {
        let listener = TcpListener::bind(addr)
            .map_err(|source| source::SourceError::Io { what: format!("bind {addr}"), source })?;
        serve_health(listener, Arc::clone(&state));
    }
    // The tc programs share the socket LB's pinned maps; their links live as long as this loop.
    let mut nodeport = Vec::new();
    if cfg.mode == Mode::Ebpf {
        for (iface, ip) in &cfg.nodeport {
            nodeport.push(bpf_lb::TcNodePort::attach(&cfg.pin_root, cfg.map_sizes, *ip, iface)?);
        }
        // Our maps are filled and every program is attached: an older layout's programs go.
        EbpfProxier::remove_other_layouts(&cfg.pin_root)?;
    }
    let mut health_checks = HealthCheckServer::new(None);
    health_checks.update(tracker.state());
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = mtime(&cfg.source);
    let mut last_gc = Instant::now();
    let mut conntrack = ConntrackStats::default();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(Some(info)) = signals.read_signal() {
            tracing::info!(
                signal = info.ssi_signo,
                "stopping; the data plane stays programmed (maps and links are pinned)"
            );
            return Ok(None);
        }
        let now = mtime(&cfg.source);
        if now != seen {
            seen = now;
            match source::read(&cfg.source) {
                Ok(objects) => {
                    // Only the objects that differ from what the tracker holds are re-derived.
                    tracker.replace_all(objects);
                    let ports = tracker.update();
                    let report = proxier.get().sync_changed(tracker.state(), &ports)?;
                    health_checks.update(tracker.state());
                    tracing::info!(
                        changed = report.changed,
                        removed = report.removed,
                        failed = report.failed.len(),
                        "synced"
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the service source; keeping the current data plane");
                }
            }
        }
        if let Any::Ebpf(p) = &mut proxier {
            p.poll_events();
            if last_gc.elapsed() >= cfg.gc_interval {
                last_gc = Instant::now();
                gc_tick(p, nodeport.first_mut(), cfg, &mut conntrack);
            }
        }
        if let Ok(mut s) = state.lock() {
            let mut metrics = proxier.get().metrics();
            if !nodeport.is_empty() {
                metrics.push_str(&conntrack.metrics());
            }
            *s = (SystemTime::now(), metrics);
        }
    }
}

/// The NodePort conntrack map as of the last GC pass.
#[derive(Debug, Default)]
struct ConntrackStats {
    /// Entries left after the last pass (both directions and SNAT entries of every flow).
    entries: usize,
    removed_total: u64,
}

impl ConntrackStats {
    fn metrics(&self) -> String {
        format!(
            "# HELP skiff_proxy_conntrack_entries NodePort conntrack entries after the last GC pass (map size {}).\n# TYPE skiff_proxy_conntrack_entries gauge\nskiff_proxy_conntrack_entries {}\n\
             # HELP skiff_proxy_conntrack_gc_removed_total Idle NodePort conntrack entries removed.\n# TYPE skiff_proxy_conntrack_gc_removed_total counter\nskiff_proxy_conntrack_gc_removed_total {}\n",
            bpf_lb::CT4_MAX_ENTRIES,
            self.entries,
            self.removed_total
        )
    }
}

/// One GC pass: stale socket reverse-NAT and affinity entries, idle NodePort flows (every tc
/// attachment shares one conntrack map, so one pass covers all).
fn gc_tick(
    p: &mut EbpfProxier,
    nodeport: Option<&mut bpf_lb::TcNodePort>,
    cfg: &StandaloneConfig,
    conntrack: &mut ConntrackStats,
) {
    match p.gc() {
        Ok(n) if n > 0 => {
            tracing::info!(removed = n, "garbage-collected socket reverse-NAT entries");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "gc failed"),
    }
    let Some(np) = nodeport else { return };
    match np.gc(cfg.conntrack_idle) {
        Ok(n) => {
            if n > 0 {
                tracing::info!(removed = n, "garbage-collected idle NodePort flows");
            }
            conntrack.removed_total += n as u64;
        }
        Err(e) => tracing::warn!(error = %e, "conntrack gc failed"),
    }
    match np.conntrack_entries() {
        Ok(n) => conntrack.entries = n,
        Err(e) => tracing::warn!(error = %e, "cannot count conntrack entries"),
    }
}

/// `/healthz` (kube-proxy's JSON: lastUpdated, currentTime; 503 when the loop stalls) and
/// `/metrics` on a plain HTTP/1.1 listener thread.
fn serve_health(listener: TcpListener, state: Arc<Mutex<(SystemTime, String)>>) {
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(&conn);
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            // Read the headers too: closing with unread input would reset the connection.
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let (updated, metrics) = match state.lock() {
                Ok(s) => s.clone(),
                Err(_) => continue,
            };
            let fmt =
                |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let now = SystemTime::now();
            let healthy = now.duration_since(updated).is_ok_and(|d| d < Duration::from_mins(1));
            let (status, body, ctype) = if request.starts_with("GET /healthz") {
                let body =
                    format!("{{\"lastUpdated\": {}, \"currentTime\": {}}}", fmt(updated), fmt(now));
                (
                    if healthy { "200 OK" } else { "503 Service Unavailable" },
                    body,
                    "application/json",
                )
            } else if request.starts_with("GET /metrics") {
                ("200 OK", metrics, "text/plain; version=0.0.4")
            } else {
                ("404 Not Found", "not found\n".to_owned(), "text/plain")
            };
            let mut w = &conn;
            let _ = write!(
                w,
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::net::TcpStream;

    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn healthz_and_metrics_answer_like_kube_proxy() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state =
            Arc::new(Mutex::new((SystemTime::now(), "skiff_proxy_syncs_total 3\n".to_owned())));
        serve_health(listener, Arc::clone(&state));
        let health = get(addr, "/healthz");
        assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
        assert!(health.contains("\"lastUpdated\": "), "{health}");
        assert!(get(addr, "/metrics").ends_with("skiff_proxy_syncs_total 3\n"));
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
        // A loop that stopped syncing is unhealthy.
        state.lock().unwrap().0 = SystemTime::now() - Duration::from_mins(10);
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 503"));
    }
}

/// What a health-check node port reports: the Service and its ready endpoints on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

/// Health-check node ports of `externalTrafficPolicy: Local` Services (pure).
pub fn health_checks(desired: &DesiredState) -> std::collections::BTreeMap<u16, HealthCheck> {
    let mut out = std::collections::BTreeMap::new();
    for sp in desired.values() {
        if let (true, Some(port)) = (sp.external_local, sp.health_check_node_port) {
            let local = sp.usable_endpoints().iter().filter(|e| e.local).count();
            let entry = out.entry(port).or_insert(HealthCheck {
                namespace: sp.name.namespace.clone(),
                name: sp.name.name.clone(),
                local_endpoints: 0,
            });
            // Several ports of one Service share the check; count each endpoint address once.
            entry.local_endpoints = entry.local_endpoints.max(local);
        }
    }
    out
}

/// kube-proxy's answer on a health-check node port: 200 with local endpoints, else 503.
pub fn health_check_response(hc: &HealthCheck) -> String {
    let body = format!(
        "{{\"service\":{{\"namespace\":\"{}\",\"name\":\"{}\"}},\"localEndpoints\":{},\"serviceProxyHealthy\":true}}",
        hc.namespace, hc.name, hc.local_endpoints
    );
    let status = if hc.local_endpoints > 0 { "200 OK" } else { "503 Service Unavailable" };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The listeners of the health-check node ports, kept in step with the desired state.
#[derive(Debug, Default)]
pub struct HealthCheckServer {
    ports: std::collections::BTreeMap<
        u16,
        (Arc<Mutex<HealthCheck>>, Arc<std::sync::atomic::AtomicBool>),
    >,
    bind_ip: Option<std::net::IpAddr>,
}

impl HealthCheckServer {
    /// Listens on `bind_ip` (all addresses if `None`).
    pub fn new(bind_ip: Option<std::net::IpAddr>) -> Self {
        HealthCheckServer { ports: std::collections::BTreeMap::new(), bind_ip }
    }

    /// Opens, updates and closes listeners so that exactly the ports in `desired` answer.
    pub fn update(&mut self, desired: &DesiredState) {
        use std::sync::atomic::{AtomicBool, Ordering};
        let want = health_checks(desired);
        self.ports.retain(|port, (_, stop)| {
            let keep = want.contains_key(port);
            if !keep {
                stop.store(true, Ordering::Relaxed);
            }
            keep
        });
        for (port, hc) in want {
            if let Some((state, _)) = self.ports.get(&port) {
                if let Ok(mut s) = state.lock() {
                    *s = hc;
                }
                continue;
            }
            let ip = self.bind_ip.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
            let listener = match TcpListener::bind((ip, port))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(port, error = %e, "cannot open health-check node port");
                    continue;
                }
            };
            let state = Arc::new(Mutex::new(hc));
            let stop = Arc::new(AtomicBool::new(false));
            let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !sp.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let _ = conn.set_nonblocking(false);
                            let mut reader = BufReader::new(&conn);
                            let mut line = String::new();
                            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                                line.clear();
                            }
                            let answer =
                                st.lock().map(|hc| health_check_response(&hc)).unwrap_or_default();
                            let mut w = &conn;
                            let _ = w.write_all(answer.as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            });
            self.ports.insert(port, (state, stop));
        }
    }
}

impl Drop for HealthCheckServer {
    fn drop(&mut self) {
        for (_, stop) in self.ports.values() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod health_check_tests {
    use std::io::Read as _;
    use std::net::{Ipv4Addr, TcpStream};

    use super::*;
    use crate::proxy::{Endpoint, Protocol, ServicePort, ServicePortName};

    fn desired(port: u16, local: &[bool]) -> DesiredState {
        let name =
            ServicePortName { namespace: "ns".into(), name: "web".into(), port: String::new() };
        let endpoints = local
            .iter()
            .enumerate()
            .map(|(i, l)| Endpoint {
                ip: Ipv4Addr::new(10, 0, 0, u8::try_from(i + 1).unwrap()),
                port: 80,
                ready: true,
                serving: true,
                terminating: false,
                local: *l,
            })
            .collect();
        let sp = ServicePort {
            name: name.clone(),
            protocol: Protocol::Tcp,
            port: 80,
            cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 1)),
            external_ips: vec![],
            node_port: Some(30000),
            affinity_timeout_s: None,
            external_local: true,
            health_check_node_port: Some(port),
            maglev: false,
            endpoints,
        };
        [((name, Protocol::Tcp), sp)].into_iter().collect()
    }

    fn get(port: u16) -> String {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        write!(s, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn health_check_node_port_reports_local_endpoints() {
        // A free port: bind, note, release.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = HealthCheckServer::new(Some(Ipv4Addr::LOCALHOST.into()));
        server.update(&desired(port, &[true, false, true]));
        let answer = get(port);
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with(r#"{"service":{"namespace":"ns","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}"#), "{answer}");
        server.update(&desired(port, &[false, false]));
        assert!(
            get(port).starts_with("HTTP/1.1 503"),
            "no local endpoint: traffic must go elsewhere"
        );
    }
}
