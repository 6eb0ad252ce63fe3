//! The kubectl acceptance list of the API reference (except logs/exec, which need a node
//! agent), run with the installed kubectl dispatcher against a real store and the API server.

use anyhow::{Result, ensure};
use skiff_e2e::api::{ApiServer, Etcd, Kubectl};
use skiff_e2e::unique_tag;

#[test]
fn kubectl_smoke() -> Result<()> {
    let tag = unique_tag();
    let etcd = Etcd::start(&tag)?;
    let api = ApiServer::start(&tag, std::slice::from_ref(&etcd.endpoint))?;
    let k = Kubectl::new(&tag, &api.kubeconfig)?;
    let v = k.ok(&["version"])?;
    ensure!(v.contains("Server Version: v1.33"), "{v}");
    Ok(())
}
