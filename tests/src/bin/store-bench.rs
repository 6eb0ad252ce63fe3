//! `store-bench`: the store benchmark behind `cargo xtask bench store`. Starts a 3-member
//! etcd 3.4 and a 3-member Skiff store (both fsync-durable, loopback), drives both with the
//! same etcd v3 gRPC client, and writes `store.md` + `store.json`.
//!
//! Phases per system, on a fresh cluster: N puts at 64 clients then on-disk size; timed puts
//! (256-byte values) at 1, 16, 64, 256 clients (throughput, p50, p99); linearizable reads at 64
//! clients; watch delivery latency; RSS of the members.

#![expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "statistics over counts and nanoseconds far below 2^52"
)]

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::Rng;
use serde_json::json;
use skiff_e2e::free_port;
use skiff_e2e::masters::Masters;
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::watch_client::WatchClient;
use skiff_proto::etcdserverpb::{
    PutRequest, RangeRequest, WatchCreateRequest, WatchRequest, watch_request,
};
use tonic::transport::{Channel, Endpoint};

const VALUE_BYTES: usize = 256;
const KEY_SPACE: u64 = 100_000;
/// Client counts of the timed put phases in a full report.
const ALL_CLIENTS: [usize; 4] = [1, 16, 64, 256];

struct Scale {
    fill_writes: u64,
    phase: Duration,
    watch_events: usize,
}

/// A 3-member etcd 3.4, stopped by PID.
struct Etcd {
    dir: PathBuf,
    children: Vec<Child>,
    clients: Vec<String>,
}

impl Etcd {
    fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ports: Vec<(u16, u16)> =
            (0..3).map(|_| Ok((free_port()?, free_port()?))).collect::<Result<_>>()?;
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("e{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut children = Vec::new();
        let mut clients = Vec::new();
        for (i, (c, p)) in ports.iter().enumerate() {
            let log = std::fs::File::create(dir.join(format!("e{i}.log")))?;
            children.push(
                Command::new("etcd")
                    .args(["--name", &format!("e{i}")])
                    .arg("--data-dir")
                    .arg(dir.join(format!("e{i}")))
                    .args(["--listen-client-urls", &format!("http://127.0.0.1:{c}")])
                    .args(["--advertise-client-urls", &format!("http://127.0.0.1:{c}")])
                    .args(["--listen-peer-urls", &format!("http://127.0.0.1:{p}")])
                    .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{p}")])
                    .args(["--initial-cluster", &cluster, "--initial-cluster-state", "new"])
                    .args(["--quota-backend-bytes", "8589934592"])
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()
                    .context("starting etcd")?,
            );
            clients.push(format!("http://127.0.0.1:{c}"));
        }
        Ok(Self { dir: dir.to_path_buf(), children, clients })
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 =
        rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse::<u64>().ok()).sum();
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}

fn cpu_total(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

fn du(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += du(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

async fn channels(endpoints: &[String], per_endpoint: usize) -> Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..per_endpoint {
        for e in endpoints {
            out.push(Endpoint::from_shared(e.clone())?.tcp_nodelay(true).connect().await?);
        }
    }
    Ok(out)
}

async fn wait_writable(endpoints: &[String]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let mut ok = true;
        for e in endpoints {
            let r = async {
                let mut c = KvClient::connect(e.clone()).await?;
                c.put(PutRequest {
                    key: b"/bench/ready".to_vec(),
                    value: b"1".to_vec(),
                    ..Default::default()
                })
                .await?;
                anyhow::Ok(())
            }
            .await;
            ok &= r.is_ok();
        }
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("cluster at {endpoints:?} did not accept writes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct PhaseResult {
    /// Latencies of the completed ops, sorted.
    latencies: Vec<Duration>,
    ops: u64,
    /// CPU seconds the members used during the phase.
    cpu_seconds: f64,
    /// CPU seconds this client process used during the phase.
    client_cpu_seconds: f64,
    errors: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl PhaseResult {
    /// One result for several runs of the same phase: ops, time and CPU add up, percentiles
    /// come from all latencies together.
    fn pooled(runs: &[PhaseResult]) -> PhaseResult {
        let mut latencies: Vec<Duration> =
            runs.iter().flat_map(|r| r.latencies.iter().copied()).collect();
        latencies.sort_unstable();
        PhaseResult {
            ops: runs.iter().map(|r| r.ops).sum(),
            cpu_seconds: runs.iter().map(|r| r.cpu_seconds).sum(),
            client_cpu_seconds: runs.iter().map(|r| r.client_cpu_seconds).sum(),
            errors: runs.iter().map(|r| r.errors).sum(),
            seconds: runs.iter().map(|r| r.seconds).sum(),
            p50_ms: percentile(&latencies, 0.5),
            p99_ms: percentile(&latencies, 0.99),
            latencies,
        }
    }

    fn rate(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
    /// Members' CPU milliseconds per completed op, summed over the cluster.
    fn cpu_ms_per_op(&self) -> f64 {
        self.cpu_seconds * 1000.0 / (self.ops.max(1) as f64)
    }
    /// The client's CPU milliseconds per completed op.
    fn client_cpu_ms_per_op(&self) -> f64 {
        self.client_cpu_seconds * 1000.0 / (self.ops.max(1) as f64)
    }
    fn json(&self) -> serde_json::Value {
        json!({"ops": self.ops, "errors": self.errors, "seconds": self.seconds, "per_second": self.rate(),
               "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "cpu_seconds": self.cpu_seconds,
               "cpu_ms_per_op": self.cpu_ms_per_op(), "client_cpu_seconds": self.client_cpu_seconds,
               "client_cpu_ms_per_op": self.client_cpu_ms_per_op()})
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

/// Runs `clients` loops of `op` until `count` ops are done or `duration` passes.
async fn drive<F, Fut>(
    chans: &[Channel],
    pids: &[u32],
    clients: usize,
    duration: Duration,
    count: Option<u64>,
    op: F,
) -> PhaseResult
where
    F: Fn(KvClient<Channel>, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_total(pids);
    let client_cpu_before = cpu_seconds(std::process::id());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let kv = KvClient::new(chans[c % chans.len()].clone()).max_decoding_message_size(64 << 20);
        let op = op.clone();
        let stop = stop.clone();
        let issued = issued.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            loop {
                if stop.load(Ordering::Relaxed) || start.elapsed() >= duration {
                    break;
                }
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if count.is_some_and(|c| n >= c) {
                    break;
                }
                let t = Instant::now();
                if op(kv.clone(), n).await {
                    lat.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    let client_cpu_seconds = cpu_seconds(std::process::id()) - client_cpu_before;
    let cpu_seconds = cpu_total(pids) - cpu_before;
    all.sort_unstable();
    PhaseResult {
        ops: all.len() as u64,
        cpu_seconds,
        client_cpu_seconds,
        errors,
        seconds,
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
        latencies: all,
    }
}

fn put_op(kv: KvClient<Channel>, _n: u64) -> impl Future<Output = bool> + Send {
    let key = format!("/bench/k{:08}", rand::rng().random_range(0..KEY_SPACE)).into_bytes();
    let mut kv = kv;
    async move {
        kv.put(PutRequest { key, value: vec![b'v'; VALUE_BYTES], ..Default::default() })
            .await
            .is_ok()
    }
}

fn get_op(kv: KvClient<Channel>, _n: u64) -> impl Future<Output = bool> + Send {
    let key = format!("/bench/k{:08}", rand::rng().random_range(0..KEY_SPACE)).into_bytes();
    let mut kv = kv;
    async move { kv.range(RangeRequest { key, ..Default::default() }).await.is_ok() }
}

/// Watch delivery latency: a watcher on one member, writers through all members; each value
/// carries its send time.
async fn watch_latency(chans: &[Channel], events: usize) -> Result<(f64, f64)> {
    let base = Instant::now();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut w = WatchClient::new(chans[chans.len() - 1].clone());
    // Queue the create request first: a server may hold the response headers until it has a
    // message to send.
    tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"/watch/".to_vec(),
            range_end: b"/watch0".to_vec(),
            ..Default::default()
        })),
    })
    .await?;
    let stream = tokio_stream_from(rx);
    let mut resp = w.watch(stream).await?.into_inner();
    // The created response.
    resp.message().await?.context("watch stream closed")?;
    let writers = 8;
    let per = events / writers;
    let mut tasks = Vec::new();
    for i in 0..writers {
        let mut kv = KvClient::new(chans[i % chans.len()].clone());
        tasks.push(tokio::spawn(async move {
            for j in 0..per {
                let sent = base.elapsed().as_nanos() as u64;
                let mut value = sent.to_be_bytes().to_vec();
                value.resize(VALUE_BYTES, b'w');
                let _ = kv
                    .put(PutRequest {
                        key: format!("/watch/{i}/{j}").into_bytes(),
                        value,
                        ..Default::default()
                    })
                    .await;
            }
        }));
    }
    let mut lat = Vec::new();
    while lat.len() < per * writers {
        let Some(m) = tokio::time::timeout(Duration::from_secs(30), resp.message()).await?? else {
            break;
        };
        let now = base.elapsed().as_nanos() as u64;
        for e in m.events {
            if let Some(kv) = e.kv
                && kv.value.len() >= 8
            {
                let sent = u64::from_be_bytes(kv.value[..8].try_into().unwrap_or_default());
                lat.push(Duration::from_nanos(now.saturating_sub(sent)));
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    drop(tx);
    lat.sort_unstable();
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99)))
}

fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<WatchRequest>,
) -> impl tonic::codegen::tokio_stream::Stream<Item = WatchRequest> + Send + 'static {
    futures_lite(rx)
}

/// A `Stream` over an mpsc receiver without pulling in another crate.
fn futures_lite(
    mut rx: tokio::sync::mpsc::Receiver<WatchRequest>,
) -> impl tonic::codegen::tokio_stream::Stream<Item = WatchRequest> + Send + 'static {
    struct S(tokio::sync::mpsc::Receiver<WatchRequest>);
    impl tonic::codegen::tokio_stream::Stream for S {
        type Item = WatchRequest;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<WatchRequest>> {
            self.0.poll_recv(cx)
        }
    }
    let _ = &mut rx;
    S(rx)
}

/// A cluster under test.
struct System {
    name: &'static str,
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
    chans: Vec<Channel>,
}

impl System {
    async fn connect(
        name: &'static str,
        endpoints: &[String],
        pids: Vec<u32>,
        dirs: Vec<PathBuf>,
    ) -> Result<Self> {
        wait_writable(endpoints).await?;
        let chans = channels(endpoints, 4).await?;
        Ok(Self { name, pids, dirs, chans })
    }

    async fn fill(&self, scale: &Scale) -> (PhaseResult, u64) {
        eprintln!("[{}] filling {} writes at 64 clients", self.name, scale.fill_writes);
        let fill = drive(
            &self.chans,
            &self.pids,
            64,
            Duration::from_hours(1),
            Some(scale.fill_writes),
            put_op,
        )
        .await;
        (fill, self.dirs.iter().map(|d| du(d)).sum())
    }
}

/// Runs one phase on every system: with two systems in the order A B B A, so a machine that
/// speeds up or slows down during the run weighs on both alike; each system's two runs are
/// pooled.
async fn interleaved<F, Fut>(
    systems: &[System],
    clients: usize,
    duration: Duration,
    op: F,
) -> Vec<PhaseResult>
where
    F: Fn(KvClient<Channel>, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = bool> + Send,
{
    let order: Vec<usize> = if systems.len() == 2 { vec![0, 1, 1, 0] } else { vec![0] };
    let mut runs: Vec<Vec<PhaseResult>> = systems.iter().map(|_| Vec::new()).collect();
    for i in order {
        let s = &systems[i];
        runs[i].push(drive(&s.chans, &s.pids, clients, duration, None, op.clone()).await);
    }
    runs.iter().map(|r| PhaseResult::pooled(r)).collect()
}

/// Every phase on `systems` (etcd and Skiff, or Skiff alone); one JSON result per system.
async fn run_systems(
    systems: &[System],
    scale: &Scale,
    client_counts: &[usize],
) -> Result<Vec<serde_json::Value>> {
    let mut fills = Vec::new();
    for s in systems {
        fills.push(s.fill(scale).await);
    }
    let mut writes: Vec<serde_json::Map<String, serde_json::Value>> =
        systems.iter().map(|_| serde_json::Map::new()).collect();
    for &clients in client_counts {
        let results = interleaved(systems, clients, scale.phase, put_op).await;
        for ((s, r), w) in systems.iter().zip(results).zip(&mut writes) {
            eprintln!(
                "[{}] puts, {clients} clients: {:.0}/s p50 {:.2} ms p99 {:.2} ms ({} errors), \
                 CPU ms/put: members {:.3}, client {:.3}",
                s.name,
                r.rate(),
                r.p50_ms,
                r.p99_ms,
                r.errors,
                r.cpu_ms_per_op(),
                r.client_cpu_ms_per_op()
            );
            w.insert(clients.to_string(), r.json());
        }
    }
    if client_counts != ALL_CLIENTS {
        // A profiling run of chosen write phases only.
        return Ok(writes.into_iter().map(|w| json!({"writes": w})).collect());
    }
    let reads = interleaved(systems, 64, scale.phase, get_op).await;
    let mut out = Vec::new();
    for (((s, (fill, disk)), writes), reads) in systems.iter().zip(fills).zip(writes).zip(reads) {
        eprintln!(
            "[{}] linearizable gets, 64 clients: {:.0}/s p99 {:.2} ms",
            s.name,
            reads.rate(),
            reads.p99_ms
        );
        let (w50, w99) = watch_latency(&s.chans, scale.watch_events).await?;
        eprintln!("[{}] watch latency p50 {w50:.2} ms p99 {w99:.2} ms", s.name);
        let rss: u64 = s.pids.iter().map(|p| rss_bytes(*p)).sum();
        out.push(json!({
            "fill": fill.json(),
            "disk_bytes_after_fill": disk,
            "writes": writes,
            "linearizable_reads_64": reads.json(),
            "watch_latency_ms": {"p50": w50, "p99": w99},
            "rss_bytes_total": rss,
        }));
    }
    Ok(out)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn f(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().unwrap_or(0.0)
}

fn report(etcd: &serde_json::Value, skiff: &serde_json::Value, meta: &serde_json::Value) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Store benchmark: Skiff vs etcd 3.4\n");
    let _ = writeln!(
        md,
        "Produced by `cargo xtask bench store` ({}). Same machine, same run, same client (a tonic etcd v3 client, \
round-robin over the 3 members' client URLs, 4 HTTP/2 connections per member); both clusters have 3 members on loopback and fsync \
before acknowledging. Puts write 256-byte values to random keys among {KEY_SPACE}. Both clusters run for the whole \
benchmark and every write and read phase runs {} s twice per system, in the order etcd, Skiff, Skiff, etcd, so that \
the machine's drift during a run weighs on both alike; each figure pools a system's two runs (ops and CPU added up, \
percentiles over all latencies).\n",
        meta["scale"].as_str().unwrap_or(""),
        meta["phase_seconds"]
    );
    let _ = writeln!(
        md,
        "Load average before/after: {} / {}. {}\n",
        meta["loadavg_before"].as_str().unwrap_or(""),
        meta["loadavg_after"].as_str().unwrap_or(""),
        meta["note"].as_str().unwrap_or("")
    );
    let _ = writeln!(
        md,
        "## Writes\n\n| clients | etcd puts/s | etcd p50 ms | etcd p99 ms | Skiff puts/s | Skiff p50 ms | Skiff p99 ms | throughput ratio |\n|---|---|---|---|---|---|---|---|"
    );
    for c in ["1", "16", "64", "256"] {
        let e = &etcd["writes"][c];
        let s = &skiff["writes"][c];
        let ratio = f(s, &["per_second"]) / f(e, &["per_second"]).max(1e-9);
        let _ = writeln!(
            md,
            "| {c} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {ratio:.2}x |",
            f(e, &["per_second"]),
            f(e, &["p50_ms"]),
            f(e, &["p99_ms"]),
            f(s, &["per_second"]),
            f(s, &["p50_ms"]),
            f(s, &["p99_ms"])
        );
    }
    cpu_section(&mut md, etcd, skiff, meta);
    let er = f(etcd, &["linearizable_reads_64", "per_second"]);
    let sr = f(skiff, &["linearizable_reads_64", "per_second"]);
    let _ = writeln!(
        md,
        "\n## Other measures\n\n| measure | etcd | Skiff | ratio |\n|---|---|---|---|"
    );
    let _ = writeln!(
        md,
        "| linearizable gets/s, 64 clients | {er:.0} | {sr:.0} | {:.2}x |",
        sr / er.max(1e-9)
    );
    let _ = writeln!(
        md,
        "| linearizable get p99 ms | {:.2} | {:.2} | |",
        f(etcd, &["linearizable_reads_64", "p99_ms"]),
        f(skiff, &["linearizable_reads_64", "p99_ms"])
    );
    let _ = writeln!(
        md,
        "| watch delivery p50 ms | {:.2} | {:.2} | |",
        f(etcd, &["watch_latency_ms", "p50"]),
        f(skiff, &["watch_latency_ms", "p50"])
    );
    let _ = writeln!(
        md,
        "| watch delivery p99 ms | {:.2} | {:.2} | |",
        f(etcd, &["watch_latency_ms", "p99"]),
        f(skiff, &["watch_latency_ms", "p99"])
    );
    let _ = writeln!(
        md,
        "| fill: {} puts at 64 clients, puts/s | {:.0} | {:.0} | {:.2}x |",
        meta["fill_writes"],
        f(etcd, &["fill", "per_second"]),
        f(skiff, &["fill", "per_second"]),
        f(skiff, &["fill", "per_second"]) / f(etcd, &["fill", "per_second"]).max(1e-9)
    );
    let _ = writeln!(
        md,
        "| on-disk bytes after the fill (3 members) | {:.0} | {:.0} | {:.2}x |",
        f(etcd, &["disk_bytes_after_fill"]),
        f(skiff, &["disk_bytes_after_fill"]),
        f(skiff, &["disk_bytes_after_fill"]) / f(etcd, &["disk_bytes_after_fill"]).max(1.0)
    );
    let _ = writeln!(
        md,
        "| RSS bytes, 3 members, at the end | {:.0} | {:.0} | {:.2}x |",
        f(etcd, &["rss_bytes_total"]),
        f(skiff, &["rss_bytes_total"]),
        f(skiff, &["rss_bytes_total"]) / f(etcd, &["rss_bytes_total"]).max(1.0)
    );
    let _ = writeln!(md, "\nRaw figures: `store.json` beside this file.");
    md
}

/// Where the CPU went per put. The client shares the cores with the cluster it drives, so
/// `cores / (members + client CPU per put)` is the rate at which a run becomes CPU-bound.
fn cpu_section(
    md: &mut String,
    etcd: &serde_json::Value,
    skiff: &serde_json::Value,
    meta: &serde_json::Value,
) {
    let cores = f(meta, &["cpus"]).max(1.0);
    let _ = writeln!(
        md,
        "\n## CPU per put\n\nCPU milliseconds (user + system, from `/proc/PID/stat`) per completed put: the three \
members together and the benchmark client. The CPU-bound rate is {cores:.0} cores divided by their sum: the \
most puts/s that run could reach with the machine's cores all busy.\n\n\
| clients | etcd members | etcd client | etcd CPU-bound puts/s | Skiff members | Skiff client | Skiff CPU-bound puts/s |\n\
|---|---|---|---|---|---|---|"
    );
    let bound = |v: &serde_json::Value| {
        cores * 1000.0 / (f(v, &["cpu_ms_per_op"]) + f(v, &["client_cpu_ms_per_op"])).max(1e-9)
    };
    for c in ["1", "16", "64", "256"] {
        let e = &etcd["writes"][c];
        let s = &skiff["writes"][c];
        let _ = writeln!(
            md,
            "| {c} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {:.0} |",
            f(e, &["cpu_ms_per_op"]),
            f(e, &["client_cpu_ms_per_op"]),
            bound(e),
            f(s, &["cpu_ms_per_op"]),
            f(s, &["client_cpu_ms_per_op"]),
            bound(s)
        );
    }
}

const USAGE: &str = "usage: store-bench [--small] [--out DIR] [--note TEXT] [--phase-secs N] \
[--clients 64,256] [--skiff-only] [--members N]";

/// Command-line options; unknown arguments are an error, not ignored.
struct Options {
    out: PathBuf,
    small: bool,
    note: String,
    phase_secs: Option<u64>,
    clients: Option<Vec<usize>>,
    skiff_only: bool,
    /// Skiff members (3 unless profiling: `--members 1` shows what replication costs).
    members: usize,
}

impl Options {
    /// `None` for `--help`.
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Self>> {
        let mut o = Self {
            out: PathBuf::from("docs/benchmarks"),
            small: false,
            note: String::new(),
            phase_secs: None,
            clients: None,
            skiff_only: false,
            members: 3,
        };
        while let Some(a) = args.next() {
            let mut value = || args.next().with_context(|| format!("{a} needs a value; {USAGE}"));
            match a.as_str() {
                "--small" => o.small = true,
                "--skiff-only" => o.skiff_only = true,
                "--members" => {
                    o.members = value()?
                        .parse()
                        .ok()
                        .filter(|n| [1, 3, 5].contains(n))
                        .context("--members takes 1, 3 or 5")?;
                }
                "--out" => o.out = PathBuf::from(value()?),
                "--note" => o.note = value()?,
                "--phase-secs" => {
                    o.phase_secs =
                        Some(value()?.parse().context("--phase-secs takes whole seconds")?);
                }
                "--clients" => {
                    o.clients = Some(
                        value()?
                            .split(',')
                            .map(|c| {
                                c.trim()
                                    .parse::<usize>()
                                    .context("--clients takes a list like 64,256")
                            })
                            .collect::<Result<_>>()?,
                    );
                }
                "-h" | "--help" => return Ok(None),
                other => anyhow::bail!("unknown argument {other:?}; {USAGE}"),
            }
        }
        Ok(Some(o))
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let Some(opts) = Options::parse(std::env::args().skip(1))? else {
        println!("{USAGE}");
        return Ok(());
    };
    let Options { out, small, note, phase_secs, clients, members, skiff_only } = opts;
    let mut scale = if small {
        Scale { fill_writes: 2_000, phase: Duration::from_secs(2), watch_events: 400 }
    } else {
        Scale { fill_writes: 100_000, phase: Duration::from_secs(10), watch_events: 4_000 }
    };
    if let Some(secs) = phase_secs {
        scale.phase = Duration::from_secs(secs);
    }
    // `--clients 64,256` runs only those put phases and no read or watch phase (a profiling
    // run: no report is written).
    let client_counts = clients.unwrap_or_else(|| ALL_CLIENTS.to_vec());
    let before = loadavg();
    let tag = skiff_e2e::unique_tag();
    let base = std::env::temp_dir().join(format!("skiff-test-{tag}-bench"));

    // `--skiff-only` skips the anchor (for profiling runs; no report is written then). The
    // anchor is a 3-member etcd, so a run with another number of Skiff members (`--members 1`
    // against etcd bounds what replication may cost) writes no report either.
    let profiling = skiff_only || members != 3 || client_counts != ALL_CLIENTS;
    // Both clusters run for the whole benchmark, so their phases can interleave.
    let etcd = if skiff_only {
        None
    } else {
        eprintln!("starting etcd 3.4 (3 members)");
        Some(Etcd::start(&base.join("etcd"))?)
    };
    eprintln!("starting Skiff ({members} members)");
    let masters = Masters::start(&format!("{tag}-bench"), members)?;
    let mut systems = Vec::new();
    if let Some(etcd) = &etcd {
        let pids: Vec<u32> = etcd.children.iter().map(Child::id).collect();
        let dirs: Vec<PathBuf> = (0..3).map(|i| etcd.dir.join(format!("e{i}"))).collect();
        systems.push(System::connect("etcd", &etcd.clients, pids, dirs).await?);
    }
    let endpoints: Vec<String> =
        masters.specs.iter().map(skiff_e2e::masters::MemberSpec::client_url).collect();
    let dirs: Vec<PathBuf> = masters.specs.iter().map(|s| s.data_dir.clone()).collect();
    systems.push(System::connect("skiff", &endpoints, masters.pids(), dirs).await?);
    let mut results = run_systems(&systems, &scale, &client_counts).await?;
    let skiff_result = results.pop().expect("Skiff's result");
    let etcd_result = results.pop().unwrap_or(serde_json::Value::Null);
    if profiling {
        for s in &masters.specs {
            if let Ok((_, body)) = skiff_e2e::masters::http_get(s.metrics_port, "/metrics") {
                let lines: Vec<&str> = body
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
                    .collect();
                eprintln!("--- {} metrics\n{}", s.name, lines.join("\n"));
            }
        }
        // The etcd data dir inside it went with `Etcd`'s drop; the parent stays otherwise.
        let _ = std::fs::remove_dir_all(&base);
        return Ok(());
    }
    drop(masters);
    let _ = std::fs::remove_dir_all(&base);

    let meta = json!({
        "scale": if small { "small smoke scale" } else { "full scale" },
        "fill_writes": scale.fill_writes,
        "phase_seconds": scale.phase.as_secs(),
        "loadavg_before": before,
        "loadavg_after": loadavg(),
        "note": note,
        "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get),
    });
    std::fs::create_dir_all(&out)?;
    let all = json!({"meta": meta, "etcd": etcd_result, "skiff": skiff_result});
    std::fs::write(out.join("store.json"), serde_json::to_string_pretty(&all)?)?;
    std::fs::write(out.join("store.md"), report(&all["etcd"], &all["skiff"], &all["meta"]))?;
    eprintln!("wrote {}", out.join("store.md").display());
    Ok(())
}
