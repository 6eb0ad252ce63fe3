//! `cargo xtask bench dataplane`: Service routing measured three ways in one run — direct to the
//! backend IP (the physical limit), iptables (kube-proxy's rules, from `skiff-agent proxy`) and
//! eBPF (socket LB, from `skiff-agent proxy`) — with nginx backends and wrk, at several Service
//! counts (4 endpoints each; the measured Service sorts last, where iptables is slowest).
//!
//! Topology: client netns (wrk, inside a bench cgroup2 directory) → node netns (iptables rules)
//! → backend netns (one nginx on 4 addresses). Per Service count the three modes run back to
//! back, each from a clean state. Sync figures come from `skiff-agent proxy --once --churn`.
//! New connections/s are the median of `--repeat` `Connection: close` runs per mode, in rounds
//! that each run every mode once (direct, iptables-nft, iptables-legacy, eBPF), each round
//! starting one mode later, so machine drift spreads over all modes instead of one.
//!
//! Each mode connects from a client address of its own (`Mode::client_addr`). The backends keep
//! a `TIME_WAIT` socket (60 s) per closed connection, and TCP timestamps and initial sequence
//! numbers are offset per (source, destination) address pair of the *client's* socket, which is
//! the backend address for direct and eBPF but the VIP for iptables. Sharing one client address,
//! a mode's SYN that reuses a port the previous mode left in `TIME_WAIT` carried a timestamp
//! from another offset, was dropped by the backend's PAWS check and retransmitted after 1 s, 3 s…
//! (measured: `TcpExtPAWSTimewait` on the backend, `TCPSynRetrans` on the client), which
//! collapsed iptables to ≈ 300 connections/s. Per-mode sources keep the modes' 4-tuples apart.
//! Writes `docs/benchmarks/dataplane.{md,json,png}`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::util::{build_release, euid, output, workspace_root};

/// Options of the benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct DataplaneArgs {
    /// Service counts to measure (4 endpoints each).
    #[arg(long, value_delimiter = ',', default_value = "1,1000,5000,10000")]
    pub services: Vec<usize>,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Concurrent wrk connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// `Connection: close` runs per mode and Service count, interleaved across modes (each
    /// round starts with the next mode); the report gives the median.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Endpoint changes timed per mode and Service count (iptables: at most 3 above 1,000).
    #[arg(long, default_value_t = 20)]
    pub churn: usize,
    /// Where to write the report (default: docs/benchmarks).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Note for the report, e.g. that the machine was shared.
    #[arg(long, default_value = "")]
    pub note: String,
}

const VIP: &str = "10.96.255.254";
const BACKENDS: [&str; 4] = ["10.210.2.11", "10.210.2.12", "10.210.2.13", "10.210.2.14"];
/// The client netns's addresses, one per mode (see the module comment).
const CLIENTS: [&str; 4] = ["10.210.1.2", "10.210.1.3", "10.210.1.4", "10.210.1.5"];

struct Env {
    tag: String,
    dir: PathBuf,
    cgroup: PathBuf,
    bpffs: PathBuf,
    nginx: Option<Child>,
    agent: PathBuf,
}

impl Env {
    fn ns(&self, role: &str) -> String {
        format!("skiff-bench-{}-{role}", self.tag)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.nginx.take() {
            // SIGTERM to the master (`ip netns exec` became nginx): it stops its workers too;
            // SIGKILL would orphan them.
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.bpffs).status();
        for role in ["client", "node", "backend", "scratch"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir(&self.cgroup);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    output(Command::new("ip").args(args)).map(drop)
}

#[expect(
    clippy::too_many_lines,
    clippy::many_single_char_names,
    reason = "one linear topology script"
)]
fn setup(agent: PathBuf) -> Result<Env> {
    let tag = format!("{:x}", std::process::id() & 0xffff);
    let dir = std::env::temp_dir().join(format!("skiff-bench-{tag}"));
    fs::create_dir_all(&dir)?;
    let cg_root = if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        "/sys/fs/cgroup/unified"
    } else {
        "/sys/fs/cgroup"
    };
    let cgroup = PathBuf::from(cg_root).join(format!("skiff-bench-{tag}"));
    let bpffs = dir.join("bpf");
    let mut env = Env { tag, dir, cgroup, bpffs, nginx: None, agent };
    fs::create_dir_all(&env.cgroup).context("bench cgroup")?;
    fs::create_dir_all(&env.bpffs)?;
    output(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&env.bpffs))?;
    let (c, n, b, s) = (env.ns("client"), env.ns("node"), env.ns("backend"), env.ns("scratch"));
    for ns in [&c, &n, &b, &s] {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    let t = &env.tag;
    let (vc, vn, vm, vb) =
        (format!("sbc{t}"), format!("sbn{t}"), format!("sbm{t}"), format!("sbb{t}"));
    ip(&["-n", &c, "link", "add", &vc, "type", "veth", "peer", "name", &vn, "netns", &n])?;
    ip(&["-n", &n, "link", "add", &vm, "type", "veth", "peer", "name", &vb, "netns", &b])?;
    for a in CLIENTS {
        ip(&["-n", &c, "addr", "add", &format!("{a}/24"), "dev", &vc])?;
    }
    ip(&["-n", &c, "link", "set", &vc, "up"])?;
    ip(&["-n", &c, "route", "add", "default", "via", "10.210.1.1", "src", CLIENTS[0]])?;
    ip(&["-n", &n, "addr", "add", "10.210.1.1/24", "dev", &vn])?;
    ip(&["-n", &n, "addr", "add", "10.210.2.1/24", "dev", &vm])?;
    ip(&["-n", &n, "link", "set", &vn, "up"])?;
    ip(&["-n", &n, "link", "set", &vm, "up"])?;
    ip(&["-n", &n, "route", "add", "10.96.0.0/12", "dev", &vm])?;
    output(Command::new("ip").args([
        "netns",
        "exec",
        &n,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]))?;
    for a in BACKENDS {
        ip(&["-n", &b, "addr", "add", &format!("{a}/24"), "dev", &vb])?;
    }
    ip(&["-n", &b, "link", "set", &vb, "up"])?;
    ip(&["-n", &b, "route", "add", "default", "via", "10.210.2.1"])?;
    for ns in [&c, &b] {
        // Many short connections: reuse TIME_WAIT ports and widen the ephemeral range.
        let _ = output(Command::new("ip").args([
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_tw_reuse=1",
        ]));
        let _ = output(Command::new("ip").args([
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65000",
        ]));
    }
    let mut listen = String::new();
    for a in BACKENDS {
        let _ = writeln!(listen, "    listen {a}:8080 backlog=4096;");
    }
    let conf = format!(
        "worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx.err;\ndaemon off;\nevents {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 100000000;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n  fastcgi_temp_path {dir};\n  uwsgi_temp_path {dir};\n  scgi_temp_path {dir};\n  server {{\n{listen}    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
        dir = env.dir.display()
    );
    let conf_path = env.dir.join("nginx.conf");
    fs::write(&conf_path, conf)?;
    let child = Command::new("ip")
        .args(["netns", "exec", &b, "nginx", "-c"])
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    env.nginx = Some(child);
    // Wait until nginx answers.
    for _ in 0..100 {
        if Command::new("ip")
            .args([
                "netns",
                "exec",
                &c,
                "curl",
                "-sf",
                "-o",
                "/dev/null",
                "--max-time",
                "1",
                &format!("http://{}:8080/", BACKENDS[0]),
            ])
            .status()
            .is_ok_and(|s| s.success())
        {
            return Ok(env);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nginx did not answer")
}

/// N Services × 4 endpoints; the measured one (`zzzz-target`, the VIP) sorts last and points at
/// the nginx addresses, the others at addresses no one owns (never connected to).
fn services_json(n: usize) -> Value {
    let mut items = Vec::new();
    for i in 0..n {
        let target = i + 1 == n;
        let name = if target { "zzzz-target".to_owned() } else { format!("svc-{i:05}") };
        let vip = if target {
            VIP.to_owned()
        } else {
            format!("10.{}.{}.{}", 96 + (i >> 16), (i >> 8) & 255, i & 255)
        };
        let eps: Vec<Value> = if target {
            BACKENDS.iter().map(|a| json!({"addresses": [a]})).collect()
        } else {
            (0..4)
                .map(|k| {
                    let j = i * 4 + k;
                    json!({"addresses": [format!("10.211.{}.{}", (j >> 8) & 255, j & 255)]})
                })
                .collect()
        };
        items.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "bench"},
            "spec": {"clusterIP": vip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}));
        items.push(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": "bench", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": eps}));
    }
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    /// iptables-nft.
    Iptables,
    /// iptables-legacy, measured for new connections/s only (its sync times come from the
    /// `--noflush` runs in the scratch namespace).
    IptablesLegacy,
    Ebpf,
}

/// Every mode, in the order of the first round.
const MODES: [Mode; 4] = [Mode::Direct, Mode::Iptables, Mode::IptablesLegacy, Mode::Ebpf];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Iptables => "iptables",
            Mode::IptablesLegacy => "iptables-legacy",
            Mode::Ebpf => "ebpf",
        }
    }

    /// The client address this mode's connections come from.
    fn client_addr(self) -> &'static str {
        match self {
            Mode::Direct => CLIENTS[0],
            Mode::Iptables => CLIENTS[1],
            Mode::Ebpf => CLIENTS[2],
            Mode::IptablesLegacy => CLIENTS[3],
        }
    }
}

/// Makes the client netns's connections leave from `addr` (the default route's source hint).
fn use_client_addr(env: &Env, addr: &str) -> Result<()> {
    ip(&["-n", &env.ns("client"), "route", "replace", "default", "via", "10.210.1.1", "src", addr])
}

/// Client SYN retransmissions and backend PAWS rejections in `TIME_WAIT` so far (cumulative).
fn stall_counters(env: &Env) -> (u64, u64) {
    let read = |role: &str, field: &str| -> u64 {
        let text = output(Command::new("ip").args([
            "netns",
            "exec",
            &env.ns(role),
            "cat",
            "/proc/net/netstat",
        ]))
        .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .filter(|p| p.len() == 2 && p[0].starts_with("TcpExt:"))
            .find_map(|p| {
                let i = p[0].split_whitespace().position(|f| f == field)?;
                p[1].split_whitespace().nth(i)?.parse().ok()
            })
            .unwrap_or(0)
    };
    (read("client", "TCPSynRetrans"), read("backend", "PAWSTimewait"))
}

fn agent_cmd(env: &Env, mode: Mode, source: &Path) -> Command {
    let mut cmd = Command::new(&env.agent);
    cmd.arg("proxy").arg("--source").arg(source).env("RUST_LOG", "warn");
    match mode {
        Mode::Ebpf => {
            cmd.args(["--mode", "ebpf", "--pin-root"])
                .arg(env.bpffs.join("skiff"))
                .arg("--cgroup")
                .arg(&env.cgroup);
        }
        Mode::Direct | Mode::Iptables | Mode::IptablesLegacy => {
            let backend = if mode == Mode::IptablesLegacy { "legacy" } else { "nft" };
            cmd.args([
                "--mode",
                "iptables",
                "--iptables-backend",
                backend,
                "--iptables-full-tables",
                "--netns",
                &env.ns("node"),
            ]);
        }
    }
    cmd
}

/// Runs `skiff-agent proxy --once --churn k` and returns its JSON report.
fn agent_sync(env: &Env, mode: Mode, source: &Path, churn: usize) -> Result<Value> {
    let mut cmd = agent_cmd(env, mode, source);
    cmd.args(["--once", "--churn", &churn.to_string(), "--churn-interval-ms", "50"]);
    let out = output(&mut cmd)?;
    serde_json::from_str(out.trim()).with_context(|| format!("agent report: {out}"))
}

fn agent_cleanup(env: &Env, mode: Mode, source: &Path) -> Result<()> {
    let mut cmd = agent_cmd(env, mode, source);
    cmd.arg("--cleanup");
    output(&mut cmd).map(drop)
}

/// Runs wrk from the client netns inside the bench cgroup; returns (requests/s, p50 ms, p99 ms,
/// wrk's socket-error line or "").
fn wrk(env: &Env, url: &str, close: bool, args: &DataplaneArgs) -> Result<(f64, f64, f64, String)> {
    let mut script = format!(
        "echo $$ > {}/cgroup.procs && exec ip netns exec {} wrk --latency -t1 -c{} -d{}s",
        env.cgroup.display(),
        env.ns("client"),
        args.connections,
        args.duration
    );
    if close {
        script.push_str(" -H 'Connection: close'");
    }
    let _ = write!(script, " {url}");
    let out = output(Command::new("sh").args(["-c", &script]))?;
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{out}"))?;
    let pct = |p: &str| -> f64 {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .map_or(f64::NAN, |v| parse_duration_ms(v.trim()))
    };
    let errors = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|e| e.trim().to_owned())
        .unwrap_or_default();
    Ok((rps, pct("50%"), pct("99%"), errors))
}

/// `cargo xtask connect-latency`: `count` sequential `connect()`s to `addr` (each closed at
/// once); prints `{"p50_us":…,"p99_us":…,"failed":…}`. Run by the benchmark inside the client
/// namespace and the bench cgroup, so each connect goes through the mode under test.
pub fn connect_latency(addr: std::net::SocketAddr, count: usize) -> Result<()> {
    let mut us = Vec::with_capacity(count);
    let mut failed = 0usize;
    for _ in 0..count {
        let t = std::time::Instant::now();
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => {
                us.push(t.elapsed().as_secs_f64() * 1e6);
                drop(s);
            }
            Err(_) => failed += 1,
        }
    }
    us.sort_by(f64::total_cmp);
    let pick = |q: f64| percentile(&us, q);
    println!("{}", json!({"p50_us": pick(0.5), "p99_us": pick(0.99), "failed": failed}));
    Ok(())
}

/// Runs `connect-latency` in the client netns and bench cgroup; returns (p50 µs, p99 µs,
/// connects that failed or timed out after 2 s, which the percentiles leave out).
fn measure_connect(env: &Env, addr: &str) -> Result<(f64, f64, u64)> {
    let me = std::env::current_exe().context("own path")?;
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec ip netns exec {} {} connect-latency {addr} 2000",
        env.cgroup.display(),
        env.ns("client"),
        me.display()
    );
    let out = output(Command::new("sh").args(["-c", &script]))?;
    let v: Value =
        serde_json::from_str(out.trim()).with_context(|| format!("connect-latency said: {out}"))?;
    Ok((
        v["p50_us"].as_f64().unwrap_or(f64::NAN),
        v["p99_us"].as_f64().unwrap_or(f64::NAN),
        v["failed"].as_u64().unwrap_or(0),
    ))
}

fn parse_duration_ms(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

fn stats(v: &Value) -> (f64, f64, f64, f64) {
    let mut c: Vec<f64> = v["change_sync_seconds"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    c.sort_by(f64::total_cmp);
    let pick = |q: f64| percentile(&c, q) * 1000.0;
    let wall = v["churn_wall_seconds"].as_f64().unwrap_or(f64::NAN);
    let cpu = v["churn_cpu_seconds"].as_f64().unwrap_or(f64::NAN);
    (v["full_sync_seconds"].as_f64().unwrap_or(f64::NAN), pick(0.5), pick(0.99), 100.0 * cpu / wall)
}

/// One `Connection: close` wrk run.
#[derive(Debug, Clone)]
struct CloseRun {
    conn_per_s: f64,
    syn_retransmits: u64,
    paws_drops: u64,
    /// wrk's socket-error line ("" when none).
    errors: String,
    p50_ms: f64,
    p99_ms: f64,
}

fn url_of(mode: Mode) -> String {
    if mode == Mode::Direct {
        format!("http://{}:8080/", BACKENDS[0])
    } else {
        format!("http://{VIP}:80/")
    }
}

/// A `Connection: close` run from the mode's client address, with its stall counters.
fn close_run(env: &Env, mode: Mode, args: &DataplaneArgs) -> Result<CloseRun> {
    use_client_addr(env, mode.client_addr())?;
    let (retrans_before, paws_before) = stall_counters(env);
    let close = wrk(env, &url_of(mode), true, args);
    let (retrans_after, paws_after) = stall_counters(env);
    let (conn_per_s, p50_ms, p99_ms, errors) = close?;
    Ok(CloseRun {
        conn_per_s,
        syn_retransmits: retrans_after.saturating_sub(retrans_before),
        paws_drops: paws_after.saturating_sub(paws_before),
        errors,
        p50_ms,
        p99_ms,
    })
}

/// Programs the mode (no churn), runs one `Connection: close` run, cleans up.
fn close_only(
    env: &Env,
    mode: Mode,
    n: usize,
    source: &Path,
    args: &DataplaneArgs,
) -> Result<CloseRun> {
    if mode != Mode::Direct {
        agent_sync(env, mode, source, 0)?;
    }
    println!("bench dataplane: {} × {n}: connections/s run", mode.name());
    let run = close_run(env, mode, args);
    if mode != Mode::Direct {
        agent_cleanup(env, mode, source)?;
    }
    run
}

/// Everything for one mode and Service count: programming and churn, a `Connection: close`
/// run, a keep-alive run, connect latency. Returns the report row and the close run.
fn measure_mode(
    env: &Env,
    mode: Mode,
    n: usize,
    source: &Path,
    args: &DataplaneArgs,
) -> Result<(Value, CloseRun)> {
    let churn = if mode == Mode::Iptables && n > 1000 { args.churn.min(3) } else { args.churn };
    let sync = match mode {
        Mode::Direct => Value::Null,
        m => agent_sync(env, m, source, churn)?,
    };
    println!("bench dataplane: {} × {n}: measuring", mode.name());
    let close = close_run(env, mode, args);
    let keep = wrk(env, &url_of(mode), false, args);
    let target =
        if mode == Mode::Direct { format!("{}:8080", BACKENDS[0]) } else { format!("{VIP}:80") };
    let connect = measure_connect(env, &target);
    if mode != Mode::Direct {
        agent_cleanup(env, mode, source)?;
    }
    let close = close?;
    let (req_s, _, _, keep_errors) = keep?;
    let (connect_p50, connect_p99, connect_failed) = connect?;
    let (full, ch50, ch99, cpu) =
        if sync.is_null() { (f64::NAN, f64::NAN, f64::NAN, f64::NAN) } else { stats(&sync) };
    println!(
        "  conn/s {:.0}  keep-alive req/s {req_s:.0}  p50 {:.3} ms  p99 {:.3} ms  full sync {full:.3} s  change p50 {ch50:.2} ms",
        close.conn_per_s, close.p50_ms, close.p99_ms
    );
    let row = json!({"mode": mode.name(), "services": n, "keepalive_req_per_s": req_s,
        "close_latency_p50_ms": close.p50_ms, "close_latency_p99_ms": close.p99_ms, "connect_p50_us": connect_p50, "connect_p99_us": connect_p99, "connect_failed": connect_failed,
        "full_sync_s": full, "change_p50_ms": ch50,
        "change_p99_ms": ch99, "churn_cpu_percent": cpu, "wrk_socket_errors_close": close.errors,
        "wrk_socket_errors_keepalive": keep_errors, "agent": sync});
    Ok((row, close))
}

#[expect(clippy::too_many_lines, reason = "the benchmark's one sequence of steps")]
pub fn run_dataplane(args: &DataplaneArgs) -> Result<()> {
    ensure!(
        euid()? == 0,
        "the data-plane benchmark needs root (network namespaces, eBPF, iptables)"
    );
    for tool in
        ["ip", "nginx", "wrk", "gnuplot", "iptables-nft-restore", "iptables-legacy-restore", "curl"]
    {
        ensure!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()?
                .success(),
            "{tool} is missing: run `cargo xtask setup`"
        );
    }
    let agent = build_release(&[("skiff-agent", "skiff-agent")])?.join("skiff-agent");
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let env = setup(agent)?;
    let mut rows = Vec::new();
    for &n in &args.services {
        ensure!(n >= 1, "a Service count must be at least 1");
        let source = env.dir.join(format!("services-{n}.json"));
        fs::write(&source, serde_json::to_vec(&services_json(n))?)?;
        // Round 0 measures everything once per mode; every round adds a `Connection: close`
        // run per mode, each round starting with the next mode, so drift hits all alike.
        let mut full_rows: Vec<Value> = Vec::new();
        let mut samples: Vec<(Mode, CloseRun)> = Vec::new();
        for round in 0..args.repeat.max(1) {
            for k in 0..MODES.len() {
                let mode = MODES[(round + k) % MODES.len()];
                if round == 0 && mode != Mode::IptablesLegacy {
                    let (row, close) = measure_mode(&env, mode, n, &source, args)?;
                    full_rows.push(row);
                    samples.push((mode, close));
                } else {
                    samples.push((mode, close_only(&env, mode, n, &source, args)?));
                }
            }
        }
        for mode in MODES {
            let runs: Vec<&CloseRun> =
                samples.iter().filter(|(m, _)| *m == mode).map(|(_, r)| r).collect();
            let mut rates: Vec<f64> = runs.iter().map(|r| r.conn_per_s).collect();
            rates.sort_by(f64::total_cmp);
            let median = median(&rates);
            let mut row = full_rows
                .iter()
                .find(|r| r["mode"] == mode.name())
                .cloned()
                .unwrap_or_else(|| json!({"mode": mode.name(), "services": n}));
            row["conn_per_s"] = json!(median);
            row["conn_per_s_runs"] = json!(runs.iter().map(|r| r.conn_per_s).collect::<Vec<_>>());
            row["close_syn_retransmits"] =
                json!(runs.iter().map(|r| r.syn_retransmits).sum::<u64>());
            row["close_paws_timewait_drops"] =
                json!(runs.iter().map(|r| r.paws_drops).sum::<u64>());
            let errors: Vec<&str> =
                runs.iter().map(|r| r.errors.as_str()).filter(|e| !e.is_empty()).collect();
            row["wrk_socket_errors_close"] = json!(errors.join("; "));
            if row.get("wrk_socket_errors_keepalive").is_none() {
                row["wrk_socket_errors_keepalive"] = json!("");
            }
            println!(
                "  {} × {n}: conn/s median {median:.0} of {:?}",
                mode.name(),
                rates.iter().map(|r| r.round()).collect::<Vec<_>>()
            );
            rows.push(row);
        }
    }
    // iptables-legacy sync time (its --noflush restore), in a namespace of its own.
    let mut legacy = Vec::new();
    for &n in &args.services {
        let source = env.dir.join(format!("services-{n}.json"));
        let mut cmd = Command::new(&env.agent);
        cmd.args([
            "proxy",
            "--mode",
            "iptables",
            "--iptables-backend",
            "legacy",
            "--netns",
            &env.ns("scratch"),
            "--once",
            "--churn",
            "3",
            "--source",
        ])
        .arg(&source)
        .env("RUST_LOG", "warn");
        let v: Value = serde_json::from_str(output(&mut cmd)?.trim())?;
        let mut clean = Command::new(&env.agent);
        clean
            .args([
                "proxy",
                "--mode",
                "iptables",
                "--iptables-backend",
                "legacy",
                "--netns",
                &env.ns("scratch"),
                "--cleanup",
                "--source",
            ])
            .arg(&source);
        output(&mut clean)?;
        let (full, ch50, _, _) = stats(&v);
        legacy.push(json!({"services": n, "full_sync_s": full, "change_p50_ms": ch50}));
    }
    write_report(args, &rows, &legacy, &load)
}

/// One table row per Service count with a cell for each mode (direct, iptables, eBPF).
fn per_mode_rows(md: &mut String, services: &[usize], cell: impl Fn(&str, usize) -> String) {
    for &n in services {
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} |",
            cell("direct", n),
            cell("iptables", n),
            cell("ebpf", n)
        );
    }
}

fn get(rows: &[Value], mode: &str, n: usize, field: &str) -> f64 {
    rows.iter()
        .find(|r| r["mode"] == mode && r["services"] == n)
        .and_then(|r| r[field].as_f64())
        .unwrap_or(f64::NAN)
}

#[expect(clippy::too_many_lines, reason = "one report, section by section")]
fn write_report(args: &DataplaneArgs, rows: &[Value], legacy: &[Value], load: &str) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(|| workspace_root().join("docs/benchmarks"));
    fs::create_dir_all(&out)?;
    let kernel =
        fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let wrk_v = output(Command::new("sh").args(["-c", "wrk -v 2>&1 | head -1"]))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let json = json!({"setup": {"kernel": kernel, "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "loadavg_at_start": load.trim(), "wrk": wrk_v, "duration_s": args.duration, "connections": args.connections, "note": args.note,
        "iptables": "iptables-nft, kube-proxy rule set loaded with one flushing restore of the filter and nat tables"},
        "results": rows, "iptables_legacy_noflush_sync": legacy});
    fs::write(out.join("dataplane.json"), serde_json::to_string_pretty(&json)? + "\n")?;

    let mut md = String::new();
    md.push_str("# Data-plane benchmark\n\nGenerated by `cargo xtask bench dataplane");
    if args.services != [1, 1000, 5000, 10000] {
        let list: Vec<String> = args.services.iter().map(ToString::to_string).collect();
        let _ = write!(md, " --services {}", list.join(","));
    }
    if args.repeat != 3 {
        let _ = write!(md, " --repeat {}", args.repeat);
    }
    let _ = writeln!(
        md,
        " --duration {}`; raw figures in `dataplane.json`, plot in `dataplane.png`.\n",
        args.duration
    );
    let _ = writeln!(
        md,
        "Setup: kernel {kernel}, {} CPUs, load average at start `{}`; {wrk_v}; wrk 1 thread, {} connections, {} s per run; one nginx worker on 4 addresses. Client (wrk), node (iptables) and backends (nginx) in three network namespaces joined by veths; each mode connects from a client address of its own, so no mode's SYNs meet the TIME_WAIT sockets another mode left on the backends. Each Service has 4 endpoints; the measured Service sorts last in `KUBE-SERVICES` (the iptables worst case). Direct = wrk to a backend address with no proxy state loaded. eBPF = socket LB (`skiff-agent proxy --mode ebpf`); iptables = kube-proxy's rule structure (`skiff-agent proxy --mode iptables`) on iptables-nft, loaded with one flushing `iptables-restore` of the filter and nat tables (iptables-nft `--noflush` restores of large rule sets are far slower; legacy `--noflush` sync times are listed separately).",
        json["setup"]["cpus"],
        load.trim(),
        args.connections,
        args.duration
    );
    if !args.note.is_empty() {
        let _ = writeln!(md, "\n**Note:** {}", args.note);
    }
    let _ = writeln!(
        md,
        "\n## New connections per second (`Connection: close`)\n\nMedian of {} runs per cell (the mean of the middle two for an even count), interleaved: each round runs every mode once, starting one mode later than the round before. iptables = iptables-nft, legacy = iptables-legacy (same rules, whole-table restore).\n\n| Services | direct | iptables | legacy | eBPF | eBPF / direct | eBPF / iptables | eBPF / legacy |\n|---|---|---|---|---|---|---|---|",
        args.repeat.max(1)
    );
    for &n in &args.services {
        let (d, i, l, e) = (
            get(rows, "direct", n, "conn_per_s"),
            get(rows, "iptables", n, "conn_per_s"),
            get(rows, "iptables-legacy", n, "conn_per_s"),
            get(rows, "ebpf", n, "conn_per_s"),
        );
        let _ = writeln!(
            md,
            "| {n} | {d:.0} | {i:.0} | {l:.0} | {e:.0} | {:.2}× | {:.2}× | {:.2}× |",
            e / d,
            e / i,
            e / l
        );
    }
    md.push_str("\nThe runs behind each median (connections/s, in run order):\n\n| Services | direct | iptables | legacy | eBPF |\n|---|---|---|---|---|\n");
    let runs = |m: &str, n: usize| -> String {
        rows.iter()
            .find(|r| r["mode"] == m && r["services"] == n)
            .and_then(|r| r["conn_per_s_runs"].as_array())
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_f64)
                    .map(|v| format!("{v:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    for &n in &args.services {
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} | {} |",
            runs("direct", n),
            runs("iptables", n),
            runs("iptables-legacy", n),
            runs("ebpf", n)
        );
    }
    md.push_str("\n## Keep-alive requests per second\n\n| Services | direct | iptables | eBPF | eBPF / direct |\n|---|---|---|---|---|\n");
    for &n in &args.services {
        let (d, i, e) = (
            get(rows, "direct", n, "keepalive_req_per_s"),
            get(rows, "iptables", n, "keepalive_req_per_s"),
            get(rows, "ebpf", n, "keepalive_req_per_s"),
        );
        let _ = writeln!(md, "| {n} | {d:.0} | {i:.0} | {e:.0} | {:.2}× |", e / d);
    }
    md.push_str("\n## Connect latency (2,000 sequential `connect()` calls, µs)\n\n| Services | direct p50 / p99 | iptables p50 / p99 | eBPF p50 / p99 |\n|---|---|---|---|\n");
    per_mode_rows(&mut md, &args.services, |m, n| {
        format!(
            "{:.0} / {:.0}",
            get(rows, m, n, "connect_p50_us"),
            get(rows, m, n, "connect_p99_us")
        )
    });
    md.push_str("\n## Stalls: client SYN retransmits / backend PAWS drops in TIME_WAIT during the `Connection: close` runs (all rounds); connects of the latency run that failed (2 s timeout, left out of the percentiles)\n\n| Services | direct | iptables | eBPF |\n|---|---|---|---|\n");
    per_mode_rows(&mut md, &args.services, |m, n| {
        format!(
            "{:.0} / {:.0}; {:.0}",
            get(rows, m, n, "close_syn_retransmits"),
            get(rows, m, n, "close_paws_timewait_drops"),
            get(rows, m, n, "connect_failed")
        )
    });
    md.push_str("\n## Request latency on new connections (wrk, from request sent to response; connect time not included), ms\n\n| Services | direct p50 / p99 | iptables p50 / p99 | eBPF p50 / p99 |\n|---|---|---|---|\n");
    per_mode_rows(&mut md, &args.services, |m, n| {
        format!(
            "{:.3} / {:.3}",
            get(rows, m, n, "close_latency_p50_ms"),
            get(rows, m, n, "close_latency_p99_ms")
        )
    });
    md.push_str("\n## Programming the data plane\n\nFull sync = all Services from empty; change = one endpoint removed from or re-added to an EndpointSlice, time from the tracker update until the kernel state is written (eBPF: maps updated; iptables: `iptables-restore` returned); CPU = agent plus its `iptables-restore` children during the churn, % of one core.\n\n| Services | eBPF full sync s | iptables-nft full sync s | iptables-legacy full sync s (`--noflush`) | eBPF change p50 / p99 ms | iptables-nft change p50 ms | iptables-legacy change p50 ms | eBPF CPU % | iptables CPU % |\n|---|---|---|---|---|---|---|---|---|\n");
    for &n in &args.services {
        let lg = legacy.iter().find(|l| l["services"] == n);
        let lf = lg.and_then(|l| l["full_sync_s"].as_f64()).unwrap_or(f64::NAN);
        let lc = lg.and_then(|l| l["change_p50_ms"].as_f64()).unwrap_or(f64::NAN);
        let _ = writeln!(
            md,
            "| {n} | {:.3} | {:.3} | {lf:.3} | {:.2} / {:.2} | {:.1} | {lc:.1} | {:.1} | {:.1} |",
            get(rows, "ebpf", n, "full_sync_s"),
            get(rows, "iptables", n, "full_sync_s"),
            get(rows, "ebpf", n, "change_p50_ms"),
            get(rows, "ebpf", n, "change_p99_ms"),
            get(rows, "iptables", n, "change_p50_ms"),
            get(rows, "ebpf", n, "churn_cpu_percent"),
            get(rows, "iptables", n, "churn_cpu_percent")
        );
    }
    let errors: Vec<String> = rows
        .iter()
        .filter(|r| r["wrk_socket_errors_close"] != "" || r["wrk_socket_errors_keepalive"] != "")
        .map(|r| {
            format!(
                "- {} × {}: close: {} / keep-alive: {}",
                r["mode"],
                r["services"],
                r["wrk_socket_errors_close"],
                r["wrk_socket_errors_keepalive"]
            )
        })
        .collect();
    if !errors.is_empty() {
        md.push_str("\nwrk socket errors (connect, read, write, timeout):\n\n");
        md.push_str(&errors.join("\n"));
        md.push('\n');
    }
    md.push_str("\nOn a shared 2-core machine: indicative, not precise (connections/s are medians of interleaved runs; the other figures are single runs). Only figures measured in this run are shown.\n");
    fs::write(out.join("dataplane.md"), md)?;

    // Plot: connections/s against Service count, one line per mode.
    let data = out.join("dataplane.dat");
    let mut dat = String::from("# services direct iptables ebpf iptables-legacy\n");
    for &n in &args.services {
        let _ = writeln!(
            dat,
            "{n} {} {} {} {}",
            get(rows, "direct", n, "conn_per_s"),
            get(rows, "iptables", n, "conn_per_s"),
            get(rows, "ebpf", n, "conn_per_s"),
            get(rows, "iptables-legacy", n, "conn_per_s")
        );
    }
    fs::write(&data, dat)?;
    let png = out.join("dataplane.png");
    let script = format!(
        "set terminal pngcairo size 800,500\nset output '{}'\nset title 'New connections/s vs Services (4 endpoints each)'\nset xlabel 'Services'\nset ylabel 'connections/s'\nset logscale x\nset key bottom left\nset grid\nset yrange [0:*]\nplot '{d}' using 1:2 with linespoints title 'direct', '{d}' using 1:3 with linespoints title 'iptables (nft)', '{d}' using 1:4 with linespoints title 'eBPF (socket LB)', '{d}' using 1:5 with linespoints title 'iptables (legacy)'\n",
        png.display(),
        d = data.display()
    );
    let gp = out.join("dataplane.gp");
    fs::write(&gp, script)?;
    let plotted = output(Command::new("gnuplot").arg(&gp));
    let _ = fs::remove_file(&gp);
    let _ = fs::remove_file(&data);
    plotted?;
    println!("bench dataplane: wrote {}", out.join("dataplane.md").display());
    Ok(())
}

/// The median of sorted `v` (the mean of the two middle values for an even count; NaN when
/// empty). `v[len / 2]` alone would report the larger of two runs for `--repeat 2`.
/// The `q` quantile of an ascending slice (nearest rank); NaN when empty.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "small index"
    )]
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn median(v: &[f64]) -> f64 {
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
    }
}

#[cfg(test)]
mod median_tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert!(median(&[]).is_nan());
        assert!((median(&[3.0]) - 3.0).abs() < f64::EPSILON);
        assert!((median(&[1.0, 2.0, 9.0]) - 2.0).abs() < f64::EPSILON);
        assert!((median(&[1.0, 3.0]) - 2.0).abs() < f64::EPSILON);
    }
}
