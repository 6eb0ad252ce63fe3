//! The kubectl acceptance list of the API reference (except logs/exec, which need a node
//! agent), run with the installed kubectl dispatcher (fresh HOME and cache per test) against
//! three `skiff-master` processes (store replica + API server each; kubectl talks to one of
//! them). Controllers are not part of this suite: where a command waits
//! for status (rollout status, wait), the test writes that status through `/status` as a
//! controller would.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use skiff_e2e::api::{Cluster, Kubectl, TEST_TOKEN};
use skiff_e2e::{unique_tag, wait};

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
  labels:
    app: web
spec:
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        ports:
        - containerPort: 80
";

fn web_v2() -> String {
    WEB.replace("spec:\n  selector:", "spec:\n  replicas: 3\n  selector:")
        .replace("nginx:1.25", "nginx:1.26")
}

struct Env {
    k: Kubectl,
    cluster: Cluster,
}

/// A cluster and kubectl pointed at member `member`.
fn env_at(member: usize) -> Result<Env> {
    let tag = unique_tag();
    let cluster = Cluster::start(&tag, skiff_apiserver::cache::HISTORY)?;
    let k = Kubectl::new(&tag, &cluster.kubeconfig(member)?)?;
    Ok(Env { k, cluster })
}

fn env() -> Result<Env> {
    env_at(0)
}

fn write(k: &Kubectl, name: &str, text: &str) -> Result<String> {
    let p = k.home().join(name);
    std::fs::write(&p, text)?;
    Ok(p.display().to_string())
}

#[test]
fn discovery_version_and_tables() -> Result<()> {
    let env = env()?;
    let k = &env.k;
    let v = k.ok(&["version"])?;
    ensure!(v.contains("Server Version: v1.33"), "{v}");
    let r = k.ok(&["api-resources"])?;
    for want in [
        "deployments",
        "deploy",
        "apps/v1",
        "Deployment",
        "pods",
        "po",
        "namespaces",
        "ns",
        "clusterrolebindings",
        "leases",
        "endpointslices",
        "priorityclasses",
        "cronjobs",
    ] {
        ensure!(r.contains(want), "api-resources lacks {want}:\n{r}");
    }
    let line = r.lines().find(|l| l.starts_with("deployments")).context("deployments row")?;
    ensure!(
        line.split_whitespace().collect::<Vec<_>>()
            == ["deployments", "deploy", "apps/v1", "true", "Deployment"],
        "{line}"
    );
    let ci = k.ok(&["cluster-info"])?;
    ensure!(ci.contains("Kubernetes control plane is running at"), "{ci}");
    // Namespaces exist from bootstrap, with the upstream Table.
    let ns = k.ok(&["get", "namespaces"])?;
    ensure!(
        ns.starts_with("NAME")
            && ns.contains("STATUS")
            && ns.contains("kube-system")
            && ns.contains("Active"),
        "{ns}"
    );
    let svc = k.ok(&["get", "svc", "kubernetes", "-o", "wide"])?;
    ensure!(
        svc.contains("10.96.0.1") && svc.contains("443/TCP") && svc.contains("SELECTOR"),
        "{svc}"
    );
    // Empty lists.
    let none = k.run(&["get", "pods"])?;
    ensure!(
        String::from_utf8_lossy(&none.stderr).contains("No resources found in default namespace."),
        "{none:?}"
    );
    let nodes = k.run(&["get", "nodes"])?;
    ensure!(nodes.status.success(), "{nodes:?}");
    // Health, readiness and metrics.
    ensure!(k.ok(&["get", "--raw", "/readyz"])? == "ok");
    ensure!(k.ok(&["get", "--raw", "/livez"])? == "ok");
    let metrics = k.ok(&["get", "--raw", "/metrics"])?;
    for want in [
        "apiserver_request_total{",
        "apiserver_request_duration_seconds_bucket{",
        "apiserver_current_inflight_requests",
        "apiserver_registered_watchers",
    ] {
        ensure!(metrics.contains(want), "metrics lack {want}");
    }
    // Server-side dry run stores nothing.
    let dry = k.ok(&["create", "configmap", "dry", "--from-literal=a=b", "--dry-run=server"])?;
    ensure!(dry.contains("server dry run"), "{dry}");
    ensure!(k.fails(&["get", "cm", "dry"])?.contains("NotFound"));
    // Bad selector from the server, as a Status.
    let bad = k.fails(&["get", "--raw", "/api/v1/pods?fieldSelector=spec.bogus%3D1"])?;
    ensure!(bad.contains("BadRequest") || bad.contains("field label not supported"), "{bad}");
    Ok(())
}

#[test]
#[expect(clippy::too_many_lines, reason = "one acceptance scenario, step by step")]
fn deployment_lifecycle() -> Result<()> {
    let env = env()?;
    let k = &env.k;
    let web = write(k, "web.yaml", WEB)?;
    let web2 = write(k, "web-v2.yaml", &web_v2())?;

    let out = k.ok(&["apply", "-f", &web])?;
    ensure!(out.contains("deployment.apps/web created"), "{out}");
    let y = k.ok(&["get", "deploy", "web", "-o", "yaml"])?;
    for want in [
        "replicas: 1",
        "kubectl.kubernetes.io/last-applied-configuration",
        "revisionHistoryLimit: 10",
        "maxSurge: 25%",
        "generation: 1",
        "uid:",
        "creationTimestamp:",
    ] {
        ensure!(y.contains(want), "get -o yaml lacks {want}:\n{y}");
    }
    let wide = k.ok(&["get", "deploy", "-o", "wide"])?;
    let header: Vec<&str> = wide.lines().next().unwrap_or("").split_whitespace().collect();
    ensure!(
        header
            == [
                "NAME",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "AGE",
                "CONTAINERS",
                "IMAGES",
                "SELECTOR"
            ],
        "{wide}"
    );
    ensure!(
        wide.contains("0/1") && wide.contains("nginx:1.25") && wide.contains("app=web"),
        "{wide}"
    );

    let out = k.ok(&["apply", "-f", &web2])?;
    ensure!(out.contains("deployment.apps/web configured"), "{out}");
    let out = k.ok(&["apply", "-f", &web2])?;
    ensure!(out.contains("deployment.apps/web unchanged"), "{out}");
    let spec = k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image} {.metadata.generation}"])?;
    ensure!(spec == "3 nginx:1.26 2", "{spec}");

    let out = k.ok(&["scale", "deploy/web", "--replicas=5"])?;
    ensure!(out.contains("scaled"), "{out}");
    let err = k.fails(&["scale", "deploy/web", "--current-replicas=4", "--replicas=6"])?;
    ensure!(err.contains("Expected replicas to be 4"), "{err}");
    k.ok(&["scale", "deploy/web", "--current-replicas=5", "--replicas=6"])?;
    ensure!(k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])? == "6");

    k.ok(&["label", "deploy", "web", "tier=frontend"])?;
    k.ok(&["annotate", "deploy", "web", "note=hello"])?;
    let meta = k.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.labels.tier} {.metadata.annotations.note}",
    ])?;
    ensure!(meta == "frontend hello", "{meta}");

    k.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.27"}]}}}}"#,
    ])?;
    let c = k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[*].name} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort}"])?;
    ensure!(c == "nginx nginx:1.27 80", "strategic merge by name kept the port: {c}");
    k.ok(&["patch", "deploy", "web", "--type=merge", "-p", r#"{"spec":{"replicas":2}}"#])?;
    ensure!(k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])? == "2");
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":3}]"#,
    ])?;
    ensure!(k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])? == "3");
    let err = k.fails(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/spec/replicas","value":9}]"#,
    ])?;
    ensure!(err.contains("Invalid") || err.contains("invalid") || err.contains("test"), "{err}");

    // rollout status: a controller's status write completes the rollout.
    let generation = k.ok(&["get", "deploy", "web", "-o", "jsonpath={.metadata.generation}"])?;
    let status = format!(
        r#"{{"status":{{"observedGeneration":{generation},"replicas":3,"updatedReplicas":3,"readyReplicas":3,"availableReplicas":3,"conditions":[{{"type":"Available","status":"True","reason":"MinimumReplicasAvailable"}},{{"type":"Progressing","status":"True","reason":"NewReplicaSetAvailable"}}]}}}}"#
    );
    k.ok(&["patch", "deploy", "web", "--subresource=status", "--type=merge", "-p", &status])?;
    let out = k.ok(&["rollout", "status", "deploy/web", "--timeout=60s"])?;
    ensure!(out.contains("successfully rolled out"), "{out}");
    let wide = k.ok(&["get", "deploy", "web"])?;
    ensure!(wide.contains("3/3"), "{wide}");

    // Generators send protobuf bodies.
    let out = k.ok(&["create", "deployment", "web2", "--image=nginx"])?;
    ensure!(out.contains("deployment.apps/web2 created"), "{out}");
    let img = k.ok(&["get", "deploy", "web2", "-o", "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].imagePullPolicy} {.spec.replicas}"])?;
    ensure!(img == "nginx Always 1", "{img}");
    let dup = k.fails(&["create", "deployment", "web2", "--image=nginx"])?;
    ensure!(dup.contains("already exists"), "{dup}");

    let out = k.ok(&["delete", "deploy", "web"])?;
    ensure!(out.contains("deleted"), "{out}");
    let gone = k.fails(&["get", "deploy", "web"])?;
    ensure!(
        gone.contains("NotFound") && gone.contains("deployments.apps \"web\" not found"),
        "{gone}"
    );
    Ok(())
}

#[test]
fn server_side_apply() -> Result<()> {
    let env = env()?;
    let k = &env.k;
    let web = write(k, "web.yaml", WEB)?;
    let web2 = write(k, "web-v2.yaml", &web_v2())?;
    let out = k.ok(&["apply", "--server-side", "-f", &web])?;
    ensure!(out.contains("serverside-applied"), "{out}");
    let mf = k.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
        "--show-managed-fields",
    ])?;
    ensure!(mf.contains("kubectl"), "{mf}");
    // Another manager takes spec.replicas; the original apply then conflicts.
    let err = k.fails(&["apply", "--server-side", "--field-manager=other", "-f", &web2])?;
    ensure!(err.contains("conflict with \"kubectl\""), "{err}");
    k.ok(&["apply", "--server-side", "--field-manager=other", "--force-conflicts", "-f", &web2])?;
    let err = k.fails(&["apply", "--server-side", "-f", &web])?;
    ensure!(err.contains("conflict with \"other\""), "{err}");
    k.ok(&["apply", "--server-side", "--force-conflicts", "-f", &web])?;
    Ok(())
}

#[test]
fn pods_watch_wait_describe_delete() -> Result<()> {
    let env = env()?;
    let k = &env.k;
    k.ok(&["run", "p1", "--image=nginx", "--labels=app=web"])?;
    k.ok(&["run", "p2", "--image=nginx", "--labels=app=web"])?;
    let pods = k.ok(&["get", "pods"])?;
    let header: Vec<&str> = pods.lines().next().unwrap_or("").split_whitespace().collect();
    ensure!(header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], "{pods}");
    ensure!(pods.contains("p1") && pods.contains("0/1") && pods.contains("Pending"), "{pods}");
    let all = k.ok(&["get", "pods", "-A", "--show-labels"])?;
    ensure!(
        all.starts_with("NAMESPACE")
            && all.contains("default")
            && all.contains("app=web")
            && all.contains("run=p1")
            || all.contains("app=web"),
        "{all}"
    );
    let chunked = k.ok(&["get", "pods", "--chunk-size=1", "-o", "name"])?;
    ensure!(chunked.lines().count() == 2, "{chunked}");
    let wide = k.ok(&["get", "pods", "-o", "wide"])?;
    ensure!(wide.contains("NOMINATED NODE") && wide.contains("<none>"), "{wide}");

    // get -w prints a row for a pod created after it started.
    let mut watch =
        k.command(&["get", "pods", "-w"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let stdout = watch.stdout.take().context("watch stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    wait::until("watch shows existing pods", Duration::from_secs(30), || {
        seen.extend(rx.try_iter());
        Ok(seen.iter().any(|l| l.starts_with("p2")))
    })?;
    k.ok(&["run", "p3", "--image=nginx", "--labels=app=other"])?;
    wait::until("watch shows p3", Duration::from_secs(30), || {
        seen.extend(rx.try_iter());
        Ok(seen.iter().any(|l| l.starts_with("p3")))
    })?;
    let _ = watch.kill();
    let _ = watch.wait();
    let _ = reader.join();

    // wait --for=condition=Ready: a node agent's status write makes the pod Ready.
    let waiter = k
        .command(&["wait", "--for=condition=Ready", "pod/p1", "--timeout=60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    k.ok(&["patch", "pod", "p1", "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}],"containerStatuses":[{"name":"p1","ready":true,"restartCount":0,"image":"nginx","imageID":"","state":{"running":{}}}]}}"#])?;
    let out = waiter.wait_with_output()?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("condition met"),
        "{out:?}"
    );
    let pods = k.ok(&["get", "pod", "p1"])?;
    ensure!(pods.contains("1/1") && pods.contains("Running"), "{pods}");

    let d = k.ok(&["describe", "pod", "p1"])?;
    ensure!(d.contains("Name:") && d.contains("p1") && d.contains("nginx"), "{d}");

    let out = k.ok(&["delete", "pods", "-l", "app=web"])?;
    ensure!(out.contains("pod \"p1\" deleted") && out.contains("pod \"p2\" deleted"), "{out}");
    let left = k.ok(&["get", "pods", "-o", "name"])?;
    ensure!(left.trim() == "pod/p3", "{left}");
    Ok(())
}

#[test]
fn namespaces_services_and_auth() -> Result<()> {
    let env = env_at(1)?;
    let (k, cluster) = (&env.k, &env.cluster);
    k.ok(&["create", "namespace", "demo"])?;
    k.ok(&["create", "configmap", "c1", "-n", "demo", "--from-literal=a=b"])?;
    let cm = k.ok(&["get", "cm", "-n", "demo"])?;
    ensure!(cm.contains("c1") && cm.contains("DATA"), "{cm}");
    let out = k.ok(&["delete", "namespace", "demo", "--timeout=60s"])?;
    ensure!(out.contains("deleted"), "{out}");
    let gone = k.fails(&["get", "namespace", "demo"])?;
    ensure!(gone.contains("NotFound"), "{gone}");
    let err = k.fails(&["create", "configmap", "c2", "-n", "demo"])?;
    ensure!(err.contains("namespaces \"demo\" not found"), "{err}");

    k.ok(&["create", "deployment", "web2", "--image=nginx", "--port=80"])?;
    k.ok(&["expose", "deploy", "web2", "--port=80", "--type=NodePort"])?;
    let svc = k.ok(&[
        "get",
        "svc",
        "web2",
        "-o",
        "jsonpath={.spec.clusterIP} {.spec.ports[0].nodePort}",
    ])?;
    let mut parts = svc.split_whitespace();
    let ip: std::net::Ipv4Addr = parts.next().context("clusterIP")?.parse()?;
    let port: u16 = parts.next().context("nodePort")?.parse()?;
    ensure!(ip.octets()[0] == 10 && (96..112).contains(&ip.octets()[1]), "{ip}");
    ensure!((30000..=32767).contains(&port), "{port}");
    let fixed = write(
        k,
        "svc.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: clash\nspec:\n  clusterIP: {ip}\n  ports:\n  - port: 80\n"
        ),
    )?;
    let err = k.fails(&["apply", "-f", &fixed])?;
    ensure!(err.contains("already allocated"), "{err}");
    k.ok(&["delete", "svc", "web2"])?;
    k.ok(&["apply", "-f", &fixed])?;

    // Bearer tokens authenticate; anonymous requests get 401.
    let empty = write(k, "empty.kubeconfig", "apiVersion: v1\nkind: Config\n")?;
    let ca = cluster.ca().display().to_string();
    let url = cluster.url(1);
    let base = [
        "--kubeconfig",
        empty.as_str(),
        "--server",
        url.as_str(),
        "--certificate-authority",
        ca.as_str(),
    ];
    let mut with_token: Vec<&str> = base.to_vec();
    let token_arg = format!("--token={TEST_TOKEN}");
    with_token.extend([token_arg.as_str(), "get", "ns", "default"]);
    k.ok(&with_token)?;
    let anon = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/stderr", "-w", "%{http_code}", "--cacert", ca.as_str()])
        .arg(format!("{url}/api/v1/namespaces"))
        .output()?;
    let code = String::from_utf8_lossy(&anon.stdout);
    let body = String::from_utf8_lossy(&anon.stderr);
    ensure!(code == "401" && body.contains("\"reason\":\"Unauthorized\""), "{code} {body}");

    let audit = std::fs::read_to_string(cluster.audit_log(1))?;
    ensure!(
        audit.lines().any(|l| l.contains("\"verb\":\"create\"")
            && l.contains("kubernetes-admin")
            && l.contains("\"resource\":\"namespaces\"")),
        "{audit}"
    );
    ensure!(
        audit.lines().any(|l| l.contains("\"verb\":\"delete\"") && l.contains("\"code\":")),
        "{audit}"
    );
    Ok(())
}

#[test]
fn binding_graceful_deletion_finalizers_and_limits() -> Result<()> {
    let env = env_at(2)?;
    let k = &env.k;
    // pods/binding sets nodeName once.
    k.ok(&["run", "b1", "--image=nginx"])?;
    let binding = write(
        k,
        "binding.json",
        r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"b1"},"target":{"apiVersion":"v1","kind":"Node","name":"node-a"}}"#,
    )?;
    k.ok(&["create", "--raw", "/api/v1/namespaces/default/pods/b1/binding", "-f", &binding])?;
    ensure!(k.ok(&["get", "pod", "b1", "-o", "jsonpath={.spec.nodeName}"])? == "node-a");
    let again = k.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/b1/binding",
        "-f",
        &binding,
    ])?;
    ensure!(again.contains("already assigned") || again.contains("Conflict"), "{again}");

    // A bound pod is deleted gracefully: it stays Terminating until the node (here: a forced
    // delete with grace 0, as the kubelet does) removes it.
    k.ok(&["delete", "pod", "b1", "--wait=false"])?;
    let state = k.ok(&[
        "get",
        "pod",
        "b1",
        "-o",
        "jsonpath={.metadata.deletionTimestamp} {.metadata.deletionGracePeriodSeconds}",
    ])?;
    ensure!(state.ends_with(" 30") && state.len() > 4, "{state}");
    ensure!(k.ok(&["get", "pod", "b1"])?.contains("Terminating"));
    k.ok(&["delete", "pod", "b1", "--grace-period=0", "--force"])?;
    ensure!(k.fails(&["get", "pod", "b1"])?.contains("NotFound"));

    // Finalizers hold an object with a deletionTimestamp until they are removed.
    let fin = write(
        k,
        "fin.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\n",
    )?;
    k.ok(&["apply", "-f", &fin])?;
    k.ok(&["delete", "cm", "held", "--wait=false"])?;
    ensure!(
        !k.ok(&["get", "cm", "held", "-o", "jsonpath={.metadata.deletionTimestamp}"])?.is_empty()
    );
    k.ok(&["patch", "cm", "held", "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#])?;
    ensure!(k.fails(&["get", "cm", "held"])?.contains("NotFound"));

    // A body for another kind is refused.
    let secret = write(
        k,
        "secret.json",
        r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"wrong"}}"#,
    )?;
    let err =
        k.fails(&["create", "--raw", "/api/v1/namespaces/default/configmaps", "-f", &secret])?;
    ensure!(err.contains("does not match the expected kind"), "{err}");

    // Bodies over 3 MiB are refused with 413.
    let big = k.home().join("big.txt");
    std::fs::write(&big, "x".repeat(4 * 1024 * 1024))?;
    let err =
        k.fails(&["create", "configmap", "big", &format!("--from-file={}", big.display())])?;
    ensure!(
        err.contains("too large") || err.contains("413") || err.contains("RequestEntityTooLarge"),
        "{err}"
    );
    Ok(())
}

/// Writes `value` at `key` with the real etcdctl, straight into the store under the API server.
fn etcdctl_put(endpoints: &str, key: &str, value: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoints, "--command-timeout", "10s", "put", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("etcdctl runs")?;
    child.stdin.take().context("piped stdin")?.write_all(value)?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "etcdctl put {key}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Values written straight through etcd that do not decode as JSON values (invalid UTF-8, a
/// lone surrogate escape) are left out of lists, and a key repeated inside an object is served
/// once: a list stays JSON that strict clients (`serde_json`, as in kube-rs) can read.
#[test]
fn lists_leave_out_stored_values_that_do_not_decode() -> Result<()> {
    let name = "lists_leave_out_stored_values_that_do_not_decode";
    if !skiff_e2e::privileged::tools(name, &["etcdctl"]) {
        return Ok(());
    }
    let env = env()?;
    let (k, cluster) = (&env.k, &env.cluster);
    let endpoints = cluster.store_endpoints();
    let key = |n: &str| format!("/registry/core/configmaps/default/{n}");
    let cm = |n: &str, data: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{n}","namespace":"default"}},"data":{data}}}"#
        )
    };
    let mut bad_utf8 = cm("skt-bad-utf8", r#"{"a":"?"}"#).into_bytes();
    let at = bad_utf8.iter().position(|b| *b == b'?').context("placeholder")?;
    bad_utf8[at] = 0xff;
    etcdctl_put(&endpoints, &key("skt-bad-utf8"), &bad_utf8)?;
    etcdctl_put(
        &endpoints,
        &key("skt-bad-surrogate"),
        cm("skt-bad-surrogate", r#"{"a":"\ud800"}"#).as_bytes(),
    )?;
    etcdctl_put(
        &endpoints,
        &key("skt-repeated"),
        cm("skt-repeated", r#"{"a":"1","a":"2"}"#).as_bytes(),
    )?;
    // Written last: once it is listed, the cache has applied the writes before it.
    etcdctl_put(&endpoints, &key("skt-last"), cm("skt-last", r#"{"a":"b"}"#).as_bytes())?;
    let path = "/api/v1/namespaces/default/configmaps";
    let mut body = Vec::new();
    wait::until("the last write is listed", Duration::from_secs(30), || {
        let out = k.run(&["get", "--raw", path])?;
        body = out.stdout;
        Ok(out.status.success() && body.windows(8).any(|w| w == b"skt-last"))
    })?;
    let list: serde_json::Value = serde_json::from_slice(&body)
        .with_context(|| format!("the list is JSON: {}", String::from_utf8_lossy(&body)))?;
    let names: Vec<&str> = list["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|i| i.pointer("/metadata/name").and_then(serde_json::Value::as_str))
        .filter(|n| n.starts_with("skt-"))
        .collect();
    ensure!(names == ["skt-last", "skt-repeated"], "{names:?}");
    let repeated = b"\"a\":\"1\"";
    ensure!(
        !body.windows(repeated.len()).any(|w| w == repeated),
        "{}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}
