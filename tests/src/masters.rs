//! Clusters of real `skiff-master` processes on loopback for end-to-end tests: each member has
//! its own data dir under `/tmp/skiff-test-<tag>`, is stopped by PID (SIGKILL on demand, as a
//! crash), can be restarted with the same flags, and everything is removed in `Drop`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{free_port, wait};

/// The `skiff-master` binary next to the running test (built by `cargo build -p skiff-master`
/// if missing).
pub fn master_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("SKIFF_MASTER_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe()?;
    // A binary (not a test) sits next to skiff-master already.
    if let Some(sibling) = exe.parent().map(|d| d.join("skiff-master")).filter(|b| b.exists()) {
        return Ok(sibling);
    }
    let dir = exe.parent().and_then(Path::parent).context("test binary has no target dir")?;
    let bin = dir.join("skiff-master");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo).args(["build", "-p", "skiff-master"]).status()?;
        if !st.success() {
            bail!("building skiff-master failed");
        }
    }
    Ok(bin)
}

/// One member's fixed flags.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub metrics_port: u16,
    /// Port of the member's Kubernetes API (used when the cluster runs API servers).
    pub api_port: u16,
    pub data_dir: PathBuf,
}

impl MemberSpec {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `host:port` for etcdctl (with a scheme, etcdctl 3.4 sends the whole URL as the HTTP/2
    /// authority for some commands, which strict HTTP/2 servers refuse).
    pub fn client_endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// A cluster of `skiff-master run` processes.
pub struct Masters {
    pub dir: PathBuf,
    pub specs: Vec<MemberSpec>,
    children: Vec<Option<Child>>,
    bin: PathBuf,
    initial_cluster: String,
    /// Extra `run` flags for every member (the API server's, when enabled).
    extra: Vec<String>,
    /// Store flags for every member.
    store_flags: Vec<String>,
}

impl Masters {
    /// Starts `n` members as a new cluster and waits until they serve the etcd API.
    pub fn start(tag: &str, n: usize) -> Result<Self> {
        Self::start_with(tag, n, None, &[])
    }

    /// Like [`Masters::start`], with extra store flags for every member (say, a small
    /// `--snapshot-count`).
    pub fn start_with_store_flags(tag: &str, n: usize, flags: &[&str]) -> Result<Self> {
        Self::start_with(tag, n, None, flags)
    }

    /// Starts `n` members, each also running the API server (PKI from `skiff-master init`,
    /// a token file, an audit log per member, `watch_history` events per resource).
    pub fn start_with_api(tag: &str, n: usize, watch_history: usize) -> Result<Self> {
        Self::start_with(tag, n, Some(watch_history), &[])
    }

    fn start_with(tag: &str, n: usize, api: Option<usize>, store_flags: &[&str]) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("skiff-test-{tag}-masters"));
        fs::create_dir_all(&dir)?;
        let mut specs = Vec::new();
        for i in 0..n {
            specs.push(MemberSpec {
                name: format!("m{i}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                metrics_port: free_port()?,
                api_port: free_port()?,
                data_dir: dir.join(format!("m{i}")),
            });
        }
        let initial_cluster = specs
            .iter()
            .map(|s| format!("{}={}", s.name, s.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut me = Self {
            dir,
            specs,
            children: (0..n).map(|_| None).collect(),
            bin: master_binary()?,
            initial_cluster,
            extra: Vec::new(),
            store_flags: store_flags.iter().map(|f| (*f).to_string()).collect(),
        };
        if let Some(history) = api {
            let pki = me.dir.join("pki");
            let server = format!("https://127.0.0.1:{}", me.specs[0].api_port);
            let out = me.ctl(&[
                "init",
                "--pki-dir",
                &pki.display().to_string(),
                "--address",
                "127.0.0.1",
                "--server",
                &server,
            ])?;
            if !out.status.success() {
                bail!("skiff-master init failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            fs::write(
                me.dir.join("tokens.csv"),
                format!("{},token-user,1001,\"dev\"\n", crate::api::TEST_TOKEN),
            )?;
            me.extra = vec![
                "--pki-dir".into(),
                pki.display().to_string(),
                "--token-file".into(),
                me.dir.join("tokens.csv").display().to_string(),
                "--api-watch-history".into(),
                history.to_string(),
            ];
        }
        for i in 0..n {
            me.spawn(i)?;
        }
        me.wait_ready()?;
        if api.is_some() {
            let ports: Vec<u16> = me.specs.iter().map(|s| s.api_port).collect();
            wait::until("every API server ready", Duration::from_mins(1), || {
                Ok(ports.iter().all(|p| crate::api::https_ready(*p)))
            })?;
        }
        Ok(me)
    }

    /// The admin kubeconfig pointing at member `i`'s API server.
    pub fn kubeconfig(&self, i: usize) -> Result<PathBuf> {
        let base = fs::read_to_string(self.dir.join("pki/admin.kubeconfig"))?;
        let url = format!("https://127.0.0.1:{}", self.specs[i].api_port);
        let text = base.replace(&format!("https://127.0.0.1:{}", self.specs[0].api_port), &url);
        let path = self.dir.join(format!("m{i}.kubeconfig"));
        fs::write(&path, text)?;
        Ok(path)
    }

    /// Member `i`'s API URL.
    pub fn api_url(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.specs[i].api_port)
    }

    /// Member `i`'s audit log.
    pub fn audit_log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("m{i}-audit.log"))
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let s = &self.specs[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", s.name)))?;
        let child = Command::new(&self.bin)
            .args(["run", "--name", &s.name])
            .arg("--data-dir")
            .arg(&s.data_dir)
            .args(["--listen-client", &format!("127.0.0.1:{}", s.client_port)])
            .args(["--listen-peer", &format!("127.0.0.1:{}", s.peer_port)])
            .args(["--listen-metrics", &format!("127.0.0.1:{}", s.metrics_port)])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--heartbeat-interval-ms", "100", "--election-timeout-ms", "800"])
            .args(&self.store_flags)
            .args(&self.extra)
            .args(if self.extra.is_empty() {
                Vec::new()
            } else {
                vec![
                    "--api-listen".to_owned(),
                    format!("127.0.0.1:{}", s.api_port),
                    "--audit-log".to_owned(),
                    self.dir.join(format!("{}-audit.log", s.name)).display().to_string(),
                ]
            })
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting skiff-master")?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// Waits until every running member reports a leader in `/health`.
    pub fn wait_ready(&mut self) -> Result<()> {
        let ports: Vec<u16> = (0..self.specs.len())
            .filter(|i| self.children[*i].is_some())
            .map(|i| self.specs[i].metrics_port)
            .collect();
        wait::until("every member healthy", Duration::from_mins(1), || {
            for (i, c) in self.children.iter_mut().enumerate() {
                if let Some(st) = c.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    let why = format!("member m{i} exited ({st}); log:\n{}", self.log_tail(i));
                    return Err(wait::GiveUp(why).into());
                }
            }
            Ok(ports.iter().all(|p| http_get(*p, "/health").is_ok_and(|(code, _)| code == 200)))
        })
    }

    pub fn log_tail(&self, i: usize) -> String {
        let log = fs::read_to_string(self.dir.join(format!("{}.log", self.specs[i].name)))
            .unwrap_or_default();
        log.lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kills member `i` with SIGKILL (a crash) and reaps it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts a killed member with the same flags and data dir.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill9(i);
        self.spawn(i)
    }

    /// PIDs of the running members.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().flatten().map(Child::id).collect()
    }

    /// Process id of member `i`, if running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(Child::id)
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.children[i].is_some()
    }

    /// All client endpoints, comma separated, for etcdctl.
    pub fn endpoints(&self) -> String {
        self.specs.iter().map(MemberSpec::client_endpoint).collect::<Vec<_>>().join(",")
    }

    /// Runs the `skiff-master` binary with `args` (client subcommands).
    pub fn ctl(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(&self.bin).args(args).stdin(Stdio::null()).output()?)
    }

    pub fn binary(&self) -> &Path {
        &self.bin
    }
}

impl Drop for Masters {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill9(i);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A minimal HTTP/1.0 GET on loopback: `(status code, body)`.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let code =
        buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no HTTP status")?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}
