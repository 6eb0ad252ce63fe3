//! `skiff-master`: parses flags, sets up tracing, and calls into the `skiff_master` library.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use skiff_master::{RunConfig, ctl};

#[derive(Parser)]
#[command(name = "skiff-master", about = "Skiff control-plane member")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a member (store replica with the etcd v3 API).
    Run(Box<RunConfig>),
    /// Create the cluster PKI: CA, API serving certificate, admin client certificate and
    /// admin kubeconfig (existing CA kept).
    Init {
        /// Directory to write into (then `run --pki-dir`).
        #[arg(long, env = "SKIFF_PKI_DIR")]
        pki_dir: PathBuf,
        /// Master addresses (IPs or names) for the serving certificate's SANs.
        #[arg(
            long = "address",
            env = "SKIFF_ADDRESSES",
            value_delimiter = ',',
            default_value = "127.0.0.1"
        )]
        addresses: Vec<String>,
        /// API URL written into the admin kubeconfig (default: `https://FIRST_ADDRESS:6443`).
        #[arg(long, env = "SKIFF_SERVER")]
        server: Option<String>,
        /// Service CIDR (its first address is a SAN: the `kubernetes` Service).
        #[arg(long, env = "SKIFF_SERVICE_CIDR", default_value = "10.96.0.0/12")]
        service_cidr: String,
    },
    /// Backups.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Cluster membership (through any member's peer URL; changes run on the leader).
    #[command(subcommand)]
    Member(MemberCmd),
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Save a consistent backup of a running member.
    Save {
        file: PathBuf,
        /// etcd client URL of a member.
        #[arg(long, env = "SKIFF_ENDPOINT", default_value = "http://127.0.0.1:2379")]
        endpoint: String,
    },
    /// Create a fresh data dir from a backup; then start the member with --initial-cluster.
    Restore {
        file: PathBuf,
        #[arg(long, env = "SKIFF_DATA_DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum MemberCmd {
    List {
        #[arg(long, env = "SKIFF_PEER_ENDPOINT", default_value = "http://127.0.0.1:2380")]
        peer: String,
    },
    /// Add a member (joint consensus); start it with --initial-cluster-state existing.
    Add {
        name: String,
        peer_url: String,
        #[arg(long, default_value = "")]
        client_url: String,
        #[arg(long, env = "SKIFF_PEER_ENDPOINT", default_value = "http://127.0.0.1:2380")]
        peer: String,
    },
    /// Remove a member by name or hex id.
    Remove {
        member: String,
        #[arg(long, env = "SKIFF_PEER_ENDPOINT", default_value = "http://127.0.0.1:2380")]
        peer: String,
    },
}

fn print_members(ms: &[skiff_store::node::MemberInfo]) {
    for m in ms {
        println!(
            "{:x}, {}, {}, {}, {}{}",
            m.id,
            m.member.name,
            m.member.peer_url,
            m.member.client_url,
            if m.is_learner { "learner" } else { "voter" },
            if m.is_leader { ", leader" } else { "" }
        );
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else { return std::future::pending().await };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn main_inner(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(config) => {
            skiff_master::run(*config, async {
                shutdown_signal().await;
                // A second signal forces the exit.
                tokio::spawn(async {
                    shutdown_signal().await;
                    std::process::exit(130);
                });
            })
            .await?;
        }
        Command::Init { pki_dir, addresses, server, service_cidr } => {
            let ranges = skiff_apiserver::alloc::Ranges::parse(&service_cidr, "30000-32767")?;
            let first = addresses.first().cloned().unwrap_or_else(|| "127.0.0.1".to_owned());
            let server = server.unwrap_or_else(|| format!("https://{first}:6443"));
            let files = skiff_apiserver::pki::init(
                &pki_dir,
                &addresses,
                &ranges.first_ip().to_string(),
                &server,
            )?;
            println!(
                "PKI written to {}; admin kubeconfig: {}",
                pki_dir.display(),
                files.admin_kubeconfig.display()
            );
        }
        Command::Snapshot(SnapshotCmd::Save { file, endpoint }) => {
            let s = ctl::snapshot_save(&endpoint, &file).await?;
            println!(
                "Snapshot saved at {} ({} bytes, revision {}, {} key versions, sha256 {})",
                file.display(),
                s.bytes,
                s.revision,
                s.versions,
                s.sha256
            );
        }
        Command::Snapshot(SnapshotCmd::Restore { file, data_dir }) => {
            let rev = ctl::snapshot_restore(&file, &data_dir)?;
            println!("Restored {} into {} at revision {rev}", file.display(), data_dir.display());
        }
        Command::Member(MemberCmd::List { peer }) => {
            print_members(&ctl::member_list(&peer).await?);
        }
        Command::Member(MemberCmd::Add { name, peer_url, client_url, peer }) => {
            print_members(&ctl::member_add(&peer, &name, &peer_url, &client_url).await?);
        }
        Command::Member(MemberCmd::Remove { member, peer }) => {
            print_members(&ctl::member_remove(&peer, &member).await?);
        }
    }
    Ok(())
}

/// mimalloc instead of glibc malloc: ~6% less member CPU per put at 64 clients, ~11% at 256
/// (docs/store.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = main_inner(cli).await {
        eprintln!("skiff-master: {e:#}");
        std::process::exit(1);
    }
}
