//! The official Python `kubernetes` client (37.0.2, from `PyPI` into a venv this test creates on
//! first use) against the API server of one of three `skiff-master` processes: CRUD, conflicts, every patch type, subresources, watch
//! with resume, selector transitions and 410 recovery. The script is
//! `tests/python/k8s_client_suite.py`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use skiff_e2e::api::{Cluster, TestDir};
use skiff_e2e::unique_tag;

const CLIENT: &str = "kubernetes==37.0.2";
const HISTORY: usize = 50;

/// The venv with the client: `$SKIFF_PY_VENV`, else `/opt/skiff/py-kubernetes-37.0.2` when
/// writable, else under the temp directory. Created (once) with `python3 -m venv` and pip.
fn venv() -> Result<PathBuf> {
    let dir = if let Some(d) = std::env::var_os("SKIFF_PY_VENV") {
        PathBuf::from(d)
    } else {
        let opt = Path::new("/opt/skiff");
        if std::fs::create_dir_all(opt).is_ok() {
            opt.join("py-kubernetes-37.0.2")
        } else {
            std::env::temp_dir().join("skiff-py-kubernetes-37.0.2")
        }
    };
    let python = dir.join("bin/python");
    let ready = dir.join(".installed");
    if ready.exists() {
        return Ok(python);
    }
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .context("python3 -m venv")?;
    ensure!(status.success(), "python3 -m venv {} failed", dir.display());
    let out = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", CLIENT])
        .output()
        .context("pip install")?;
    if !out.status.success() {
        bail!("pip install {CLIENT} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::write(&ready, CLIENT)?;
    Ok(python)
}

#[test]
fn python_client_suite() -> Result<()> {
    let python = venv()?;
    let tag = unique_tag();
    let cluster = Cluster::start(&tag, HISTORY)?;
    let kubeconfig = cluster.kubeconfig(1)?;
    let home = TestDir::new(&tag, "py-home")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/k8s_client_suite.py");
    let out = Command::new(&python)
        .arg(&script)
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", &home.0)
        .env("SKIFF_WATCH_HISTORY", HISTORY.to_string())
        .output()
        .context("running the Python suite")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains("PYTHON-SUITE-OK"),
        "python suite failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
