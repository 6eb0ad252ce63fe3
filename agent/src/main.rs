//! `skiff-agent`: the node agent binary. Today it runs the Service proxy on its own
//! (`skiff-agent proxy`), fed from a file of Services and EndpointSlices; the kubelet and the API
//! source arrive with their issues.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use skiff_agent::kernel::bpf_lb::LbMapSizes;
use skiff_agent::kernel::iptables::IptablesBackend;
use skiff_agent::proxy::standalone::{self, Mode, StandaloneConfig};

#[derive(Parser)]
#[command(name = "skiff-agent", about = "Skiff node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Ebpf,
    Iptables,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Auto,
    Nft,
    Legacy,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Service proxy from a file (or `-` for stdin) of Services and EndpointSlices.
    Proxy(ProxyArgs),
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// Data plane to program.
    #[arg(long, env = "SKIFF_PROXY_MODE", value_enum, default_value = "ebpf")]
    mode: ModeArg,
    /// JSON file (v1 List, array or stream of objects); re-read when it changes.
    #[arg(long, env = "SKIFF_PROXY_SOURCE")]
    source: PathBuf,
    /// This node's name (endpoints with this nodeName are local).
    #[arg(long, env = "SKIFF_NODE_NAME", default_value = "node")]
    node: String,
    /// Where maps and links are pinned (a versioned directory is created below).
    #[arg(long, env = "SKIFF_PROXY_PIN_ROOT", default_value = "/sys/fs/bpf/skiff/node")]
    pin_root: PathBuf,
    /// cgroup2 directory the socket programs attach to.
    #[arg(long, env = "SKIFF_PROXY_CGROUP", default_value = "/sys/fs/cgroup/unified")]
    cgroup: PathBuf,
    #[arg(long, env = "SKIFF_PROXY_MAP_SERVICES", default_value_t = 65_536)]
    map_services: u32,
    #[arg(long, env = "SKIFF_PROXY_MAP_BACKENDS", default_value_t = 65_536)]
    map_backends: u32,
    #[arg(long, env = "SKIFF_PROXY_MAP_SOCK_REVNAT", default_value_t = 262_144)]
    map_sock_revnat: u32,
    #[arg(long, env = "SKIFF_PROXY_MAP_AFFINITY", default_value_t = 65_536)]
    map_affinity: u32,
    /// Named network namespace for iptables rules (default: the host's).
    #[arg(long, env = "SKIFF_PROXY_NETNS")]
    netns: Option<String>,
    #[arg(long, env = "SKIFF_PROXY_IPTABLES_BACKEND", value_enum, default_value = "auto")]
    iptables_backend: BackendArg,
    /// Restore whole filter/nat tables instead of --noflush updates (a namespace of our own only).
    #[arg(long, env = "SKIFF_PROXY_IPTABLES_FULL_TABLES")]
    iptables_full_tables: bool,
    #[arg(long, env = "SKIFF_CLUSTER_CIDR")]
    cluster_cidr: Option<String>,
    /// Sync once, print a JSON report and exit (the data plane stays programmed).
    #[arg(long)]
    once: bool,
    /// With --once: then change one endpoint this many times and report each sync's latency.
    #[arg(long, default_value_t = 0)]
    churn: usize,
    /// Milliseconds between churn changes.
    #[arg(long, default_value_t = 100)]
    churn_interval_ms: u64,
    /// Remove what a proxy of this mode left (pins and links, or chains) and exit.
    #[arg(long)]
    cleanup: bool,
    /// Address for /healthz and /metrics.
    #[arg(long, env = "SKIFF_PROXY_HEALTHZ", default_value = "0.0.0.0:10256")]
    healthz: SocketAddr,
    #[arg(long, env = "SKIFF_PROXY_GC_INTERVAL_S", default_value_t = 30)]
    gc_interval_s: u64,
    /// eBPF mode: interface that receives NodePort traffic (tc programs attach there).
    #[arg(long, env = "SKIFF_PROXY_NODEPORT_IFACE", requires = "node_ip")]
    nodeport_iface: Option<String>,
    /// This node's address for NodePort traffic.
    #[arg(long, env = "SKIFF_NODE_IP")]
    node_ip: Option<std::net::Ipv4Addr>,
    /// eBPF mode: further node interfaces as `IFACE=ADDRESS` (e.g. towards other nodes) that
    /// get the tc programs too; NodePort flows to a backend on another node that leave by one
    /// get its address as their source. Repeat or separate with commas.
    #[arg(long, env = "SKIFF_PROXY_NODE_IFACES", value_delimiter = ',', value_parser = parse_iface)]
    node_iface: Vec<(String, std::net::Ipv4Addr)>,
    /// NodePort flows idle this long are removed from the conntrack map.
    #[arg(long, env = "SKIFF_PROXY_CONNTRACK_IDLE_S", default_value_t = 3600)]
    conntrack_idle_s: u64,
}

/// `IFACE=ADDRESS` of `--node-iface`.
fn parse_iface(s: &str) -> Result<(String, std::net::Ipv4Addr), String> {
    let (iface, ip) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected IFACE=ADDRESS"))?;
    if iface.is_empty() {
        return Err(format!("{s:?}: empty interface name"));
    }
    let ip = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
    Ok((iface.to_owned(), ip))
}

/// The tc NodePort interfaces: `--nodeport-iface` with `--node-ip`, then `--node-iface`. One
/// of the first pair without the other, or an interface named twice (its second attachment
/// would silently replace the first's program, with the other address), is an error.
fn node_ifaces(
    iface: Option<String>,
    ip: Option<std::net::Ipv4Addr>,
    more: Vec<(String, std::net::Ipv4Addr)>,
) -> Result<Vec<(String, std::net::Ipv4Addr)>, String> {
    if iface.is_some() != ip.is_some() {
        return Err("--nodeport-iface and --node-ip go together".into());
    }
    let all: Vec<_> = iface.zip(ip).into_iter().chain(more).collect();
    for (i, (name, _)) in all.iter().enumerate() {
        if all[..i].iter().any(|(n, _)| n == name) {
            return Err(format!("interface {name} given twice (--nodeport-iface/--node-iface)"));
        }
    }
    Ok(all)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Proxy(a) = Cli::parse().command;
    let nodeport = match node_ifaces(a.nodeport_iface.clone(), a.node_ip, a.node_iface.clone()) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("skiff-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = StandaloneConfig {
        mode: match a.mode {
            ModeArg::Ebpf => Mode::Ebpf,
            ModeArg::Iptables => Mode::Iptables,
        },
        source: a.source,
        node: a.node,
        pin_root: a.pin_root,
        cgroup: a.cgroup,
        map_sizes: LbMapSizes {
            services: a.map_services,
            backends: a.map_backends,
            revnat: a.map_services,
            sock_revnat: a.map_sock_revnat,
            affinity: a.map_affinity,
        },
        netns: a.netns,
        iptables_backend: match a.iptables_backend {
            BackendArg::Auto => None,
            BackendArg::Nft => Some(IptablesBackend::Nft),
            BackendArg::Legacy => Some(IptablesBackend::Legacy),
        },
        cluster_cidr: a.cluster_cidr,
        iptables_full_tables: a.iptables_full_tables,
        once: a.once,
        churn: a.churn,
        churn_interval: Duration::from_millis(a.churn_interval_ms),
        healthz: Some(a.healthz),
        gc_interval: Duration::from_secs(a.gc_interval_s),
        nodeport,
        conntrack_idle: Duration::from_secs(a.conntrack_idle_s),
    };
    let result =
        if a.cleanup { standalone::cleanup(&cfg).map(|()| None) } else { standalone::run(&cfg) };
    match result {
        Ok(Some(report)) => {
            match serde_json::to_string(&report) {
                Ok(json) => println!("{json}"),
                Err(e) => eprintln!("skiff-agent: {e}"),
            }
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::node_ifaces;

    #[test]
    fn node_interfaces_are_checked() {
        let ip = "192.0.2.5".parse().unwrap();
        let other = "198.51.100.5".parse().unwrap();
        assert_eq!(node_ifaces(None, None, vec![]), Ok(vec![]));
        assert_eq!(
            node_ifaces(Some("eth0".into()), Some(ip), vec![("eth1".into(), other)]),
            Ok(vec![("eth0".into(), ip), ("eth1".into(), other)])
        );
        assert!(node_ifaces(Some("eth0".into()), None, vec![]).is_err());
        assert!(node_ifaces(None, Some(ip), vec![]).is_err());
        let twice = node_ifaces(Some("eth0".into()), Some(ip), vec![("eth0".into(), other)]);
        assert!(twice.is_err_and(|e| e.contains("eth0 given twice")));
    }
}
