//! Harness for the API server suites: a private etcd (or Skiff store) process, an API server
//! with its own PKI, and kubectl with a fresh HOME and cache directory. Everything lives under
//! `/tmp/skiff-test-<tag>` and is removed on drop; processes are stopped by PID.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use skiff_apiserver::{Config, Running, http::Limits, pki};
use tokio_util::sync::CancellationToken;

use crate::{free_port, wait};

/// A test directory removed on drop.
#[derive(Debug)]
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(tag: &str, what: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("skiff-test-{tag}-{what}"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn stop_child(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    for _ in 0..250 {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A private etcd 3.4 (`/usr/bin/etcd`) on loopback ports.
#[derive(Debug)]
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    _dir: TestDir,
}

impl Etcd {
    pub fn start(tag: &str) -> Result<Self> {
        let dir = TestDir::new(tag, "etcd")?;
        let (client, peer) = (free_port()?, free_port()?);
        let endpoint = format!("http://127.0.0.1:{client}");
        let log = fs::File::create(dir.0.join("etcd.log"))?;
        let child = Command::new("etcd")
            .args(["--name", "skt", "--data-dir"])
            .arg(dir.0.join("data"))
            .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &format!("skt=http://127.0.0.1:{peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd")?;
        let me = Self { child, endpoint, _dir: dir };
        wait::until("etcd to listen", Duration::from_secs(30), || {
            Ok(std::net::TcpStream::connect(("127.0.0.1", client)).is_ok())
        })?;
        Ok(me)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// An API server running in-process on its own runtime.
pub struct ApiServer {
    rt: Option<tokio::runtime::Runtime>,
    running: Option<Running>,
    pub url: String,
    pub kubeconfig: PathBuf,
    pub pki_dir: PathBuf,
    pub audit_log: PathBuf,
    pub token_file: PathBuf,
    _dir: TestDir,
}

/// The bearer token the harness's token file accepts (user `token-user`, group `dev`).
pub const TEST_TOKEN: &str = "skiff-test-token";

impl ApiServer {
    pub fn start(tag: &str, store_endpoints: &[String]) -> Result<Self> {
        Self::start_with(tag, store_endpoints, Limits::default())
    }

    pub fn start_with(tag: &str, store_endpoints: &[String], limits: Limits) -> Result<Self> {
        let dir = TestDir::new(tag, "apiserver")?;
        let port = free_port()?;
        let url = format!("https://127.0.0.1:{port}");
        let pki_dir = dir.0.join("pki");
        let files = pki::init(&pki_dir, &["127.0.0.1".to_owned()], "10.96.0.1", &url)?;
        let token_file = dir.0.join("tokens.csv");
        fs::write(&token_file, format!("{TEST_TOKEN},token-user,1001,\"dev\"\n"))?;
        let audit_log = dir.0.join("audit.log");
        let config = Config {
            listen: format!("127.0.0.1:{port}").parse()?,
            store_endpoints: store_endpoints.to_vec(),
            tls_cert: files.serving_cert.clone(),
            tls_key: files.serving_key.clone(),
            client_ca: files.ca_cert.clone(),
            token_file: Some(token_file.clone()),
            audit_log: Some(audit_log.clone()),
            service_cidr: "10.96.0.0/12".to_owned(),
            node_port_range: "30000-32767".to_owned(),
            advertise: format!("127.0.0.1:{port}"),
            limits,
        };
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let running = rt.block_on(skiff_apiserver::start(config, CancellationToken::new()))?;
        let me = Self {
            rt: Some(rt),
            running: Some(running),
            url,
            kubeconfig: files.admin_kubeconfig,
            pki_dir,
            audit_log,
            token_file,
            _dir: dir,
        };
        let server = me.running.as_ref().map(|r| std::sync::Arc::clone(&r.server));
        wait::until("apiserver ready", Duration::from_secs(30), || {
            Ok(server.as_ref().is_some_and(|s| s.ready.load(std::sync::atomic::Ordering::Relaxed)))
        })?;
        Ok(me)
    }

    /// The CA certificate (PEM path).
    pub fn ca(&self) -> PathBuf {
        self.pki_dir.join("ca.crt")
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let (Some(rt), Some(running)) = (self.rt.as_ref(), self.running.take()) {
            rt.block_on(running.shutdown());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// kubectl (the installed dispatcher) with a private HOME and discovery cache.
pub struct Kubectl {
    home: TestDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn new(tag: &str, kubeconfig: &Path) -> Result<Self> {
        Ok(Self { home: TestDir::new(tag, "kubectl-home")?, kubeconfig: kubeconfig.to_owned() })
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.env("HOME", &self.home.0)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .arg("--cache-dir")
            .arg(self.home.0.join("cache"))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs kubectl; returns its output whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        self.command(args).output().with_context(|| format!("running kubectl {}", args.join(" ")))
    }

    /// Runs kubectl and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}):\nstdout: {}\nstderr: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl with `input` on stdin and requires success.
    pub fn ok_stdin(&self, args: &[&str], input: &str) -> Result<String> {
        use std::io::Write;
        let mut c = self.command(args);
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn()?;
        child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}):\nstdout: {}\nstderr: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl and requires failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if out.status.success() {
            bail!(
                "kubectl {} unexpectedly succeeded: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    pub fn home(&self) -> &Path {
        &self.home.0
    }
}

/// Whether an HTTPS server answers `/readyz` with 200 on loopback `port` (checked with curl,
/// which the test machines have; the certificate is not verified for this probe).
pub fn https_ready(port: u16) -> bool {
    Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2"])
        .arg(format!("https://127.0.0.1:{port}/readyz"))
        .output()
        .is_ok_and(|o| o.stdout == b"200")
}

/// Brings the `skiff-master` binary next to the test binaries up to date (`cargo test` builds
/// only the test's own dependencies, so a binary left from an earlier build could be stale).
fn build_master() -> Result<()> {
    if std::env::var_os("SKIFF_MASTER_BIN").is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let release = exe.ancestors().any(|p| p.file_name().is_some_and(|n| n == "release"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "skiff-master", "--bin", "skiff-master"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("building skiff-master")?;
    ensure!(status.success(), "building skiff-master failed");
    Ok(())
}

/// What serves the API in a suite: three `skiff-master` processes (store replica + API server
/// each), or, with `SKIFF_API_BACKEND=etcd`, etcd 3.4 plus an in-process API server (for
/// debugging the API server alone).
pub enum Cluster {
    Masters(crate::masters::Masters),
    Etcd { api: Box<ApiServer>, etcd: Etcd },
}

impl Cluster {
    /// Starts the suite backend; `watch_history` events are kept per resource.
    pub fn start(tag: &str, watch_history: usize) -> Result<Self> {
        if std::env::var("SKIFF_API_BACKEND").is_ok_and(|b| b == "etcd") {
            let etcd = Etcd::start(tag)?;
            let api = ApiServer::start_with(
                tag,
                std::slice::from_ref(&etcd.endpoint),
                Limits { watch_history, ..Limits::default() },
            )?;
            return Ok(Self::Etcd { api: Box::new(api), etcd });
        }
        build_master()?;
        Ok(Self::Masters(crate::masters::Masters::start_with_api(tag, 3, watch_history)?))
    }

    /// An admin kubeconfig for member `i`.
    pub fn kubeconfig(&self, i: usize) -> Result<PathBuf> {
        match self {
            Self::Masters(m) => m.kubeconfig(i),
            Self::Etcd { api, .. } => Ok(api.kubeconfig.clone()),
        }
    }

    pub fn url(&self, i: usize) -> String {
        match self {
            Self::Masters(m) => m.api_url(i),
            Self::Etcd { api, .. } => api.url.clone(),
        }
    }

    pub fn ca(&self) -> PathBuf {
        match self {
            Self::Masters(m) => m.dir.join("pki/ca.crt"),
            Self::Etcd { api, .. } => api.ca(),
        }
    }

    pub fn audit_log(&self, i: usize) -> PathBuf {
        match self {
            Self::Masters(m) => m.audit_log(i),
            Self::Etcd { api, .. } => api.audit_log.clone(),
        }
    }

    /// Kills member `i` (SIGKILL) and starts it again with the same data; waits until its API
    /// server is ready. Only for the masters backend.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        match self {
            Self::Masters(m) => {
                m.restart(i)?;
                m.wait_ready()?;
                let port = m.specs[i].api_port;
                wait::until("restarted API server ready", Duration::from_mins(1), || {
                    Ok(https_ready(port))
                })
            }
            Self::Etcd { .. } => bail!("restart needs the masters backend"),
        }
    }

    /// The etcd endpoints of the store (for etcdctl-level checks).
    pub fn store_endpoints(&self) -> String {
        match self {
            Self::Masters(m) => m.endpoints(),
            Self::Etcd { etcd, .. } => etcd.endpoint.clone(),
        }
    }
}
