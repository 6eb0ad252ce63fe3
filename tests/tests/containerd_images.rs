//! `cargo xtask images` output is importable and runnable: both images go into a private
//! containerd, busybox runs a command, and pause runs until SIGTERM and exits 0. Builds are
//! reproducible. Nothing is left behind.

use std::process::Stdio;
use std::time::Duration;

use skiff_e2e::containerd::Containerd;
use skiff_e2e::{privileged, unique_tag, wait};
use xtask::images::{self, PAUSE_REFERENCE};

#[test]
fn local_images_import_and_run_in_a_private_containerd() {
    let name = "local_images_import_and_run_in_a_private_containerd";
    if !privileged::privileged(name)
        || !privileged::tools(name, &["containerd", "ctr", "runc", "gcc", "busybox"])
    {
        return;
    }
    let tag = unique_tag();
    let work = std::env::temp_dir().join(format!("skiff-test-{tag}-images"));
    let built = images::build_all(&work.join("a")).unwrap();
    let rebuilt = images::build_all(&work.join("b")).unwrap();
    for (a, b) in built.iter().zip(&rebuilt) {
        assert_eq!(a.manifest_digest, b.manifest_digest, "{} is not reproducible", a.reference);
    }

    let containerd = Containerd::start(&tag, PAUSE_REFERENCE).unwrap();
    for image in &built {
        containerd.ctr(&["images", "import", &image.path.to_string_lossy()]).unwrap();
    }
    let listed = containerd.ctr(&["images", "ls"]).unwrap();
    for image in &built {
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(&image.reference) && l.contains(&image.manifest_digest)),
            "{} with {} not in:\n{listed}",
            image.reference,
            image.manifest_digest
        );
    }

    let busybox = &built.iter().find(|i| i.name == "busybox").unwrap().reference;
    let out = containerd
        .ctr(&[
            "run",
            "--rm",
            busybox,
            &format!("skt-{tag}-echo"),
            "sh",
            "-c",
            "echo hello from $(id -un)",
        ])
        .unwrap();
    assert_eq!(out.trim(), "hello from root");

    // pause: runs until told to stop, then exits 0 (ctr run passes the exit code through).
    let pause_id = format!("skt-{tag}-pause");
    let mut pause = containerd
        .ctr_command()
        .args(["run", "--rm", PAUSE_REFERENCE, &pause_id])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait::until("pause to run", Duration::from_secs(30), || {
        Ok(containerd
            .ctr(&["task", "ls"])?
            .lines()
            .any(|l| l.starts_with(&pause_id) && l.contains("RUNNING")))
    })
    .unwrap();
    containerd.ctr(&["task", "kill", "--signal", "SIGTERM", &pause_id]).unwrap();
    let status = pause.wait().unwrap();
    assert!(status.success(), "pause exited with {status}");

    containerd.stop().unwrap();
    std::fs::remove_dir_all(&work).unwrap();
}
