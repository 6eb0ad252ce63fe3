//! Running `iptables-restore`, `iptables-save` and `iptables` for the iptables proxy mode, in the
//! host network namespace or a named one, with the nft or legacy backend.
//!
//! The backend in use is the one `iptables --version` reports (`nf_tables` or `legacy`), as
//! kube-proxy does; it can also be chosen explicitly. Rule text is built by the pure generator in
//! `proxy::iptables`; this module only runs the tools and reports their own error messages.

use std::fmt;
use std::io::{self, Write as _};
use std::process::{Command, Output, Stdio};

use super::netns::{NetNs, NetNsError};

/// Which iptables implementation programs the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesBackend {
    /// `iptables-nft`: rules stored as nftables objects.
    Nft,
    /// `iptables-legacy`: the `x_tables` kernel API.
    Legacy,
}

impl IptablesBackend {
    fn tool(self, tool: &str) -> String {
        match self {
            IptablesBackend::Nft => format!("iptables-nft{tool}"),
            IptablesBackend::Legacy => format!("iptables-legacy{tool}"),
        }
    }

    /// Parses `iptables --version` output (`iptables v1.8.9 (nf_tables)`).
    pub fn from_version(text: &str) -> Option<Self> {
        if text.contains("(nf_tables)") {
            Some(IptablesBackend::Nft)
        } else if text.contains("(legacy)") {
            Some(IptablesBackend::Legacy)
        } else {
            None
        }
    }
}

impl fmt::Display for IptablesBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IptablesBackend::Nft => "nft",
            IptablesBackend::Legacy => "legacy",
        })
    }
}

/// Why an iptables command failed.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("cannot tell the iptables backend from `iptables --version`: {0:?}")]
    UnknownBackend(String),
    #[error(transparent)]
    NetNs(#[from] NetNsError),
}

/// iptables tools bound to one backend and one network namespace (by name; `None` = host).
#[derive(Debug, Clone)]
pub struct Iptables {
    backend: IptablesBackend,
    netns: Option<String>,
}

impl Iptables {
    /// Uses the backend `iptables --version` reports.
    pub fn detect(netns: Option<&str>) -> Result<Self, IptablesError> {
        let probe = Iptables { backend: IptablesBackend::Nft, netns: netns.map(str::to_owned) };
        let out = probe.exec("iptables", &["--version"], None)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let backend =
            IptablesBackend::from_version(&text).ok_or(IptablesError::UnknownBackend(text))?;
        Ok(Iptables { backend, netns: netns.map(str::to_owned) })
    }

    pub fn new(backend: IptablesBackend, netns: Option<&str>) -> Self {
        Iptables { backend, netns: netns.map(str::to_owned) }
    }

    pub fn backend(&self) -> IptablesBackend {
        self.backend
    }

    /// `iptables-restore [--noflush] -w` with `rules` on stdin.
    pub fn restore(&self, rules: &str, noflush: bool) -> Result<(), IptablesError> {
        let tool = self.backend.tool("-restore");
        let mut args = vec!["-w", "5"];
        if noflush {
            args.push("--noflush");
        }
        self.exec(&tool, &args, Some(rules.as_bytes())).map(drop)
    }

    /// `iptables-save -t <table>`.
    pub fn save(&self, table: &str) -> Result<String, IptablesError> {
        let tool = self.backend.tool("-save");
        let out = self.exec(&tool, &["-t", table], None)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Makes sure `-A <chain> <rule>` exists in `table` (checks with `-C`, inserts at the top
    /// with `-I` otherwise), as kube-proxy does for its jumps from the built-in chains.
    pub fn ensure_rule(
        &self,
        table: &str,
        chain: &str,
        rule: &[&str],
    ) -> Result<(), IptablesError> {
        let tool = self.backend.tool("");
        let mut check = vec!["-w", "5", "-t", table, "-C", chain];
        check.extend_from_slice(rule);
        if self.exec(&tool, &check, None).is_ok() {
            return Ok(());
        }
        let mut insert = vec!["-w", "5", "-t", table, "-I", chain];
        insert.extend_from_slice(rule);
        self.exec(&tool, &insert, None).map(drop)
    }

    /// Deletes `-A <chain> <rule>` if present.
    pub fn delete_rule(
        &self,
        table: &str,
        chain: &str,
        rule: &[&str],
    ) -> Result<(), IptablesError> {
        let tool = self.backend.tool("");
        let mut args = vec!["-w", "5", "-t", table, "-D", chain];
        args.extend_from_slice(rule);
        match self.exec(&tool, &args, None) {
            Ok(_) | Err(IptablesError::Failed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn exec(
        &self,
        tool: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<Output, IptablesError> {
        let run = || -> Result<Output, IptablesError> {
            let mut cmd = Command::new(tool);
            cmd.args(args)
                .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let command = format!("{tool} {}", args.join(" "));
            let spawn_err = |source| IptablesError::Spawn { command: command.clone(), source };
            let mut child = cmd.spawn().map_err(spawn_err)?;
            // A write error (the tool quit early) shows up as its exit status and stderr below.
            let written = match (stdin, child.stdin.take()) {
                (Some(input), Some(mut pipe)) => pipe.write_all(input),
                _ => Ok(()),
            };
            let out = child.wait_with_output().map_err(spawn_err)?;
            if out.status.success() {
                written.map_err(spawn_err)?;
            }
            if out.status.success() {
                Ok(out)
            } else {
                let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
                Err(IptablesError::Failed { command, stderr })
            }
        };
        match &self.netns {
            // A child forked from a thread inside the namespace starts in that namespace.
            Some(name) => NetNs::open(name)?.run(run)?,
            None => run(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_is_read_from_the_version_line() {
        assert_eq!(
            IptablesBackend::from_version("iptables v1.8.9 (nf_tables)\n"),
            Some(IptablesBackend::Nft)
        );
        assert_eq!(
            IptablesBackend::from_version("iptables v1.8.7 (legacy)\n"),
            Some(IptablesBackend::Legacy)
        );
        assert_eq!(IptablesBackend::from_version("iptables v1.4"), None);
    }
}
