//! Running the proxy on its own (`skiff-agent proxy`): Services and EndpointSlices from a file,
//! one sync (`--once`) or a loop that re-syncs when the file changes, `/healthz` and `/metrics`
//! on a small HTTP listener (kube-proxy's port 10256), periodic conntrack-style GC of the
//! socket reverse-NAT map, program events into `tracing`.
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

/// The desired state with one endpoint of the first Service port with endpoints flipped
/// between ready and absent (`step` odd: removed).
fn churned(base: &DesiredState, step: usize) -> DesiredState {
    let mut d = base.clone();
    if step % 2 == 1
        && let Some(sp) = d.values_mut().find(|s| s.endpoints.len() > 1)
    {
        sp.endpoints.pop();
    }
    d
}

/// Runs the proxy as configured. With `once`, returns after the first sync (and the churn).
pub fn run(cfg: &StandaloneConfig) -> Result<Option<RunReport>, ProxyError> {
    let tracker = source::load(&cfg.source, &cfg.node)?;
    let desired = tracker.desired();
    let mut proxier = start(cfg)?;
    let t0 = Instant::now();
    let first = proxier.get().sync(&desired)?;
    let full = t0.elapsed().as_secs_f64();
    tracing::info!(
        mode = proxier.get().mode(),
        service_ports = desired.len(),
        seconds = full,
        failed = first.failed.len(),
        "synced"
    );
    if cfg.once {
        let mut changes = Vec::new();
        let (cpu0, w0) = (cpu_seconds(), Instant::now());
        for step in 1..=cfg.churn {
            let next = Instant::now() + cfg.churn_interval;
            let d = churned(&desired, step);
            let t = Instant::now();
            proxier.get().sync(&d)?;
            changes.push(t.elapsed().as_secs_f64());
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        let report = RunReport {
            mode: proxier.get().mode(),
            service_ports: desired.len(),
            full_sync_seconds: full,
            change_sync_seconds: changes,
            churn_cpu_seconds: cpu_seconds() - cpu0,
            churn_wall_seconds: w0.elapsed().as_secs_f64(),
            failed: first.failed.len(),
        };
        return Ok(Some(report));
    }
    let state = Arc::new(Mutex::new((SystemTime::now(), proxier.get().metrics())));
    if let Some(addr) = cfg.healthz {
        let listener = TcpListener::bind(addr)
            .map_err(|source| source::SourceError::Io { what: format!("bind {addr}"), source })?;
        serve_health(listener, Arc::clone(&state));
    }
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = mtime(&cfg.source);
    let mut last_gc = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = mtime(&cfg.source);
        if now != seen {
            seen = now;
            match source::load(&cfg.source, &cfg.node) {
                Ok(t) => {
                    let report = proxier.get().sync(&t.desired())?;
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
                match p.gc() {
                    Ok(n) if n > 0 => {
                        tracing::info!(removed = n, "garbage-collected socket reverse-NAT entries");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "gc failed"),
                }
            }
        }
        if let Ok(mut s) = state.lock() {
            *s = (SystemTime::now(), proxier.get().metrics());
        }
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
