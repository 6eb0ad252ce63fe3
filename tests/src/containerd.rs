//! A private containerd instance for one test: own root, state, socket and `ctr` namespace,
//! started by the test and stopped by PID.
//!
//! Everything it creates is removed by [`Containerd::stop`] (which reports leftovers) or, if the
//! test panics first, by `Drop`: shims serving our socket, containerd itself, mounts under our
//! directory, cgroups and runc state of our namespace, and the directory.

use std::fs::{self, File};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use skiff_agent::containerd::ContainerdConfig;

use crate::wait;

/// A running private containerd.
#[derive(Debug)]
pub struct Containerd {
    child: Option<Child>,
    dir: PathBuf,
    config: ContainerdConfig,
    /// The `ctr` namespace (also the cgroup parent and runc root name) of this instance.
    namespace: String,
}

impl Containerd {
    /// Starts containerd under `/tmp/skiff-test-<tag>` and waits for its socket.
    pub fn start(tag: &str, sandbox_image: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("skiff-test-{tag}"));
        let config = ContainerdConfig::under(&dir, sandbox_image);
        for d in [&config.root, &config.state, &config.cni_bin_dir, &config.cni_conf_dir] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let config_path = dir.join("config.toml");
        fs::write(&config_path, config.render())?;
        let log = File::create(dir.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        // From here on, Drop cleans up whatever happens.
        let mut me =
            Containerd { child: Some(child), dir, config, namespace: format!("skt-{tag}") };
        let socket = me.config.socket.clone();
        wait::until("containerd to listen", Duration::from_secs(30), || {
            if let Some(status) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let why = format!("containerd exited ({status}); log:\n{}", me.log_tail());
                return Err(wait::GiveUp(why).into());
            }
            Ok(UnixStream::connect(&socket).is_ok())
        })?;
        Ok(me)
    }

    pub fn socket(&self) -> &Path {
        &self.config.socket
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A `ctr` command bound to this instance and namespace.
    pub fn ctr_command(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.config.socket).args(["--namespace", &self.namespace]);
        cmd
    }

    /// Runs `ctr <args>` and returns stdout; the error carries stderr.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr_command().args(args).stdin(Stdio::null()).output()?;
        ensure!(
            out.status.success(),
            "ctr {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops everything and fails if anything was left behind.
    pub fn stop(mut self) -> Result<()> {
        self.teardown();
        let mut leftovers = Vec::new();
        if !shims(&self.config.socket).is_empty() {
            leftovers.push("containerd shims".to_owned());
        }
        leftovers.extend(mounts_under(&self.dir).into_iter().map(|m| format!("mount {m}")));
        leftovers
            .extend(cgroups(&self.namespace).iter().map(|c| format!("cgroup {}", c.display())));
        if self.dir.exists() {
            leftovers.push(format!("directory {}", self.dir.display()));
        }
        ensure!(leftovers.is_empty(), "containerd test left behind: {}", leftovers.join(", "));
        Ok(())
    }

    fn teardown(&mut self) {
        for pid in shims(&self.config.socket) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        if let Some(mut child) = self.child.take() {
            #[expect(clippy::cast_possible_wrap, reason = "PIDs fit in i32")]
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let stopped = wait::until("containerd to exit", Duration::from_secs(10), || {
                Ok(child.try_wait()?.is_some())
            });
            if stopped.is_err() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for mount in mounts_under(&self.dir) {
            let _ = umount2(mount.as_str(), MntFlags::MNT_DETACH);
        }
        // Children before parents: deepest paths first.
        let mut groups = cgroups(&self.namespace);
        groups.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for group in groups {
            let _ = fs::remove_dir(group);
        }
        let _ = fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.namespace));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// PIDs of containerd shims serving `socket` (they carry `-address <socket>`).
fn shims(socket: &Path) -> Vec<Pid> {
    let socket = socket.to_string_lossy();
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
                args.first().is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"))
                    && args.iter().any(|a| *a == socket.as_bytes())
            })
        })
        .map(Pid::from_raw)
        .collect()
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    let mut found: Vec<String> = fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    found
}

/// Cgroup directories named after `namespace` (ctr's default cgroup is `/<namespace>/<id>`) in
/// every hierarchy, with their children.
fn cgroups(namespace: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else { return found };
    for h in hierarchies.filter_map(Result::ok) {
        let group = h.path().join(namespace);
        if group.is_dir() {
            if let Ok(children) = fs::read_dir(&group) {
                found.extend(
                    children.filter_map(Result::ok).map(|c| c.path()).filter(|p| p.is_dir()),
                );
            }
            found.push(group);
        }
    }
    found
}
