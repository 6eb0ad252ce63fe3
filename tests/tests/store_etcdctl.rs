//! The real `etcdctl` 3.4 against a 3-member Skiff store of real `skiff-master` processes:
//! put, get --prefix, del, txn, watch --prefix, compaction, member list, endpoint status,
//! snapshot save; then `skiff-master snapshot restore` rebuilds a member that serves the same
//! keys at the same revisions; bad input gets clear errors and changes nothing.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use skiff_e2e::masters::{Masters, http_get};
use skiff_e2e::{privileged, unique_tag, wait};

fn etcdctl(endpoints: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoints, "--command-timeout", "10s"])
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("etcdctl runs");
    if let Some(input) = stdin {
        child.stdin.take().expect("piped").write_all(input).expect("write stdin");
    }
    child.wait_with_output().expect("etcdctl finishes")
}

/// The store revision in the header of a `-w json` answer.
fn header_revision(json: &str) -> i64 {
    json.split("\"revision\":")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .expect("revision in json header")
}

fn ok(endpoints: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoints, args, None);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, the listed etcdctl commands in order")]
fn etcdctl_works_against_a_three_member_cluster() {
    let name = "etcdctl_works_against_a_three_member_cluster";
    if !privileged::tools(name, &["etcdctl"]) {
        return;
    }
    let tag = unique_tag();
    let masters = Masters::start(&tag, 3).expect("cluster starts");
    let all = masters.endpoints();
    let m1 = masters.specs[1].client_endpoint();
    let m2 = masters.specs[2].client_endpoint();

    // A watch on a follower from the revision after the current one: it sees every write below
    // even if etcdctl connects only after the first of them is applied.
    let start = header_revision(&ok(&all, &["get", "/e2e/", "-w", "json"])) + 1;
    let watch_out = masters.dir.join("watch.out");
    let mut watch = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &m2, "watch", "--prefix", "/e2e/", "--rev", &start.to_string()])
        .stdout(std::fs::File::create(&watch_out).expect("watch output file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl watch runs");

    assert_eq!(ok(&all, &["put", "/e2e/a", "1"]).trim(), "OK");
    // Writes through a follower are forwarded to the leader.
    assert_eq!(ok(&m1, &["put", "/e2e/b", "2"]).trim(), "OK");
    assert_eq!(ok(&all, &["put", "/other", "x"]).trim(), "OK");
    assert_eq!(ok(&m2, &["get", "--prefix", "/e2e/"]), "/e2e/a\n1\n/e2e/b\n2\n");
    assert_eq!(ok(&m2, &["get", "--prefix", "/e2e/", "--keys-only"]).split_whitespace().count(), 2);

    let txn = b"mod(\"/e2e/a\") > \"0\"\n\nput /e2e/c 3\n\nput /e2e/never 0\n\n";
    let out = etcdctl(&all, &["txn"], Some(txn));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("SUCCESS"));
    let failing = b"value(\"/e2e/a\") = \"nope\"\n\nput /e2e/never 0\n\nput /e2e/d 4\n\n";
    let out = etcdctl(&all, &["txn"], Some(failing));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("FAILURE"));
    assert_eq!(ok(&all, &["get", "/e2e/never"]), "");
    assert_eq!(ok(&all, &["del", "/e2e/b"]).trim(), "1");

    // The watch saw every change under the prefix, in order, and nothing else.
    wait::until("watch shows all events", Duration::from_secs(20), || {
        let s = std::fs::read_to_string(&watch_out)?;
        Ok(s.contains("DELETE\n/e2e/b"))
    })
    .unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    let seen = std::fs::read_to_string(&watch_out).unwrap();
    assert_eq!(
        seen,
        "PUT\n/e2e/a\n1\nPUT\n/e2e/b\n2\nPUT\n/e2e/c\n3\nPUT\n/e2e/d\n4\nDELETE\n/e2e/b\n\n"
    );

    // Compaction: old revisions answer "compacted", current reads still work.
    let rev = header_revision(&ok(&m1, &["get", "/e2e/a", "-w", "json"]));
    ok(&all, &["compaction", &rev.to_string()]);
    let out = etcdctl(&all, &["get", "/e2e/a", "--rev", "2"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("required revision has been compacted"));
    assert_eq!(ok(&all, &["get", "/e2e/a", "--print-value-only"]).trim(), "1");

    let members = ok(&all, &["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    for s in &masters.specs {
        assert!(members.contains(&s.peer_url()), "{members}");
    }
    let status = ok(&all, &["endpoint", "status"]);
    assert_eq!(status.lines().count(), 3, "{status}");
    assert_eq!(
        status.lines().filter(|l| l.contains(", true, false,")).count(),
        1,
        "one leader: {status}"
    );

    // Bad input: an oversized value is refused and nothing changes.
    let before = ok(&all, &["get", "/e2e/", "--prefix", "-w", "json"]);
    let out = etcdctl(&all, &["put", "/e2e/big"], Some(&vec![b'x'; 1600 * 1024]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("request is too large"), "{out:?}");
    assert_eq!(ok(&all, &["get", "/e2e/big"]), "");
    let after = ok(&all, &["get", "/e2e/", "--prefix", "-w", "json"]);
    assert_eq!(before.split("\"kvs\"").nth(1), after.split("\"kvs\"").nth(1));

    // etcdctl snapshot save accepts our backup; skiff-master restores it into a new member.
    let snap = masters.dir.join("etcdctl.snap");
    let out = ok(&m1, &["snapshot", "save", &snap.to_string_lossy()]);
    assert!(out.contains("Snapshot saved"), "{out}");
    let restored = masters.dir.join("restored");
    let out = masters
        .ctl(&[
            "snapshot",
            "restore",
            &snap.to_string_lossy(),
            "--data-dir",
            &restored.to_string_lossy(),
        ])
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let port = skiff_e2e::free_port().unwrap();
    let peer = skiff_e2e::free_port().unwrap();
    let metrics = skiff_e2e::free_port().unwrap();
    let mut single = Command::new(masters.binary())
        .args(["run", "--name", "restored", "--data-dir", &restored.to_string_lossy()])
        .args([
            "--listen-client",
            &format!("127.0.0.1:{port}"),
            "--listen-peer",
            &format!("127.0.0.1:{peer}"),
        ])
        .args(["--listen-metrics", &format!("127.0.0.1:{metrics}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ep = format!("127.0.0.1:{port}");
    let ready = wait::until("restored member healthy", Duration::from_secs(30), || {
        Ok(http_get(metrics, "/health").is_ok_and(|(c, _)| c == 200))
    });
    let orig = ok(&all, &["get", "--prefix", "/", "-w", "json"]);
    let copy = if ready.is_ok() {
        ok(&ep, &["get", "--prefix", "/", "-w", "json"])
    } else {
        String::new()
    };
    let _ = single.kill();
    let _ = single.wait();
    ready.unwrap();
    assert_eq!(
        orig.split("\"kvs\"").nth(1),
        copy.split("\"kvs\"").nth(1),
        "same keys at the same revisions"
    );

    // Metrics are exposed.
    let (code, body) = http_get(masters.specs[0].metrics_port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("skiff_store_wal_fsync_seconds_bucket"));
}

/// Removes the test's temp dir on drop, also on panic.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn restore_of_a_corrupt_backup_fails_cleanly_and_creates_nothing() {
    let bin = skiff_e2e::masters::master_binary().unwrap();
    let dir = TempDir(std::env::temp_dir().join(format!("skiff-test-restore-{}", unique_tag())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let cases: [(&str, Vec<u8>); 3] = [
        ("empty", Vec::new()),
        ("garbage", (0..4096u32).map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[1]).collect()),
        // Right size class for a backup (multiple of 512 plus a 32-byte digest), wrong digest.
        ("bad-digest", vec![0x5a; 1024 + 32]),
    ];
    for (name, bytes) in cases {
        let file = dir.0.join(format!("{name}.snap"));
        std::fs::write(&file, bytes).unwrap();
        let target = dir.0.join(format!("{name}-data"));
        let out = Command::new(&bin)
            .args(["snapshot", "restore", &file.to_string_lossy()])
            .args(["--data-dir", &target.to_string_lossy()])
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: restore of a corrupt file must fail: {out:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: one-line error: {stderr}");
        assert!(stderr.starts_with("skiff-master: "), "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}: nothing printed as success: {out:?}");
        assert!(!target.exists(), "{name}: {} must not be created", target.display());
    }
}
