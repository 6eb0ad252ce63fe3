//! The generic registry: create, read, update, delete, lists and subresources for every entry
//! of the resource table, over the store (writes and single reads) and the watch cache (lists).
//! Kind-specific behaviour is data (defaulting, validation, status/scale subresources) plus a
//! few upstream strategies that no table can express: ClusterIP/NodePort allocation, graceful
//! pod deletion, namespace termination, pod binding.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{Map, Value, json};
use skiff_api::selector::{FieldSelector, LabelSelector};
use skiff_api::{Resource, Subresource, defaults, meta, resource, validate};

use crate::alloc::{self, Ranges};
use crate::cache::{Cache, CachedObject, Keyed, decode, set_rv};
use crate::status::{self, ApiError};
use crate::store::{Cmp, Op, Store, Stored};

/// Who is writing and how.
#[derive(Clone, Debug, Default)]
pub struct WriteCtx {
    pub user: String,
    pub groups: Vec<String>,
    /// `fieldManager`, or one derived from the User-Agent.
    pub manager: String,
    pub dry_run: bool,
    /// Unix seconds.
    pub now: i64,
    /// Record `manager` in managedFields (false for server-side apply, which records itself).
    pub record_managed: bool,
}

/// `DeleteOptions` that matter here.
#[derive(Clone, Debug, Default)]
pub struct DeleteOpts {
    pub grace_period: Option<i64>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl DeleteOpts {
    pub fn from_value(v: &Value) -> Self {
        Self {
            grace_period: v.get("gracePeriodSeconds").and_then(Value::as_i64),
            uid: v.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_owned),
            resource_version: v
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
    }
}

/// How a list was asked for.
#[derive(Clone, Debug, Default)]
pub struct ListOpts {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    /// `resourceVersion`: `None` = most recent, `Some(0)` = any.
    pub resource_version: Option<i64>,
    pub exact: bool,
}

/// One page of a list.
pub struct ListPage {
    pub items: Vec<Arc<CachedObject>>,
    pub rev: i64,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

/// Result of a delete.
pub enum Deleted {
    /// Gone now; the last state.
    Gone(Value),
    /// Still present (finalizers, grace period, namespace termination), with its new state.
    Pending(Value),
}

/// The registry shared by all request handlers.
pub struct Registry {
    pub store: Store,
    pub cache: Arc<Cache>,
    pub ranges: Ranges,
}

const CONSISTENT_READ_WAIT: Duration = Duration::from_secs(3);

/// The stored encoding of an object: without `resourceVersion` (the key's mod revision is) and
/// `selfLink`. Both are removed from `obj` itself; every caller sets the resourceVersion
/// again from the write's revision before the object is seen.
fn strip_for_storage(obj: &mut Value) -> Result<Vec<u8>, ApiError> {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("selfLink");
    }
    serde_json::to_vec(obj).map_err(ApiError::internal)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn meta_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj.get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

fn spec_part(obj: &Value) -> Value {
    // For kinds without a spec, everything but metadata and status counts as "spec".
    if let Some(s) = obj.get("spec") {
        s.clone()
    } else {
        let mut o = obj.clone();
        if let Some(m) = o.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        o
    }
}

fn continue_token(rev: i64, key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"rv": rev, "start": key}).to_string())
}

fn parse_continue(tok: &str) -> Result<(i64, String), ApiError> {
    use base64::Engine;
    let bad = || ApiError::bad_request(format!("continue key is not valid: {tok}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tok).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((
        v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?,
        v.get("start").and_then(Value::as_str).ok_or_else(bad)?.to_owned(),
    ))
}

/// Whether an object is in `namespace` (always for cluster-scoped lists).
fn matches(opts: &ListOpts, obj: &Value) -> bool {
    opts.labels.matches_object(obj) && opts.fields.matches(obj)
}

impl Registry {
    /// Reads one object from the store (a consistent read).
    pub async fn get(&self, res: &Resource, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.get_stored(res, ns, name).await.map(|(v, _)| v)
    }

    async fn get_stored(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
    ) -> Result<(Value, i64), ApiError> {
        let (kv, _) = self.store.get(&res.key(ns, name)).await?;
        let kv = kv.ok_or_else(|| ApiError::not_found(res, name))?;
        let v = decode(&kv)
            .ok_or_else(|| ApiError::internal(format!("stored object {} is not JSON", kv.key)))?;
        Ok((v, kv.mod_revision))
    }

    /// Lists from the watch cache (consistent unless `resourceVersion=0`); pages continue at the
    /// first page's revision, from the store once the cache has moved on.
    pub async fn list(
        &self,
        res: &Resource,
        ns: Option<&str>,
        opts: &ListOpts,
    ) -> Result<ListPage, ApiError> {
        let prefix = res.list_prefix(ns);
        let (at_rev, after) = match &opts.continue_token {
            Some(t) => {
                let (rev, start) = parse_continue(t)?;
                (Some(rev), Some(start))
            }
            None => (None, None),
        };
        let wanted = match (at_rev, opts.resource_version) {
            (Some(r), _) | (None, Some(r)) => r,
            (None, None) => self.store.revision().await?,
        };
        let cache_ok = self
            .cache
            .wait_for(wanted, if wanted == 0 { Duration::ZERO } else { CONSISTENT_READ_WAIT })
            .await
            || wanted == 0;
        let exact_needed =
            at_rev.is_some() || (opts.exact && opts.resource_version.is_some_and(|r| r > 0));
        let (candidates, rev): (Vec<Keyed>, i64) =
            if cache_ok && (!exact_needed || self.cache.resource_revision(res) == wanted) {
                self.cache.snapshot(res, &prefix, after.as_deref())
            } else {
                let read_rev = if exact_needed { wanted } else { 0 };
                let (items, rev) = self
                    .store
                    .range(&prefix, after.as_deref().map(|a| format!("{a}\0")).as_deref(), read_rev)
                    .await
                    .map_err(|e| match e {
                        crate::store::StoreError::Compacted(_) => {
                            ApiError::expired(format!("too old resource version: {wanted}"))
                        }
                        other => other.into(),
                    })?;
                let items = items
                    .iter()
                    .filter_map(|kv| {
                        Some((Arc::from(kv.key.as_str()), Arc::new(CachedObject::new(decode(kv)?))))
                    })
                    .collect();
                (items, if exact_needed { wanted } else { rev })
            };
        let mut items = Vec::new();
        let mut continue_token_out = None;
        let mut remaining = None;
        let limit = opts.limit.filter(|l| *l > 0);
        // Without selectors the objects are not looked into (nor decoded).
        let select_all = opts.labels.0.is_empty() && opts.fields.0.is_empty();
        let mut iter = candidates.iter().filter(|(_, v)| select_all || matches(opts, v));
        for (key, v) in iter.by_ref() {
            items.push(Arc::clone(v));
            if limit.is_some_and(|l| items.len() >= l) {
                continue_token_out = Some(continue_token(rev, key));
                break;
            }
        }
        if continue_token_out.is_some() {
            let left = iter.count();
            if left == 0 {
                continue_token_out = None;
            } else if opts.labels.0.is_empty() && opts.fields.0.is_empty() {
                remaining = Some(left);
            }
        }
        Ok(ListPage { items, rev, continue_token: continue_token_out, remaining })
    }

    async fn check_namespace(&self, ns: &str) -> Result<(), ApiError> {
        let nsres = resource::find("", "v1", "namespaces")
            .ok_or_else(|| ApiError::internal("no namespaces resource"))?;
        // The cached namespace answers at once; the store is asked only when the cache has
        // not seen it (just created through another master).
        let found = match self.cache.get(nsres, &nsres.key("", ns)) {
            Some(n) => Ok(n),
            None => self.get(nsres, "", ns).await.map(|v| Arc::new(CachedObject::new(v))),
        };
        match found {
            Ok(n) if n.pointer("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null()) => {
                Err(ApiError {
                    details: Some(
                        json!({"name": ns, "kind": "namespaces", "causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}]}),
                    ),
                    ..ApiError::forbidden(format!(
                        "unable to create new content in namespace {ns} because it is being terminated"
                    ))
                })
            }
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => Err(ApiError::namespace_not_found(ns)),
            Err(e) => Err(e),
        }
    }

    /// Creates an object; returns it with its resourceVersion.
    pub async fn create(
        &self,
        res: &Resource,
        ns: &str,
        obj: Value,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        self.create_encoded(res, ns, obj, ctx).await.map(|(v, _)| v)
    }

    /// [`Self::create`], also returning the created object's JSON when it could be made from
    /// the stored bytes without encoding the object again (not for dry runs).
    #[expect(
        clippy::too_many_lines,
        reason = "create is one upstream strategy: metadata, defaults, validation, allocation"
    )]
    pub async fn create_encoded(
        &self,
        res: &Resource,
        ns: &str,
        mut obj: Value,
        ctx: &WriteCtx,
    ) -> Result<(Value, Option<bytes::Bytes>), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the request body must be an object"));
        }
        obj["apiVersion"] = Value::from(res.api_version());
        obj["kind"] = Value::from(res.kind);
        let now = meta::format_rfc3339(ctx.now);
        {
            let m = meta_mut(&mut obj)?;
            if m.get("resourceVersion").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
                return Err(ApiError::bad_request(
                    "resourceVersion should not be set on objects to be created",
                ));
            }
            if res.namespaced {
                match m.get("namespace").and_then(Value::as_str) {
                    Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                        return Err(ApiError::bad_request(
                            "the namespace of the provided object does not match the namespace sent on the request",
                        ));
                    }
                    _ => {
                        m.insert("namespace".to_owned(), Value::from(ns));
                    }
                }
            } else {
                m.remove("namespace");
            }
            let has_name = m.get("name").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
            if !has_name
                && let Some(prefix) =
                    m.get("generateName").and_then(Value::as_str).filter(|p| !p.is_empty())
            {
                let name = meta::generate_name(prefix, &mut rand::rng());
                m.insert("name".to_owned(), Value::from(name));
            }
            m.insert("uid".to_owned(), Value::from(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".to_owned(), Value::from(now));
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("selfLink");
            if res.has(Subresource::Status) || obj.get("spec").is_some() {
                meta_mut(&mut obj)?.insert("generation".to_owned(), json!(1));
            }
        }
        // Status is written through /status; a create starts from an empty one (as upstream).
        if res.has(Subresource::Status)
            && !matches!(res.kind, "Node" | "Namespace")
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        let name = meta::name(&obj).to_owned();
        let uid = meta_str(&obj, "uid").unwrap_or("").to_owned();
        defaults::apply(res.group, res.kind, &mut obj);
        if res.kind == "Job" {
            defaults::job_selector(&mut obj, &uid, &name);
        }
        let causes = validate::validate(res, &obj);
        if !causes.is_empty() {
            return Err(ApiError::invalid(res, &name, &causes));
        }
        crate::patch_bridge::record_update(None, &mut obj, ctx, None)?;
        if res.namespaced {
            self.check_namespace(ns).await?;
        }
        let key = res.key(ns, &name);
        if ctx.dry_run {
            if self.store.get(&key).await?.0.is_some() {
                return Err(ApiError::already_exists(res, &name));
            }
            return Ok((obj, None));
        }
        let allocates = res.kind == "Service" && res.group.is_empty();
        for _attempt in 0..16 {
            // Only a Service needs the request's object again (to retry its allocation).
            let mut candidate = if allocates { obj.clone() } else { std::mem::take(&mut obj) };
            let (guards, extra) = if allocates {
                self.allocate(res, &mut candidate, &key, None)?
            } else {
                (Vec::new(), Vec::new())
            };
            let mut all_guards = vec![Cmp::Absent(key.clone())];
            all_guards.extend(guards);
            let mut ops = vec![Op::Put(key.clone(), strip_for_storage(&mut candidate)?)];
            ops.extend(extra);
            let (ok, rev) = self.store.txn(&all_guards, &ops).await?;
            if ok {
                set_rv(&mut candidate, rev);
                // The stored bytes with the revision spliced in are the created object's JSON.
                let json = match &ops[0] {
                    Op::Put(_, stored) => crate::cache::splice::with_resource_version(stored, rev),
                    Op::Delete(_) => None,
                };
                return Ok((candidate, json));
            }
            if self.store.get(&key).await?.0.is_some() {
                return Err(ApiError::already_exists(res, &name));
            }
            if !allocates {
                obj = candidate;
                continue;
            }
            // An allocation raced; explicit ones are errors, random ones are retried.
            if candidate.pointer("/spec/clusterIP") == obj.pointer("/spec/clusterIP")
                && obj
                    .pointer("/spec/clusterIP")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty() && s != "None")
            {
                let ip = obj.pointer("/spec/clusterIP").cloned().unwrap_or(Value::Null);
                return Err(ApiError::invalid(
                    res,
                    &name,
                    &[validate::Cause {
                        reason: "FieldValueInvalid",
                        message: format!("Invalid value: {ip}: provided IP is already allocated"),
                        field: "spec.clusterIPs".to_owned(),
                    }],
                ));
            }
        }
        Err(ApiError::internal("could not allocate a cluster IP or node port"))
    }

    /// Allocation guards and puts for a Service being written; `old` is the stored Service on
    /// updates (its allocations are kept).
    #[expect(
        clippy::too_many_lines,
        reason = "ClusterIP and NodePort allocation and release in one place"
    )]
    fn allocate(
        &self,
        res: &Resource,
        svc: &mut Value,
        key: &str,
        old: Option<&Value>,
    ) -> Result<(Vec<Cmp>, Vec<Op>), ApiError> {
        let name = meta::name(svc).to_owned();
        let invalid = |field: &str, v: &Value, why: &str| {
            ApiError::invalid(
                res,
                &name,
                &[validate::Cause {
                    reason: "FieldValueInvalid",
                    message: format!("Invalid value: {v}: {why}"),
                    field: field.to_owned(),
                }],
            )
        };
        let mut guards = Vec::new();
        let mut ops = Vec::new();
        let mut rng = rand::rng();
        let ty =
            svc.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_owned();
        let old_ip = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        if ty != "ExternalName" {
            let requested =
                svc.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("").to_owned();
            let ip = if requested == "None" {
                None
            } else if let Some(old_ip) =
                old_ip.clone().filter(|o| requested.is_empty() || *o == requested)
            {
                Some(old_ip)
            } else if requested.is_empty() {
                let ip = self.ranges.random_ip(&mut rng);
                guards.push(Cmp::Absent(alloc::ip_key(ip)));
                ops.push(Op::Put(alloc::ip_key(ip), key.as_bytes().to_vec()));
                Some(ip.to_string())
            } else {
                let ip: std::net::Ipv4Addr = requested.parse().map_err(|_| {
                    invalid(
                        "spec.clusterIP",
                        &Value::from(requested.clone()),
                        "must be a valid IP address",
                    )
                })?;
                if !self.ranges.contains(ip) {
                    return Err(invalid(
                        "spec.clusterIPs",
                        &Value::from(requested.clone()),
                        "provided IP is not in the valid range",
                    ));
                }
                guards.push(Cmp::Absent(alloc::ip_key(ip)));
                ops.push(Op::Put(alloc::ip_key(ip), key.as_bytes().to_vec()));
                Some(requested)
            };
            if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
                let ip = ip.unwrap_or_else(|| "None".to_owned());
                spec.insert("clusterIP".to_owned(), Value::from(ip.clone()));
                spec.insert("clusterIPs".to_owned(), json!([ip]));
            }
        }
        let old_ports: Vec<i64> = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
            .collect();
        if ty == "NodePort" || ty == "LoadBalancer" {
            let mut taken: Vec<i64> = Vec::new();
            if let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                for (i, p) in ports.iter_mut().enumerate() {
                    let requested = p.get("nodePort").and_then(Value::as_i64).filter(|n| *n != 0);
                    let port = match requested {
                        Some(n) if old_ports.contains(&n) => n,
                        Some(n) => {
                            let (lo, hi) = self.ranges.node_ports;
                            if !(i64::from(lo)..=i64::from(hi)).contains(&n) {
                                return Err(invalid(
                                    &format!("spec.ports[{i}].nodePort"),
                                    &Value::from(n),
                                    &format!(
                                        "provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                                    ),
                                ));
                            }
                            guards.push(Cmp::Absent(alloc::port_key(n)));
                            ops.push(Op::Put(alloc::port_key(n), key.as_bytes().to_vec()));
                            n
                        }
                        None => {
                            let n = loop {
                                let n = i64::from(self.ranges.random_port(&mut rng));
                                if !taken.contains(&n) && !old_ports.contains(&n) {
                                    break n;
                                }
                            };
                            guards.push(Cmp::Absent(alloc::port_key(n)));
                            ops.push(Op::Put(alloc::port_key(n), key.as_bytes().to_vec()));
                            n
                        }
                    };
                    taken.push(port);
                    p["nodePort"] = Value::from(port);
                }
            }
        } else if let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.remove("nodePort");
            }
        }
        // Release what the old version held and the new one does not.
        let new_ip = svc.pointer("/spec/clusterIP").and_then(Value::as_str).map(str::to_owned);
        if let Some(old_ip) =
            old_ip.filter(|o| Some(o) != new_ip.as_ref()).and_then(|o| o.parse().ok())
        {
            ops.push(Op::Delete(alloc::ip_key(old_ip)));
        }
        let new_ports: Vec<i64> = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
            .collect();
        for p in old_ports.into_iter().filter(|p| !new_ports.contains(p)) {
            ops.push(Op::Delete(alloc::port_key(p)));
        }
        Ok((guards, ops))
    }

    fn release_ops(svc: &Value) -> Vec<Op> {
        let mut ops = Vec::new();
        if let Some(ip) =
            svc.pointer("/spec/clusterIP").and_then(Value::as_str).and_then(|s| s.parse().ok())
        {
            ops.push(Op::Delete(alloc::ip_key(ip)));
        }
        for p in svc.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
            if let Some(n) = p.get("nodePort").and_then(Value::as_i64) {
                ops.push(Op::Delete(alloc::port_key(n)));
            }
        }
        ops
    }

    /// Builds the object to store for an update of `old` with `new` (through `sub` when a
    /// subresource is written), or an error. Pure apart from allocation.
    fn prepare_update(
        res: &Resource,
        old: &Value,
        mut new: Value,
        sub: Option<Subresource>,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        let name = meta::name(old).to_owned();
        if !new.is_object() {
            return Err(ApiError::bad_request("the request body must be an object"));
        }
        if let Some(body_name) = meta_str(&new, "name").filter(|n| !n.is_empty() && *n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(rv) = meta_str(&new, "resourceVersion").filter(|r| !r.is_empty())
            && Some(rv) != meta_str(old, "resourceVersion")
        {
            return Err(ApiError::modified(res, &name));
        }
        if let Some(uid) = meta_str(&new, "uid").filter(|u| !u.is_empty())
            && Some(uid) != meta_str(old, "uid")
        {
            return Err(ApiError::conflict(
                res,
                &name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(old, "uid").unwrap_or("")
                ),
            ));
        }
        let mut out = if let Some(Subresource::Status) = sub {
            let mut o = old.clone();
            match new.get("status") {
                Some(s) => o["status"] = s.clone(),
                None => {
                    if let Some(m) = o.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            o
        } else {
            if res.has(Subresource::Status) {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            new
        };
        out["apiVersion"] = Value::from(res.api_version());
        out["kind"] = Value::from(res.kind);
        {
            let om = old.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
            let m = meta_mut(&mut out)?;
            for keep in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ] {
                match om.get(keep) {
                    Some(v) => m.insert(keep.to_owned(), v.clone()),
                    None => m.remove(keep),
                };
            }
            if !m.contains_key("managedFields")
                && let Some(mf) = om.get("managedFields")
            {
                m.insert("managedFields".to_owned(), mf.clone());
            }
        }
        defaults::apply(res.group, res.kind, &mut out);
        if res.kind == "Pod" && res.group.is_empty() {
            let old_node = old.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
            let new_node = out.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
            if sub.is_none() && !old_node.is_empty() && old_node != new_node {
                return Err(ApiError::invalid(res, &name, &[validate::Cause { reason: "FieldValueForbidden", message: "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations), `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".to_owned(), field: "spec".to_owned() }]));
            }
        }
        let causes = validate::validate(res, &out);
        if !causes.is_empty() {
            return Err(ApiError::invalid(res, &name, &causes));
        }
        if spec_part(old) != spec_part(&out) && old.pointer("/metadata/generation").is_some() {
            let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
            meta_mut(&mut out)?.insert("generation".to_owned(), json!(g + 1));
        }
        crate::patch_bridge::record_update(Some(old), &mut out, ctx, sub.map(Subresource::name))?;
        Ok(out)
    }

    /// Writes `new` over the stored version at `old_rev`. `Ok(None)` means the guard failed.
    async fn write(
        &self,
        res: &Resource,
        key: &str,
        old: &Value,
        old_rev: i64,
        mut new: Value,
        ctx: &WriteCtx,
    ) -> Result<Option<Value>, ApiError> {
        // Unchanged objects are not written (resourceVersion stays), as upstream.
        let mut cmp_old = old.clone();
        let mut cmp_new = new.clone();
        for v in [&mut cmp_old, &mut cmp_new] {
            if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
                m.remove("managedFields");
            }
        }
        if cmp_old == cmp_new {
            return Ok(Some(old.clone()));
        }
        if ctx.dry_run {
            return Ok(Some(new));
        }
        // Finalized objects whose deletion was requested go away on the write that empties
        // their finalizers.
        let deleting = new.pointer("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null());
        let no_finalizers =
            new.pointer("/metadata/finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty);
        let pod_grace_pending = res.kind == "Pod"
            && new
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                > 0;
        let ns_pending = res.kind == "Namespace"
            && new
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
        if deleting && no_finalizers && !pod_grace_pending && !ns_pending {
            let mut ops = vec![Op::Delete(key.to_owned())];
            if res.kind == "Service" {
                ops.extend(Self::release_ops(old));
            }
            let (ok, rev) =
                self.store.txn(&[Cmp::ModRevision(key.to_owned(), old_rev)], &ops).await?;
            if !ok {
                return Ok(None);
            }
            set_rv(&mut new, rev);
            return Ok(Some(new));
        }
        let (guards, extra) = if res.kind == "Service" && res.group.is_empty() {
            self.allocate(res, &mut new, key, Some(old))?
        } else {
            (Vec::new(), Vec::new())
        };
        let mut all = vec![Cmp::ModRevision(key.to_owned(), old_rev)];
        all.extend(guards);
        let mut ops = vec![Op::Put(key.to_owned(), strip_for_storage(&mut new)?)];
        ops.extend(extra);
        let (ok, rev) = self.store.txn(&all, &ops).await?;
        if !ok {
            return Ok(None);
        }
        set_rv(&mut new, rev);
        Ok(Some(new))
    }

    /// PUT: replaces the object (or its status) if the body's resourceVersion, when given, is
    /// current.
    pub async fn update(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        new: Value,
        sub: Option<Subresource>,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        let unconditional = meta_str(&new, "resourceVersion").is_none_or(str::is_empty);
        self.guaranteed_update(res, ns, name, ctx, sub, |_old| Ok(new.clone()), unconditional).await
    }

    /// Read-modify-write: `f` maps the current object to the desired one; retried on a
    /// concurrent change when `retry` (no resourceVersion precondition).
    #[expect(
        clippy::too_many_arguments,
        reason = "mirrors upstream GuaranteedUpdate; a struct would only rename them"
    )]
    pub async fn guaranteed_update<F>(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        ctx: &WriteCtx,
        sub: Option<Subresource>,
        mut f: F,
        retry: bool,
    ) -> Result<Value, ApiError>
    where
        F: FnMut(&Value) -> Result<Value, ApiError>,
    {
        let key = res.key(ns, name);
        for _ in 0..32 {
            let (old, old_rev) = self.get_stored(res, ns, name).await?;
            let desired = f(&old)?;
            let prepared = Self::prepare_update(res, &old, desired, sub, ctx)?;
            if let Some(v) = self.write(res, &key, &old, old_rev, prepared, ctx).await? {
                return Ok(v);
            }
            if !retry {
                return Err(ApiError::modified(res, name));
            }
        }
        Err(ApiError::modified(res, name))
    }

    /// DELETE of one object, honouring finalizers, pod grace periods and namespace
    /// termination.
    #[expect(
        clippy::too_many_lines,
        reason = "the delete strategy: preconditions, finalizers, pod grace, namespaces"
    )]
    pub async fn delete(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
        ctx: &WriteCtx,
    ) -> Result<Deleted, ApiError> {
        let key = res.key(ns, name);
        for _ in 0..32 {
            let (old, old_rev) = self.get_stored(res, ns, name).await?;
            if let Some(uid) = &opts.uid
                && meta_str(&old, "uid") != Some(uid.as_str())
            {
                return Err(ApiError::conflict(
                    res,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&old, "uid").unwrap_or("")
                    ),
                ));
            }
            if let Some(rv) = &opts.resource_version
                && meta_str(&old, "resourceVersion") != Some(rv.as_str())
            {
                return Err(ApiError::conflict(
                    res,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        meta_str(&old, "resourceVersion").unwrap_or("")
                    ),
                ));
            }
            let has_finalizers = old
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            let already = old.pointer("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null());
            let mut pending = None;
            if res.kind == "Namespace" {
                if !already
                    || old.pointer("/status/phase").and_then(Value::as_str) != Some("Terminating")
                {
                    let mut n = old.clone();
                    meta_mut(&mut n)?.insert(
                        "deletionTimestamp".to_owned(),
                        Value::from(meta::format_rfc3339(ctx.now)),
                    );
                    n["status"] = json!({"phase": "Terminating"});
                    pending = Some(n);
                } else {
                    return Ok(Deleted::Pending(old));
                }
            } else if res.kind == "Pod" && res.group.is_empty() {
                let bound = old
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty());
                let finished = matches!(
                    old.pointer("/status/phase").and_then(Value::as_str),
                    Some("Succeeded" | "Failed")
                );
                let grace = opts
                    .grace_period
                    .unwrap_or_else(|| {
                        old.pointer("/spec/terminationGracePeriodSeconds")
                            .and_then(Value::as_i64)
                            .unwrap_or(30)
                    })
                    .max(0);
                let current =
                    old.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64);
                let graceful = bound && !finished && grace > 0;
                if graceful && current.is_none_or(|c| grace < c) {
                    let mut n = old.clone();
                    let m = meta_mut(&mut n)?;
                    m.insert(
                        "deletionTimestamp".to_owned(),
                        Value::from(meta::format_rfc3339(ctx.now + grace)),
                    );
                    m.insert("deletionGracePeriodSeconds".to_owned(), json!(grace));
                    pending = Some(n);
                } else if graceful {
                    return Ok(Deleted::Pending(old));
                } else if has_finalizers {
                    let mut n = old.clone();
                    let m = meta_mut(&mut n)?;
                    if !already {
                        m.insert(
                            "deletionTimestamp".to_owned(),
                            Value::from(meta::format_rfc3339(ctx.now)),
                        );
                    }
                    m.insert("deletionGracePeriodSeconds".to_owned(), json!(0));
                    pending = Some(n);
                }
            } else if has_finalizers {
                if already {
                    return Ok(Deleted::Pending(old));
                }
                let mut n = old.clone();
                let m = meta_mut(&mut n)?;
                m.insert(
                    "deletionTimestamp".to_owned(),
                    Value::from(meta::format_rfc3339(ctx.now)),
                );
                m.insert("deletionGracePeriodSeconds".to_owned(), json!(0));
                pending = Some(n);
            }
            if let Some(mut n) = pending {
                if ctx.dry_run {
                    return Ok(Deleted::Pending(n));
                }
                let (ok, rev) = self
                    .store
                    .txn(
                        &[Cmp::ModRevision(key.clone(), old_rev)],
                        &[Op::Put(key.clone(), strip_for_storage(&mut n)?)],
                    )
                    .await?;
                if ok {
                    set_rv(&mut n, rev);
                    return Ok(Deleted::Pending(n));
                }
                continue;
            }
            if ctx.dry_run {
                return Ok(Deleted::Gone(old));
            }
            let mut delete_ops = vec![Op::Delete(key.clone())];
            if res.kind == "Service" && res.group.is_empty() {
                delete_ops.extend(Self::release_ops(&old));
            }
            let (ok, rev) =
                self.store.txn(&[Cmp::ModRevision(key.clone(), old_rev)], &delete_ops).await?;
            if ok {
                let mut last = old;
                set_rv(&mut last, rev);
                return Ok(Deleted::Gone(last));
            }
        }
        Err(ApiError::modified(res, name))
    }

    /// DELETE on a collection: every matching object, one by one.
    pub async fn delete_collection(
        &self,
        res: &Resource,
        ns: Option<&str>,
        opts: &ListOpts,
        dopts: &DeleteOpts,
        ctx: &WriteCtx,
    ) -> Result<Vec<Value>, ApiError> {
        let page = self
            .list(res, ns, &ListOpts { limit: None, continue_token: None, ..opts.clone() })
            .await?;
        let mut out = Vec::new();
        for item in page.items {
            let (ins, name) = (meta::namespace(&item).to_owned(), meta::name(&item).to_owned());
            match self.delete(res, &ins, &name, dopts, ctx).await {
                Ok(Deleted::Gone(v) | Deleted::Pending(v)) => out.push(v),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The autoscaling/v1 Scale of a workload.
    pub fn scale_of(res: &Resource, obj: &Value) -> Value {
        let selector = obj
            .pointer("/spec/selector")
            .map(skiff_api::selector::label_selector_string)
            .unwrap_or_default();
        let m = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
        json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {"name": m.get("name"), "namespace": m.get("namespace"), "uid": m.get("uid"), "resourceVersion": m.get("resourceVersion"), "creationTimestamp": m.get("creationTimestamp")},
            "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(i64::from(res.kind == "Deployment"))},
            "status": {"replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0), "selector": selector},
        })
    }

    /// PUT/PATCH of `/scale`: `f` maps the current Scale to the desired one.
    pub async fn update_scale<F>(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        ctx: &WriteCtx,
        mut f: F,
    ) -> Result<Value, ApiError>
    where
        F: FnMut(&Value) -> Result<Value, ApiError>,
    {
        let mut precondition_failed = false;
        let out = self
            .guaranteed_update(
                res,
                ns,
                name,
                ctx,
                None,
                |old| {
                    let scale = f(&Self::scale_of(res, old))?;
                    if let Some(rv) = scale
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .filter(|r| !r.is_empty())
                        && Some(rv) != meta_str(old, "resourceVersion")
                    {
                        precondition_failed = true;
                        return Err(ApiError::modified(res, name));
                    }
                    let replicas = scale
                        .pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .ok_or_else(|| ApiError::bad_request("spec.replicas is required"))?;
                    if replicas < 0 {
                        return Err(ApiError::invalid(
                            res,
                            name,
                            &[validate::Cause {
                                reason: "FieldValueInvalid",
                                message: format!(
                                    "Invalid value: {replicas}: must be greater than or equal to 0"
                                ),
                                field: "spec.replicas".to_owned(),
                            }],
                        ));
                    }
                    let mut new = old.clone();
                    new["spec"]["replicas"] = json!(replicas);
                    Ok(new)
                },
                true,
            )
            .await;
        let _ = precondition_failed;
        out.map(|o| Self::scale_of(res, &o))
    }

    /// `pods/binding`: sets `spec.nodeName` once.
    pub async fn bind(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        binding: &Value,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::bad_request("binding target name is required"))?
            .to_owned();
        let key = res.key(ns, name);
        for _ in 0..16 {
            let (old, old_rev) = self.get_stored(res, ns, name).await?;
            if old.pointer("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null()) {
                return Err(ApiError::conflict(
                    res,
                    name,
                    "pod is being deleted, cannot be assigned to a host",
                ));
            }
            if let Some(cur) =
                old.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty())
            {
                return Err(ApiError::conflict(
                    res,
                    name,
                    &format!("pod {name} is already assigned to node \"{cur}\""),
                ));
            }
            if let Some(uid) =
                binding.pointer("/metadata/uid").and_then(Value::as_str).filter(|u| !u.is_empty())
                && meta_str(&old, "uid") != Some(uid)
            {
                return Err(ApiError::conflict(res, name, "Precondition failed: UID mismatch"));
            }
            let mut new = old.clone();
            new["spec"]["nodeName"] = Value::from(node.clone());
            let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": meta::format_rfc3339(ctx.now)});
            let conds = new.pointer_mut("/status/conditions").and_then(Value::as_array_mut);
            match conds {
                Some(c) => {
                    c.retain(|x| x.get("type").and_then(Value::as_str) != Some("PodScheduled"));
                    c.push(cond);
                }
                None => new["status"]["conditions"] = json!([cond]),
            }
            if ctx.dry_run {
                return Ok(status::success(res, name, None, Some(201)));
            }
            let (ok, _) = self
                .store
                .txn(
                    &[Cmp::ModRevision(key.clone(), old_rev)],
                    &[Op::Put(key.clone(), strip_for_storage(&mut new)?)],
                )
                .await?;
            if ok {
                return Ok(status::success(res, name, None, Some(201)));
            }
        }
        Err(ApiError::modified(res, name))
    }

    /// Creates an object unless it exists (bootstrap objects).
    pub async fn ensure(
        &self,
        res: &Resource,
        ns: &str,
        obj: Value,
        now: i64,
    ) -> Result<(), ApiError> {
        let ctx = WriteCtx {
            user: "system:apiserver".to_owned(),
            manager: "skiff-apiserver".to_owned(),
            now,
            ..Default::default()
        };
        match self.create(res, ns, obj, &ctx).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads a raw stored value (tests, tools).
    pub async fn raw(&self, key: &str) -> Result<Option<Stored>, ApiError> {
        Ok(self.store.get(key).await?.0)
    }

    /// A random jitter helper for background loops.
    pub fn jitter(ms: u64) -> Duration {
        Duration::from_millis(rand::rng().random_range(0..=ms))
    }
}
