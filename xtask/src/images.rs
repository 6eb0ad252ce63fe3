//! `cargo xtask images`: local OCI image tarballs, built without a registry.
//!
//! Two images: the pod sandbox (`registry.local/pause:3.9`, a static C program from
//! `xtask/images/pause.c`) and a test image (`registry.local/busybox:<version>`, Debian's
//! busybox-static plus applet links). Each tarball is an OCI image layout ready for
//! `ctr images import`; its `index.json` names the image (`io.containerd.image.name`).
//!
//! Builds are deterministic: entries are sorted, owners, modes and times are fixed, and gzip
//! carries no timestamp, so the same inputs always give the same digests.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use flate2::{Compression, GzBuilder};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::util::{output, target_dir, workspace_root};

/// The sandbox image containerd runs for every pod (`sandbox_image` in its config).
pub const PAUSE_REFERENCE: &str = "registry.local/pause:3.9";

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One image tarball written by [`build_all`].
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Short name, also the tarball's stem: `pause`, `busybox`.
    pub name: &'static str,
    /// Full reference, e.g. `registry.local/pause:3.9`.
    pub reference: String,
    pub path: PathBuf,
    /// `sha256:<hex>` of the manifest: what `ctr images ls` shows as the image digest.
    pub manifest_digest: String,
}

/// The CLI task: builds into `target/images/` and prints what it made.
pub fn build_images() -> Result<()> {
    for image in build_all(&target_dir().join("images"))? {
        println!("images: {} {} {}", image.reference, image.manifest_digest, image.path.display());
    }
    Ok(())
}

/// Builds every image into `out_dir`.
pub fn build_all(out_dir: &Path) -> Result<Vec<BuiltImage>> {
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    Ok(vec![build_pause(out_dir)?, build_busybox(out_dir)?])
}

fn build_pause(out_dir: &Path) -> Result<BuiltImage> {
    let binary = out_dir.join("pause.bin");
    let source = workspace_root().join("xtask/images/pause.c");
    output(
        Command::new("gcc")
            .args(["-static", "-Os", "-s", "-Wall", "-Werror", "-o"])
            .arg(&binary)
            .arg(&source),
    )
    .context("compiling the pause binary (gcc and libc6-dev come with `cargo xtask setup`)")?;
    let layer = vec![Entry::file("pause", 0o755, fs::read(&binary)?)];
    let config = json!({
        "Entrypoint": ["/pause"],
        "User": "65535:65535",
        "WorkingDir": "/",
    });
    write_image(out_dir, "pause", PAUSE_REFERENCE.to_owned(), &config, layer)
}

fn build_busybox(out_dir: &Path) -> Result<BuiltImage> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("busybox not found (install busybox-static with `cargo xtask setup`)")?;
    let version = busybox_version(&output(Command::new(busybox).arg("--help"))?)?;
    let applets = output(Command::new(busybox).arg("--list"))?;

    let mut layer = vec![Entry::dir("tmp", 0o1777)];
    for dir in ["bin", "dev", "etc", "proc", "root", "sys", "var"] {
        layer.push(Entry::dir(dir, 0o755));
    }
    layer.push(Entry::file("bin/busybox", 0o755, fs::read(busybox)?));
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "busybox") {
        layer.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
    }
    layer.push(Entry::file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
            .to_vec(),
    ));
    layer.push(Entry::file("etc/group", 0o644, b"root:x:0:\nnobody:x:65534:\n".to_vec()));
    let config = json!({
        "Cmd": ["sh"],
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    });
    write_image(out_dir, "busybox", format!("registry.local/busybox:{version}"), &config, layer)
}

/// `BusyBox v1.35.0 (Debian ...)` → `1.35`.
fn busybox_version(help: &str) -> Result<String> {
    let full = help
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .with_context(|| format!("no version in busybox output {:?}", help.lines().next()))?;
    let mut parts = full.split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => Ok(format!("{major}.{minor}")),
        _ => bail!("unexpected busybox version {full:?}"),
    }
}

/// A file system entry of a layer.
#[derive(Debug, Clone)]
enum Entry {
    Dir { path: String, mode: u32 },
    File { path: String, mode: u32, data: Vec<u8> },
    Symlink { path: String, target: String },
}

impl Entry {
    fn dir(path: &str, mode: u32) -> Self {
        Entry::Dir { path: path.to_owned(), mode }
    }
    fn file(path: &str, mode: u32, data: Vec<u8>) -> Self {
        Entry::File { path: path.to_owned(), mode, data }
    }
    fn symlink(path: &str, target: &str) -> Self {
        Entry::Symlink { path: path.to_owned(), target: target.to_owned() }
    }
    fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

/// A tar archive of `entries` with fixed metadata (root-owned, mtime 0), sorted by path.
fn deterministic_tar(mut entries: Vec<Entry>) -> Result<Vec<u8>> {
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    let mut builder = tar::Builder::new(Vec::new());
    for entry in &entries {
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        match entry {
            Entry::Dir { path, mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
            }
            Entry::File { path, mode, data } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice())?;
            }
            Entry::Symlink { path, target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target)?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    // No file name and mtime 0 in the gzip header: the output depends only on `data`.
    let mut encoder = GzBuilder::new().mtime(0).write(Vec::new(), Compression::default());
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// An OCI image layout archive with one layer, and its manifest digest.
fn oci_archive(
    reference: &str,
    image_config: &Value,
    layer: Vec<Entry>,
) -> Result<(Vec<u8>, String)> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => bail!("no OCI architecture name for {other}"),
    };
    let layer_tar = deterministic_tar(layer)?;
    let layer_gz = gzip(&layer_tar)?;
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer_tar)]},
        "history": [{"created_by": "cargo xtask images"}],
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": sha256(&layer_gz), "size": layer_gz.len()}],
    }))?;
    let manifest_digest = sha256(&manifest);
    let tag = reference.rsplit_once(':').map_or("latest", |(_, t)| t);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))?;

    let blob = |data: &[u8]| {
        let digest = sha256(data);
        let hex = digest.trim_start_matches("sha256:");
        Entry::file(&format!("blobs/sha256/{hex}"), 0o644, data.to_vec())
    };
    let archive = deterministic_tar(vec![
        Entry::file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        Entry::file("index.json", 0o644, index),
        Entry::dir("blobs", 0o755),
        Entry::dir("blobs/sha256", 0o755),
        blob(&layer_gz),
        blob(&config),
        blob(&manifest),
    ])?;
    Ok((archive, manifest_digest))
}

fn write_image(
    out_dir: &Path,
    name: &'static str,
    reference: String,
    config: &Value,
    layer: Vec<Entry>,
) -> Result<BuiltImage> {
    let (archive, manifest_digest) = oci_archive(&reference, config, layer)?;
    let path = out_dir.join(format!("{name}.tar"));
    fs::write(&path, archive).with_context(|| format!("writing {}", path.display()))?;
    Ok(BuiltImage { name, reference, path, manifest_digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_layer() -> Vec<Entry> {
        vec![
            Entry::symlink("bin/sh", "busybox"),
            Entry::file("bin/busybox", 0o755, b"\x7fELF".to_vec()),
            Entry::dir("bin", 0o755),
        ]
    }

    #[test]
    fn archives_are_reproducible() {
        let (a, da) =
            oci_archive("registry.local/t:1", &json!({"Cmd": ["sh"]}), sample_layer()).unwrap();
        let (b, db) =
            oci_archive("registry.local/t:1", &json!({"Cmd": ["sh"]}), sample_layer()).unwrap();
        assert_eq!(da, db);
        assert!(a == b, "archives differ byte-wise");
        let (_, other) =
            oci_archive("registry.local/t:1", &json!({"Cmd": ["ls"]}), sample_layer()).unwrap();
        assert_ne!(da, other, "a different config must give a different manifest");
    }

    #[test]
    fn layer_entries_are_sorted_with_fixed_metadata() {
        let tar = deterministic_tar(sample_layer()).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let entries: Vec<(String, u64, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (e.path().unwrap().display().to_string(), h.mtime().unwrap(), h.uid().unwrap())
            })
            .collect();
        assert_eq!(
            entries,
            [("bin/".into(), 0, 0), ("bin/busybox".into(), 0, 0), ("bin/sh".into(), 0, 0)]
        );
    }

    #[test]
    fn busybox_version_is_major_minor() {
        let help = "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary.\n";
        assert_eq!(busybox_version(help).unwrap(), "1.35");
        assert!(busybox_version("no version here").is_err());
    }
}
