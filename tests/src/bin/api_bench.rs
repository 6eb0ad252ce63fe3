//! `skiff-api-bench` (run by `cargo xtask bench api`): three `skiff-master` processes on this
//! machine; pod creates at 64 concurrent clients, lists of every pod (full and paged), many
//! concurrent watchers' delivery latency, and each master's RSS. The anchor, in the same run,
//! is the same writes sent straight to the store's etcd v3 API (no API server).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use skiff_e2e::masters::Masters;
use tokio::net::TcpStream;

struct Args {
    pods: usize,
    clients: usize,
    watchers: usize,
    events: usize,
    out: String,
    note: String,
}

fn args() -> Result<Args> {
    let mut a = Args {
        pods: 10_000,
        clients: 64,
        watchers: 1000,
        events: 200,
        out: "docs/benchmarks".into(),
        note: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--pods" => a.pods = v.parse()?,
            "--clients" => a.clients = v.parse()?,
            "--watchers" => a.watchers = v.parse()?,
            "--events" => a.events = v.parse()?,
            "--out" => a.out = v,
            "--note" => a.note = v,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn tls(pki: &std::path::Path) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.join("ca.crt"))? {
        roots.add(c?)?;
    }
    let certs: Vec<_> =
        CertificateDer::pem_file_iter(pki.join("admin.crt"))?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(pki.join("admin.key"))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// One HTTP/2 connection to an API server.
#[derive(Clone)]
struct Conn(SendRequest<Full<Bytes>>);

impl Conn {
    async fn open(port: u16, tls: Arc<rustls::ClientConfig>) -> Result<Self> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
            .await?;
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(conn);
        Ok(Self(send))
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Bytes)> {
        let resp = self.send(method, path, body).await?;
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((code, bytes))
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let data = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("https://127.0.0.1{path}"))
            .header("content-type", "application/json")
            .body(Full::new(data))?;
        self.0.ready().await?;
        Ok(self.0.send_request(req).await?)
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "index of a percentile"
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn pod(ns: &str, name: &str, sent_ns: u128) -> Value {
    json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":name,"namespace":ns,"labels":{"app":"bench"},"annotations":{"bench/sent":sent_ns.to_string()}},
           "spec":{"containers":[{"name":"c","image":"busybox:1.36","command":["sleep","3600"],"resources":{"requests":{"cpu":"10m","memory":"16Mi"}}}]}})
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

struct Phase {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn summarize(mut lat: Vec<f64>, elapsed: Duration) -> Phase {
    lat.sort_by(f64::total_cmp);
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let per_sec = lat.len() as f64 / elapsed.as_secs_f64();
    Phase { per_sec, p50_ms: pct(&lat, 0.5), p99_ms: pct(&lat, 0.99) }
}

async fn creates(conns: &[Conn], ns: &str, n: usize, clients: usize) -> Result<Phase> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut conn = conns[c % conns.len()].clone();
        let next = Arc::clone(&next);
        let ns = ns.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let t = Instant::now();
                let (code, body) = conn
                    .request(
                        "POST",
                        &format!("/api/v1/namespaces/{ns}/pods"),
                        Some(&pod(&ns, &format!("p-{i}"), now_ns())),
                    )
                    .await?;
                if code != 201 {
                    bail!("create returned {code}: {}", String::from_utf8_lossy(&body));
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(summarize(all, start.elapsed()))
}

async fn anchor_puts(endpoints: &[String], n: usize, clients: usize) -> Result<Phase> {
    use skiff_proto::etcdserverpb::{PutRequest, kv_client::KvClient};
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let ep = endpoints[c % endpoints.len()].clone();
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut kv = KvClient::connect(ep).await?;
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let value = pod("anchor", &format!("p-{i}"), now_ns()).to_string().into_bytes();
                let t = Instant::now();
                kv.put(PutRequest {
                    key: format!("/bench-anchor/pods/p-{i}").into_bytes(),
                    value,
                    ..Default::default()
                })
                .await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(summarize(all, start.elapsed()))
}

async fn list_latency(conn: &mut Conn, ns: &str, paged: bool, runs: usize) -> Result<(f64, usize)> {
    let mut lat = Vec::new();
    let mut count = 0;
    for _ in 0..runs {
        let t = Instant::now();
        count = 0;
        let mut token = String::new();
        loop {
            let path = if paged {
                format!("/api/v1/namespaces/{ns}/pods?limit=500&continue={token}")
            } else {
                format!("/api/v1/namespaces/{ns}/pods")
            };
            let (code, body) = conn.request("GET", &path, None).await?;
            if code != 200 {
                bail!("list returned {code}");
            }
            let v: Value = serde_json::from_slice(&body)?;
            count += v["items"].as_array().map_or(0, Vec::len);
            match v.pointer("/metadata/continue").and_then(Value::as_str) {
                Some(c) if paged && !c.is_empty() => c.clone_into(&mut token),
                _ => break,
            }
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    Ok((pct(&lat, 0.5), count))
}

async fn watch_delivery(conns: &[Conn], watchers: usize, events: usize) -> Result<Phase> {
    let ns = "bench-watch";
    let mut c0 = conns[0].clone();
    let (_, body) =
        c0.request("GET", &format!("/api/v1/namespaces/{ns}/pods?limit=1"), None).await?;
    let rv = serde_json::from_slice::<Value>(&body)?
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("0")
        .to_owned();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for w in 0..watchers {
        let mut conn = conns[w % conns.len()].clone();
        let tx = tx.clone();
        let rv = rv.clone();
        let opened = Arc::clone(&opened);
        tokio::spawn(async move {
            let Ok(resp) = conn.send("GET", &format!("/api/v1/namespaces/{ns}/pods?watch=true&resourceVersion={rv}&timeoutSeconds=600"), None).await else { return };
            opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            let mut got = 0;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        let at = now_ns();
                        if let Ok(ev) = serde_json::from_slice::<Value>(&line)
                            && let Some(sent) = ev
                                .pointer("/object/metadata/annotations/bench~1sent")
                                .and_then(Value::as_str)
                                .and_then(|s| s.parse::<u128>().ok())
                        {
                            #[expect(
                                clippy::cast_precision_loss,
                                reason = "nanoseconds of a latency"
                            )]
                            let ms = at.saturating_sub(sent) as f64 / 1e6;
                            let _ = tx.send(ms);
                            got += 1;
                            if got >= events {
                                return;
                            }
                        }
                    }
                }
            }
        });
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_mins(1);
    while opened.load(std::sync::atomic::Ordering::Relaxed) < watchers && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Watch responses are sent once the stream starts; give the cache a moment to register
    // every watcher before the first event (the requests above already returned headers).
    let start = Instant::now();
    for i in 0..events {
        let (code, _) = c0
            .request(
                "POST",
                &format!("/api/v1/namespaces/{ns}/pods"),
                Some(&pod(ns, &format!("w-{i}"), now_ns())),
            )
            .await?;
        if code != 201 {
            bail!("create during watch returned {code}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut lat = Vec::new();
    let want = watchers * events;
    while lat.len() < want {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(ms)) => lat.push(ms),
            _ => break,
        }
    }
    if lat.len() < want {
        eprintln!("warning: {} of {want} watch deliveries arrived", lat.len());
    }
    Ok(summarize(lat, start.elapsed()))
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn main() -> Result<()> {
    let a = args()?;
    let tag = skiff_e2e::unique_tag();
    let masters = Masters::start_with_api(&tag, 3, 20_000)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let pki = masters.dir.join("pki");
    let report = rt.block_on(async {
        let tls = tls(&pki)?;
        let mut conns = Vec::new();
        for i in 0..a.clients.max(3) {
            conns.push(Conn::open(masters.specs[i % 3].api_port, Arc::clone(&tls)).await?);
        }
        let mut c0 = conns[0].clone();
        for ns in ["bench", "bench-watch"] {
            c0.request("POST", "/api/v1/namespaces", Some(&json!({"metadata": {"name": ns}}))).await?;
        }
        let endpoints: Vec<String> = masters.specs.iter().map(skiff_e2e::masters::MemberSpec::client_url).collect();
        eprintln!("anchor: {} direct store puts at {} clients", a.pods, a.clients);
        let anchor = anchor_puts(&endpoints, a.pods, a.clients).await?;
        eprintln!("creates: {} pods at {} clients", a.pods, a.clients);
        let create = creates(&conns[..a.clients], "bench", a.pods, a.clients).await?;
        eprintln!("lists");
        let (full_ms, full_n) = list_latency(&mut c0, "bench", false, 5).await?;
        let (paged_ms, paged_n) = list_latency(&mut c0, "bench", true, 5).await?;
        let rss: Vec<f64> = (0..3).filter_map(|i| masters.pid(i)).map(rss_mib).collect();
        eprintln!("watch: {} watchers x {} events", a.watchers, a.events);
        let mut wconns = Vec::new();
        for i in 0..(a.watchers / 50).max(3) {
            wconns.push(Conn::open(masters.specs[i % 3].api_port, Arc::clone(&tls)).await?);
        }
        let watch = watch_delivery(&wconns, a.watchers, a.events).await?;
        Ok::<_, anyhow::Error>(json!({
            "machine_note": a.note,
            "pods": a.pods, "clients": a.clients, "watchers": a.watchers, "events_per_watcher": a.events,
            "anchor_store_put": {"per_sec": anchor.per_sec, "p50_ms": anchor.p50_ms, "p99_ms": anchor.p99_ms},
            "pod_create": {"per_sec": create.per_sec, "p50_ms": create.p50_ms, "p99_ms": create.p99_ms},
            "create_vs_anchor_throughput": create.per_sec / anchor.per_sec,
            "list_full": {"p50_ms": full_ms, "items": full_n},
            "list_paged_500": {"p50_ms": paged_ms, "items": paged_n},
            "watch_delivery": {"p50_ms": watch.p50_ms, "p99_ms": watch.p99_ms},
            "master_rss_mib": rss,
        }))
    })?;
    std::fs::create_dir_all(&a.out)?;
    std::fs::write(format!("{}/api.json", a.out), serde_json::to_string_pretty(&report)? + "\n")?;
    let f = |p: &str| report.pointer(p).and_then(Value::as_f64).unwrap_or(0.0);
    let md = format!(
        "# API server benchmark\n\n`cargo xtask bench api` — three `skiff-master` processes (store replica + API server each) on one machine, \
HTTP/2 over TLS with the admin client certificate, clients spread over the masters.\n\n{note}\n\n\
| measurement | result | target |\n|---|---|---|\n\
| pod creates, {clients} clients, {pods} pods | {cps:.0}/s, p50 {cp50:.1} ms, p99 {cp99:.1} ms | ≥ 3000/s, p99 ≤ 100 ms |\n\
| anchor: the same writes straight to the store (etcd v3 Put) | {aps:.0}/s, p50 {ap50:.1} ms, p99 {ap99:.1} ms | |\n\
| creates / anchor throughput | {ratio:.2} | |\n\
| list of {full_n} pods, full | p50 {lf:.1} ms | ≤ 100 ms |\n\
| list of {paged_n} pods, pages of 500 | p50 {lp:.1} ms (all pages) | |\n\
| watch delivery, {watchers} watchers × {events} events | p50 {wp50:.1} ms, p99 {wp99:.1} ms | p99 ≤ 50 ms |\n\
| master RSS after the creates (store + API server, MiB) | {rss} | |\n\n\
Raw numbers: `api.json`. Reproduce: `cargo xtask bench api` (add `--small` for a smoke run).\n",
        note = if a.note.is_empty() { String::new() } else { format!("**Note:** {}", a.note) },
        clients = a.clients,
        pods = a.pods,
        cps = f("/pod_create/per_sec"),
        cp50 = f("/pod_create/p50_ms"),
        cp99 = f("/pod_create/p99_ms"),
        aps = f("/anchor_store_put/per_sec"),
        ap50 = f("/anchor_store_put/p50_ms"),
        ap99 = f("/anchor_store_put/p99_ms"),
        ratio = f("/create_vs_anchor_throughput"),
        full_n = report["list_full"]["items"],
        paged_n = report["list_paged_500"]["items"],
        lf = f("/list_full/p50_ms"),
        lp = f("/list_paged_500/p50_ms"),
        watchers = a.watchers,
        events = a.events,
        wp50 = f("/watch_delivery/p50_ms"),
        wp99 = f("/watch_delivery/p99_ms"),
        rss = report["master_rss_mib"]
            .as_array()
            .map(|v| v
                .iter()
                .map(|x| format!("{:.0}", x.as_f64().unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
    );
    std::fs::write(format!("{}/api.md", a.out), md)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
