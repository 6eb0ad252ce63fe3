//! `cargo xtask setup`: installs the Debian packages Skiff needs and verifies the machine.
//!
//! Idempotent: packages already installed are not touched, and when nothing is missing apt is not
//! run at all, so a second run changes nothing. The report at the end checks what the project
//! actually relies on (tool versions, kernel eBPF support, cgroup2), not just that apt succeeded.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{euid, output, run};

/// A Debian package and what Skiff uses it for (the table in DEVELOPERS.md mirrors this).
pub struct Package {
    pub name: &'static str,
    pub why: &'static str,
}

pub const PACKAGES: &[Package] = &[
    Package { name: "clang-19", why: "compiles ebpf/*.c; libclang for bindgen (rocksdb)" },
    Package { name: "libbpf-dev", why: "bpf_helpers.h and BTF map macros for ebpf/*.c" },
    Package { name: "bpftool", why: "inspecting programs, maps and links; kernel feature probe" },
    Package { name: "gcc", why: "the static pause binary for the sandbox image" },
    Package { name: "libc6-dev", why: "static libc for the pause binary; asm headers for eBPF" },
    Package { name: "protobuf-compiler", why: "protoc for tonic/prost code generation" },
    Package { name: "librocksdb-dev", why: "the store's RocksDB (system library, crate 0.20.1)" },
    Package { name: "containerd", why: "the container runtime behind CRI" },
    Package { name: "runc", why: "the OCI runtime containerd drives" },
    Package { name: "busybox-static", why: "the local busybox test image" },
    Package { name: "iproute2", why: "network namespaces, veths, routes" },
    Package { name: "iptables", why: "the iptables proxy mode and its comparison" },
    Package { name: "etcd-server", why: "the store benchmark's anchor (etcd 3.4)" },
    Package { name: "etcd-client", why: "etcdctl, for the etcd API compatibility suite" },
    Package { name: "wrk", why: "load generator for the data-plane benchmark" },
    Package { name: "nginx-light", why: "backends for the data-plane benchmark" },
    Package { name: "gnuplot-nox", why: "the data-plane benchmark's PNG plot" },
    Package { name: "curl", why: "HTTP probes in end-to-end tests and benchmarks" },
    Package {
        name: "python3-venv",
        why: "the venv the Python client suite installs kubernetes into",
    },
];

pub fn run_setup() -> Result<()> {
    if euid()? != 0 {
        bail!(
            "cargo xtask setup installs system packages and must run as root (try: sudo -E cargo xtask setup)"
        );
    }
    let missing: Vec<&str> =
        PACKAGES.iter().map(|p| p.name).filter(|name| !is_installed(name)).collect();
    if missing.is_empty() {
        println!("setup: all {} packages are installed; nothing to do", PACKAGES.len());
    } else {
        println!("setup: installing {} missing package(s): {}", missing.len(), missing.join(" "));
        install(&missing)?;
    }
    let report = verify();
    print!("{}", report.render());
    if report.failed() {
        bail!("setup: the machine is not ready (see FAIL lines above)");
    }
    println!("setup: ready");
    Ok(())
}

fn is_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|s| s.trim() == "install ok installed")
}

fn install(packages: &[&str]) -> Result<()> {
    // Keep apt from starting daemons (nginx, containerd, etcd) as a side effect: Skiff starts its
    // own instances with private config and stops them by PID. Containers usually ship this
    // policy already; add it only for the duration of the install when they do not.
    const POLICY: &str = "/usr/sbin/policy-rc.d";
    let own_policy = !Path::new(POLICY).exists();
    if own_policy {
        write_executable(
            POLICY,
            "#!/bin/sh\n# added by cargo xtask setup during apt-get install\nexit 101\n",
        )?;
    }
    let result = (|| {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages))
    })();
    if own_policy {
        fs::remove_file(POLICY).with_context(|| format!("removing {POLICY}"))?;
    }
    result
}

fn write_executable(path: &str, content: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, content).with_context(|| format!("writing {path}"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {path}"))
}

/// One line of the readiness report.
struct Check {
    what: &'static str,
    detail: String,
    ok: bool,
}

struct Report(Vec<Check>);

impl Report {
    fn failed(&self) -> bool {
        self.0.iter().any(|c| !c.ok)
    }

    fn render(&self) -> String {
        let mut s = String::from("\nmachine report\n");
        for c in &self.0 {
            let verdict = if c.ok { "ok  " } else { "FAIL" };
            let _ = writeln!(s, "  {verdict}  {:<16} {}", c.what, c.detail);
        }
        s
    }
}

fn verify() -> Report {
    let mut checks = Vec::new();
    let mut check = |what, result: Result<String>| {
        let (detail, ok) = match result {
            Ok(d) => (d, true),
            Err(e) => (format!("{e:#}"), false),
        };
        checks.push(Check { what, detail, ok });
    };
    let tools: &[(&str, &str, &[&str])] = &[
        ("clang-19", "clang-19", &["--version"]),
        ("bpftool", "bpftool", &["version"]),
        ("gcc", "gcc", &["--version"]),
        ("protoc", "protoc", &["--version"]),
        ("containerd", "containerd", &["--version"]),
        ("runc", "runc", &["--version"]),
        ("ctr", "ctr", &["--version"]),
        ("ip", "ip", &["-V"]),
        ("iptables", "iptables", &["--version"]),
        ("iptables-restore", "iptables-restore", &["--version"]),
        ("busybox", "busybox", &["--help"]),
        ("etcd", "etcd", &["--version"]),
        ("etcdctl", "etcdctl", &["version"]),
        ("wrk", "wrk", &["-v"]),
        ("nginx", "nginx", &["-v"]),
    ];
    for &(what, program, args) in tools {
        check(what, tool_version(program, args));
    }
    check("librocksdb", library("/usr/include/rocksdb/c.h", "librocksdb-dev"));
    check("libbpf headers", library("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"));
    check("kernel", kernel_version());
    check("BTF", exists("/sys/kernel/btf/vmlinux"));
    check("eBPF programs", ebpf_program_types());
    check("cgroup2", cgroup2_mount());
    check("bpffs", bpffs());
    Report(checks)
}

/// First non-empty line a tool prints about itself (some print to stderr, some exit non-zero
/// after printing usage, like `wrk -v`, so both streams are read and the status is ignored).
fn tool_version(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("{program} not found"))?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
        .with_context(|| format!("{program} printed no version"))
}

fn library(header: &str, package: &str) -> Result<String> {
    if !Path::new(header).exists() {
        bail!("{header} missing");
    }
    let version = output(Command::new("dpkg-query").args(["-W", "-f=${Version}", package]))?;
    Ok(format!("{package} {version}"))
}

fn exists(path: &str) -> Result<String> {
    if Path::new(path).exists() { Ok(path.to_owned()) } else { bail!("{path} missing") }
}

fn kernel_version() -> Result<String> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_owned();
    let mut parts =
        release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (6, 6) {
        bail!("{release}: tcx attachment needs Linux 6.6 or newer");
    }
    Ok(format!("{release} (tcx: yes)"))
}

/// The program types the data plane loads, as the kernel reports them through bpftool.
fn ebpf_program_types() -> Result<String> {
    let json = output(Command::new("bpftool").args(["-j", "feature", "probe", "kernel"]))?;
    let probe: serde_json::Value = serde_json::from_str(&json).context("parsing bpftool output")?;
    let needed = ["sched_cls", "cgroup_sock_addr", "xdp"];
    let missing: Vec<_> = needed
        .iter()
        .filter(|t| {
            probe["program_types"][format!("have_{t}_prog_type")] != serde_json::Value::Bool(true)
        })
        .collect();
    if !missing.is_empty() {
        bail!("kernel lacks program types {missing:?}");
    }
    Ok(needed.join(", "))
}

fn cgroup2_mount() -> Result<String> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    let at = mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .and_then(|f| f.get(1).map(|s| (*s).to_owned()))
        .context("no cgroup2 mount (the socket load balancer attaches at the cgroup2 root)")?;
    Ok(format!("mounted at {at}"))
}

fn bpffs() -> Result<String> {
    let supported = fs::read_to_string("/proc/filesystems")?.lines().any(|l| l.ends_with("\tbpf"));
    if !supported {
        bail!("kernel has no bpf filesystem (needed to pin maps across agent restarts)");
    }
    let mounted = fs::read_to_string("/proc/self/mounts")?.lines().any(|l| l.contains(" bpf "));
    Ok(if mounted {
        "mounted".into()
    } else {
        "supported (not mounted; the agent mounts it)".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn developers_md_lists_every_package() {
        let doc = fs::read_to_string(crate::util::workspace_root().join("DEVELOPERS.md")).unwrap();
        for p in PACKAGES {
            let row = format!("| `{}` | {} |", p.name, p.why);
            assert!(doc.contains(&row), "DEVELOPERS.md lacks the row {row}");
        }
        let rows = doc.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(rows, PACKAGES.len(), "DEVELOPERS.md lists packages setup does not install");
    }
}
