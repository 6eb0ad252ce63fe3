//! Named network namespaces, compatible with `ip netns`: a namespace is kept alive by a bind mount
//! of its nsfs file at `/run/netns/<name>`, so `ip netns list`, `ip -n <name>` and
//! `ip netns exec` see the ones we create and we see theirs.
//!
//! Code runs inside a namespace through [`NetNs::run`], on a dedicated thread that joins the
//! namespace and exits afterwards; the caller's threads never change namespace. Sockets created
//! inside keep belonging to that namespace after the closure returns.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::thread;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Where named network namespaces live (the iproute2 convention).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    #[error("invalid network namespace name {0:?}: use 1-64 characters from [A-Za-z0-9_.-]")]
    InvalidName(String),
    #[error("network namespace {0:?} already exists")]
    Exists(String),
    #[error("network namespace {0:?} does not exist")]
    NotFound(String),
    #[error("network namespace {name:?}: {op}: {source}")]
    Io { name: String, op: &'static str, source: io::Error },
    #[error("network namespace {name:?}: {op}: {source}")]
    Sys { name: String, op: &'static str, source: nix::Error },
    #[error("network namespace {0:?}: the thread running inside it panicked")]
    Panicked(String),
}

/// A named network namespace. Created ones are deleted on drop; opened ones are left alone.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
    owned: bool,
}

impl NetNs {
    /// Creates a new, empty network namespace (only a down `lo`) named `name`.
    pub fn create(name: &str) -> Result<Self, NetNsError> {
        validate(name)?;
        let io = |op| move |source| NetNsError::Io { name: name.to_owned(), op, source };
        fs::create_dir_all(NETNS_RUN_DIR).map_err(io("create /run/netns"))?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        match File::options().write(true).create_new(true).open(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(NetNsError::Exists(name.to_owned()));
            }
            Err(e) => return Err(io("create mount point")(e)),
        }
        // The namespace is born on a throwaway thread and pinned by bind-mounting that thread's
        // nsfs file, exactly as `ip netns add` does.
        let target = path.clone();
        let pinned = thread::spawn(move || -> Result<(), (&'static str, nix::Error)> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| ("unshare", e))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| ("bind mount", e))
        })
        .join();
        let ns = NetNs { name: name.to_owned(), path, owned: true };
        match pinned {
            Ok(Ok(())) => Ok(ns),
            Ok(Err((op, source))) => {
                drop(ns); // removes the mount point
                Err(NetNsError::Sys { name: name.to_owned(), op, source })
            }
            Err(_) => Err(NetNsError::Panicked(name.to_owned())),
        }
    }

    /// Opens an existing named namespace without taking ownership of it.
    pub fn open(name: &str) -> Result<Self, NetNsError> {
        validate(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        if !path.exists() {
            return Err(NetNsError::NotFound(name.to_owned()));
        }
        Ok(NetNs { name: name.to_owned(), path, owned: false })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The nsfs path, e.g. for `CNI_NETNS` or `ip netns exec`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a new thread that has joined this namespace, and returns its result.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, NetNsError> {
        let file = File::open(&self.path).map_err(|source| NetNsError::Io {
            name: self.name.clone(),
            op: "open",
            source,
        })?;
        thread::scope(|s| {
            s.spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetNsError::Sys {
                    name: self.name.clone(),
                    op: "setns",
                    source,
                })?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetNsError::Panicked(self.name.clone()))?
        })
    }

    /// Deletes the namespace now and reports failure (drop does the same, silently).
    pub fn delete(mut self) -> Result<(), NetNsError> {
        self.owned = false;
        remove(&self.name, &self.path)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.owned {
            let _ = remove(&self.name, &self.path);
        }
    }
}

/// Unmounts and removes `/run/netns/<name>`. The namespace itself disappears once no process,
/// socket or mount refers to it any more; its veths are destroyed with it.
fn remove(name: &str, path: &Path) -> Result<(), NetNsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (creation failed half-way); still remove the file.
        Ok(()) | Err(nix::Error::EINVAL) => {}
        Err(nix::Error::ENOENT) => return Err(NetNsError::NotFound(name.to_owned())),
        Err(source) => return Err(NetNsError::Sys { name: name.to_owned(), op: "umount", source }),
    }
    fs::remove_file(path).map_err(|source| NetNsError::Io {
        name: name.to_owned(),
        op: "remove mount point",
        source,
    })
}

fn validate(name: &str) -> Result<(), NetNsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok { Ok(()) } else { Err(NetNsError::InvalidName(name.to_owned())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for good in ["a", "skt-1f3a.node_0", &"x".repeat(64)] {
            assert!(validate(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "with space", "ü", &"x".repeat(65)] {
            assert!(matches!(validate(bad), Err(NetNsError::InvalidName(_))), "{bad}");
        }
    }
}
