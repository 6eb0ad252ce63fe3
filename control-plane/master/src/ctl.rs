//! Client-side subcommands: `snapshot save|restore` and `member list|add|remove`.

use std::path::Path;
use std::time::Duration;

use skiff_proto::etcdserverpb::SnapshotRequest;
use skiff_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use skiff_store::backup;
use skiff_store::node::{AdminRequest, AdminResponse, MemberInfo};
use skiff_store::raft::network::{Method, NetControl, Peers};
use skiff_store::raft::{Member, member_id};
use tokio_stream::StreamExt;

/// A subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("connect to {url}: {source}")]
    Connect { url: String, source: tonic::transport::Error },
    #[error("{0}")]
    Rpc(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Backup(#[from] backup::BackupError),
    #[error("{0}")]
    Store(#[from] skiff_store::KvError),
}

/// What `snapshot save` wrote.
#[derive(Debug)]
pub struct SavedSnapshot {
    pub bytes: u64,
    pub revision: i64,
    /// Key versions held (deletions not counted).
    pub versions: usize,
    pub sha256: String,
}

/// Streams a consistent backup from the member at `endpoint` (its etcd client URL) into
/// `file`, verifying it before the file appears; nothing of it is held in memory.
pub async fn snapshot_save(endpoint: &str, file: &Path) -> Result<SavedSnapshot, CtlError> {
    let mut c = MaintenanceClient::connect(endpoint.to_string())
        .await
        .map_err(|source| CtlError::Connect { url: endpoint.into(), source })?
        .max_decoding_message_size(64 << 20);
    let mut stream = c
        .snapshot(SnapshotRequest {})
        .await
        .map_err(|s| CtlError::Rpc(s.message().into()))?
        .into_inner();
    let tmp = file.with_extension("part");
    let saved = async {
        let io = |source| CtlError::Io { path: tmp.display().to_string(), source };
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
        while let Some(chunk) = stream.next().await {
            let blob = chunk.map_err(|s| CtlError::Rpc(s.message().into()))?.blob;
            std::io::Write::write_all(&mut f, &blob).map_err(io)?;
        }
        let f = f.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        let mut checked = backup::Checked::open(&tmp)?;
        let (revision, versions) = checked.summary()?;
        Ok::<_, CtlError>(SavedSnapshot {
            bytes: checked.bytes,
            revision,
            versions,
            sha256: checked.sha256,
        })
    }
    .await;
    if saved.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let saved = saved?;
    std::fs::rename(&tmp, file)
        .map_err(|source| CtlError::Io { path: file.display().to_string(), source })?;
    Ok(saved)
}

/// Rebuilds a member's data dir from a backup file; returns the backup's revision.
pub fn snapshot_restore(file: &Path, data_dir: &Path) -> Result<i64, CtlError> {
    Ok(backup::restore_into(data_dir, file)?)
}

async fn admin(peer: &str, req: AdminRequest) -> Result<Vec<MemberInfo>, CtlError> {
    let peers = Peers::new(NetControl::default());
    let r: Result<AdminResponse, skiff_store::KvError> = peers
        .call(0, peer, Method::Admin, &req, Duration::from_mins(1))
        .await
        .map_err(|e| CtlError::Rpc(e.to_string()))?;
    let AdminResponse::Members(m) = r?;
    Ok(m)
}

pub async fn member_list(peer: &str) -> Result<Vec<MemberInfo>, CtlError> {
    admin(peer, AdminRequest::List).await
}

pub async fn member_add(
    peer: &str,
    name: &str,
    peer_url: &str,
    client_url: &str,
) -> Result<Vec<MemberInfo>, CtlError> {
    let m = Member { name: name.into(), peer_url: peer_url.into(), client_url: client_url.into() };
    admin(peer, AdminRequest::Add(m)).await
}

/// Removes the member named `name_or_id` (a name, or a hex id as `member list` prints).
pub async fn member_remove(peer: &str, name_or_id: &str) -> Result<Vec<MemberInfo>, CtlError> {
    let members = member_list(peer).await?;
    let id = members
        .iter()
        .find(|m| m.member.name == name_or_id || format!("{:x}", m.id) == name_or_id)
        .map_or_else(|| member_id(name_or_id), |m| m.id);
    admin(peer, AdminRequest::Remove { id }).await
}
