//! Flags of `skiff-master run` (each also an env var `SKIFF_*`) and their translation into
//! the store's configuration. Components added later extend [`RunConfig`] with their flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use skiff_store::StoreConfig;
use skiff_store::node::RaftTuning;
use skiff_store::raft::Member;
use skiff_store::raft::log_store::SyncControl;
use skiff_store::raft::network::NetControl;

/// A bad flag value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--initial-cluster: {0}")]
    InitialCluster(String),
    #[error("--initial-cluster does not name this member ({0})")]
    NotAMember(String),
    #[error(
        "--election-timeout-ms ({election}) must be at least 5x --heartbeat-interval-ms ({heartbeat})"
    )]
    Timing { heartbeat: u64, election: u64 },
}

/// Whether this member starts a new cluster or joins one (after `member add`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClusterState {
    New,
    Existing,
}

/// `skiff-master run` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RunConfig {
    /// Member name, unique in the cluster (its id is derived from it).
    #[arg(long, env = "SKIFF_NAME", default_value = "default")]
    pub name: String,
    /// Directory for the RocksDB database and raft snapshots.
    #[arg(long, env = "SKIFF_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address of the etcd v3 gRPC API (plain HTTP/2).
    #[arg(long, env = "SKIFF_LISTEN_CLIENT", default_value = "127.0.0.1:2379")]
    pub listen_client: SocketAddr,
    /// Address of the raft peer service.
    #[arg(long, env = "SKIFF_LISTEN_PEER", default_value = "127.0.0.1:2380")]
    pub listen_peer: SocketAddr,
    /// Address of `/metrics` (Prometheus) and `/health`; off when unset.
    #[arg(long, env = "SKIFF_LISTEN_METRICS")]
    pub listen_metrics: Option<SocketAddr>,
    /// Peer URL other members use (default: `http://LISTEN_PEER`).
    #[arg(long, env = "SKIFF_ADVERTISE_PEER_URL")]
    pub advertise_peer_url: Option<String>,
    /// Client URL reported by member list (default: `http://LISTEN_CLIENT`).
    #[arg(long, env = "SKIFF_ADVERTISE_CLIENT_URL")]
    pub advertise_client_url: Option<String>,
    /// `name=http://host:port,...` of every member of a new cluster (default: just this one).
    #[arg(long, env = "SKIFF_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` to bootstrap from --initial-cluster, `existing` to join after `member add`.
    #[arg(long, env = "SKIFF_INITIAL_CLUSTER_STATE", value_enum, default_value = "new")]
    pub initial_cluster_state: ClusterState,
    /// Raft heartbeat interval.
    #[arg(long, env = "SKIFF_HEARTBEAT_INTERVAL_MS", default_value_t = 100)]
    pub heartbeat_interval_ms: u64,
    /// Minimum raft election timeout (the maximum is twice this).
    #[arg(long, env = "SKIFF_ELECTION_TIMEOUT_MS", default_value_t = 1000)]
    pub election_timeout_ms: u64,
    /// Raft entries between snapshots (each entry is a batch of writes).
    #[arg(long, env = "SKIFF_SNAPSHOT_COUNT", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_count: u64,
    /// Log entries kept behind a snapshot, so a follower that lags by fewer catches up from the
    /// log instead of receiving a snapshot (etcd's `--experimental-snapshot-catchup-entries`).
    #[arg(long, env = "SKIFF_SNAPSHOT_CATCHUP_ENTRIES", default_value_t = 1000)]
    pub snapshot_catchup_entries: u64,
    /// MVCC history to keep (`30s`, `5m`, `1h`; `0` keeps all): the leader compacts to the
    /// revision that was current this long ago, once per period, as etcd's periodic
    /// `--auto-compaction-retention` does and as the Kubernetes API server has etcd do every 5m.
    #[arg(long, env = "SKIFF_AUTO_COMPACTION_RETENTION", default_value = "5m",
          value_parser = parse_retention)]
    pub auto_compaction_retention: Duration,
    /// Address of the Kubernetes API (HTTPS); no API server when unset.
    #[arg(long, env = "SKIFF_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// Directory written by `skiff-master init` (ca.crt, apiserver.crt, apiserver.key).
    #[arg(long, env = "SKIFF_PKI_DIR")]
    pub pki_dir: Option<PathBuf>,
    /// Bearer tokens, kube-apiserver format: `token,user,uid,"group1,group2"`.
    #[arg(long, env = "SKIFF_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Audit log (JSON lines, one per mutating request).
    #[arg(long, env = "SKIFF_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// ClusterIP range.
    #[arg(long, env = "SKIFF_SERVICE_CIDR", default_value = "10.96.0.0/12")]
    pub service_cidr: String,
    /// NodePort range.
    #[arg(long, env = "SKIFF_NODE_PORT_RANGE", default_value = "30000-32767")]
    pub node_port_range: String,
    /// Store endpoints of the API server (default: this member's client URL).
    #[arg(long, env = "SKIFF_API_STORE_ENDPOINTS", value_delimiter = ',')]
    pub api_store_endpoints: Vec<String>,
    /// Events the API server's watch cache keeps per resource for resuming watches.
    #[arg(long, env = "SKIFF_API_WATCH_HISTORY", default_value_t = 20_000)]
    pub api_watch_history: usize,
    /// Concurrent non-watch API requests before 429.
    #[arg(long, env = "SKIFF_API_MAX_INFLIGHT", default_value_t = 800)]
    pub api_max_inflight: usize,
}

/// Parses `name=url,name=url`.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<Member>, ConfigError> {
    let mut out: Vec<Member> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| ConfigError::InitialCluster(format!("{part:?} is not name=url")))?;
        if name.is_empty() || !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::InitialCluster(format!(
                "{part:?}: need a name and an http:// URL"
            )));
        }
        if out.iter().any(|m| m.name == name) {
            return Err(ConfigError::InitialCluster(format!("member {name} appears twice")));
        }
        out.push(Member { name: name.into(), peer_url: url.into(), client_url: String::new() });
    }
    if out.is_empty() {
        return Err(ConfigError::InitialCluster("no members".into()));
    }
    Ok(out)
}

impl RunConfig {
    pub fn peer_url(&self) -> String {
        self.advertise_peer_url.clone().unwrap_or_else(|| format!("http://{}", self.listen_peer))
    }

    pub fn client_url(&self) -> String {
        self.advertise_client_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen_client))
    }

    /// The store replica's configuration.
    pub fn store_config(&self) -> Result<StoreConfig, ConfigError> {
        let initial_cluster = match &self.initial_cluster {
            Some(s) => parse_initial_cluster(s)?,
            None => vec![Member {
                name: self.name.clone(),
                peer_url: self.peer_url(),
                client_url: String::new(),
            }],
        };
        if self.initial_cluster_state == ClusterState::New
            && !initial_cluster.iter().any(|m| m.name == self.name)
        {
            return Err(ConfigError::NotAMember(self.name.clone()));
        }
        if self.election_timeout_ms < 5 * self.heartbeat_interval_ms {
            return Err(ConfigError::Timing {
                heartbeat: self.heartbeat_interval_ms,
                election: self.election_timeout_ms,
            });
        }
        Ok(StoreConfig {
            name: self.name.clone(),
            data_dir: self.data_dir.clone(),
            peer_url: self.peer_url(),
            client_url: self.client_url(),
            initial_cluster,
            join_existing: self.initial_cluster_state == ClusterState::Existing,
            tuning: RaftTuning {
                heartbeat_ms: self.heartbeat_interval_ms,
                election_min_ms: self.election_timeout_ms,
                election_max_ms: self.election_timeout_ms * 2,
                snapshot_every: self.snapshot_count,
                keep_logs: self.snapshot_catchup_entries,
                request_timeout: Duration::from_secs(5),
            },
            auto_compaction: Some(self.auto_compaction_retention).filter(|d| !d.is_zero()),
            net: NetControl::default(),
            sync: SyncControl::default(),
        })
    }
}

/// `0`, or a whole number of seconds, minutes or hours: `30s`, `5m`, `1h`.
fn parse_retention(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let secs_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{s:?}: want 0 or a number with s, m or h (30s, 5m, 1h)")),
    };
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: want 0 or a number with s, m or h"))?;
    if n == 0 {
        return Err(format!("{s:?}: use 0 to keep all history"));
    }
    Ok(Duration::from_secs(n.saturating_mul(secs_per)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_parsing() {
        let m = parse_initial_cluster("a=http://127.0.0.1:1, b=http://127.0.0.1:2").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].peer_url, "http://127.0.0.1:2");
        for bad in ["", "a", "a=127.0.0.1:1", "=http://x", "a=http://x,a=http://y"] {
            assert!(parse_initial_cluster(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn retention_parsing() {
        assert_eq!(parse_retention("0"), Ok(Duration::ZERO));
        assert_eq!(parse_retention("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_retention("5m"), Ok(Duration::from_mins(5)));
        assert_eq!(parse_retention("1h"), Ok(Duration::from_hours(1)));
        for bad in ["", "5", "m", "0m", "-1m", "1.5h", "5 m", "5d"] {
            assert!(parse_retention(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
