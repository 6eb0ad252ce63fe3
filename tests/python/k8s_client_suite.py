"""The official Python `kubernetes` client (37.x) against Skiff's API server.

Run by tests/tests/api_python.rs with KUBECONFIG set; prints PYTHON-SUITE-OK on success and
exits non-zero with a traceback otherwise. The server under test keeps a short watch history
(SKIFF_WATCH_HISTORY events per resource) so that a 410 Expired can be provoked.
"""

import os
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config()
v1 = client.CoreV1Api()
apps = client.AppsV1Api()
NS = "default"
HISTORY = int(os.environ.get("SKIFF_WATCH_HISTORY", "50"))


def expect_status(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ApiException as e:
        assert e.status == code, f"expected {code}, got {e.status}: {e.body}"
        return e
    raise AssertionError(f"expected HTTP {code}, call succeeded")


def cm(name, value="1", labels=None):
    return client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {"suite": "py"}),
        data={"k": value},
    )


# /version/ (the client adds the slash).
version = client.VersionApi().get_code()
assert version.major == "1" and version.minor == "33", version

# CRUD and optimistic concurrency.
created = v1.create_namespaced_config_map(NS, cm("py-a"))
assert created.metadata.uid and created.metadata.resource_version
expect_status(409, v1.create_namespaced_config_map, NS, cm("py-a"))
current = v1.read_namespaced_config_map("py-a", NS)
current.data["k"] = "2"
v1.replace_namespaced_config_map("py-a", NS, current)
created.data["k"] = "stale"
err = expect_status(409, v1.replace_namespaced_config_map, "py-a", NS, created)
assert "the object has been modified" in err.body, err.body
expect_status(404, v1.read_namespaced_config_map, "nope", NS)
bad = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Bad_Name"))
err = expect_status(422, v1.create_namespaced_config_map, NS, bad)
assert "metadata.name" in err.body, err.body

# Patches: dict -> strategic merge, list -> JSON patch, explicit merge patch, server-side apply.
v1.patch_namespaced_config_map("py-a", NS, {"metadata": {"labels": {"p": "smp"}}})
v1.patch_namespaced_config_map("py-a", NS, [{"op": "add", "path": "/data/j", "value": "json"}])
v1.patch_namespaced_config_map(
    "py-a", NS, {"data": {"m": "merge"}}, _content_type="application/merge-patch+json"
)
applied = v1.patch_namespaced_config_map(
    "py-b",
    NS,
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "py-b", "labels": {"suite": "py"}}, "data": {"a": "1"}},
    field_manager="python-suite",
    _content_type="application/apply-patch+yaml",
)
assert any(m.manager == "python-suite" for m in applied.metadata.managed_fields)
got = v1.read_namespaced_config_map("py-a", NS)
assert got.data == {"k": "2", "j": "json", "m": "merge"}, got.data
assert got.metadata.labels["p"] == "smp"

# A Deployment: server defaults parse into the strict models; scale and status subresources.
dep = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "py-web"},
    "spec": {
        "selector": {"matchLabels": {"app": "py-web"}},
        "template": {
            "metadata": {"labels": {"app": "py-web"}},
            "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25", "resources": {"requests": {"cpu": "500m"}}}]},
        },
    },
}
d = apps.create_namespaced_deployment(NS, dep)
assert d.spec.replicas == 1 and d.spec.strategy.rolling_update.max_surge == "25%"
assert d.spec.template.spec.containers[0].resources.requests["cpu"] == "500m"
apps.patch_namespaced_deployment_scale("py-web", NS, {"spec": {"replicas": 3}})
assert apps.read_namespaced_deployment_scale("py-web", NS).spec.replicas == 3
apps.patch_namespaced_deployment_status("py-web", NS, {"status": {"replicas": 3, "observedGeneration": 2}})
assert apps.read_namespaced_deployment_status("py-web", NS).status.observed_generation == 2

# List, then watch from the list's resourceVersion; resume from the last event's version.
listed = v1.list_namespaced_config_map(NS, label_selector="suite=py")
assert listed.items is not None and len(listed.items) == 2, listed.items
rv = listed.metadata.resource_version


def create_later(names):
    for n in names:
        v1.create_namespaced_config_map(NS, cm(n))


threading.Thread(target=create_later, args=(["py-w1", "py-w2", "py-w3"],)).start()
seen, last_rv = [], rv
w = watch.Watch()
for ev in w.stream(v1.list_namespaced_config_map, NS, label_selector="suite=py", resource_version=rv, timeout_seconds=30):
    seen.append((ev["type"], ev["object"].metadata.name))
    last_rv = ev["object"].metadata.resource_version
    if len(seen) == 3:
        w.stop()
assert seen == [("ADDED", "py-w1"), ("ADDED", "py-w2"), ("ADDED", "py-w3")], seen

v1.create_namespaced_config_map(NS, cm("py-w4"))
v1.delete_namespaced_config_map("py-w1", NS)
resumed = []
w = watch.Watch()
for ev in w.stream(v1.list_namespaced_config_map, NS, label_selector="suite=py", resource_version=last_rv, timeout_seconds=30):
    resumed.append((ev["type"], ev["object"].metadata.name))
    if len(resumed) == 2:
        w.stop()
assert resumed == [("ADDED", "py-w4"), ("DELETED", "py-w1")], resumed

# A selector transition: an object that stops matching is delivered as DELETED.
rv = v1.list_namespaced_config_map(NS, label_selector="suite=py").metadata.resource_version
v1.patch_namespaced_config_map("py-w2", NS, {"metadata": {"labels": {"suite": "other"}}})
w = watch.Watch()
for ev in w.stream(v1.list_namespaced_config_map, NS, label_selector="suite=py", resource_version=rv, timeout_seconds=30):
    assert (ev["type"], ev["object"].metadata.name) == ("DELETED", "py-w2"), ev["type"]
    w.stop()

# 410 recovery: push the history window past an old version, watch from it (in-stream ERROR
# 410 -> ApiException), re-list and watch again.
old_rv = v1.list_namespaced_config_map(NS).metadata.resource_version
for i in range(HISTORY + 10):
    v1.create_namespaced_config_map(NS, cm(f"py-fill-{i}", labels={"suite": "fill"}))
try:
    for ev in watch.Watch().stream(v1.list_namespaced_config_map, NS, resource_version=old_rv, timeout_seconds=10):
        raise AssertionError(f"expected 410, got event {ev['type']}")
    raise AssertionError("expected 410, stream ended")
except ApiException as e:
    assert e.status == 410, e
fresh = v1.list_namespaced_config_map(NS, label_selector="suite=py")
threading.Thread(target=create_later, args=(["py-after-410"],)).start()
w = watch.Watch()
for ev in w.stream(v1.list_namespaced_config_map, NS, label_selector="suite=py", resource_version=fresh.metadata.resource_version, timeout_seconds=30):
    assert ev["object"].metadata.name == "py-after-410"
    w.stop()

# Deletes: a Status for configmaps, the object for pods; then 404.
status = v1.delete_namespaced_config_map("py-a", NS)
status = status if isinstance(status, dict) else status.to_dict()
assert status["status"] == "Success", status
pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "py-pod"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
v1.create_namespaced_pod(NS, pod)
v1.delete_namespaced_pod("py-pod", NS)
expect_status(404, v1.read_namespaced_pod, "py-pod", NS)
deleted = v1.delete_collection_namespaced_config_map(NS, label_selector="suite=fill")
assert v1.list_namespaced_config_map(NS, label_selector="suite=fill").items == []

print("PYTHON-SUITE-OK")
