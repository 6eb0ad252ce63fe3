//! The HTTP layer: routing of Kubernetes paths onto the generic registry, authentication,
//! limits (413, 429), content negotiation (JSON, YAML, Table, `PartialObjectMetadata`), audit
//! and metrics. Every failure is answered with a `Status`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use serde_json::{Value, json};
use skiff_api::selector::{FieldSelector, LabelSelector};
use skiff_api::{Resource, Subresource, meta, resource, table};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditEntry, AuditLog};
use crate::auth::{self, Tokens, User};
use crate::cache::CachedObject;
use crate::codec::{self, ResponseFormat};
use crate::metrics::{LatencyLabels, Metrics, RequestLabels};
use crate::patch::PatchType;
use crate::registry::{DeleteOpts, Deleted, ListOpts, Registry, WriteCtx};
use crate::status::{self, ApiError};
use crate::{discovery, openapi, patch_bridge, watch};

pub type Body = BoxBody<Bytes, std::io::Error>;

/// Request bodies above this are refused with 413 (upstream's limit).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Server-wide limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Concurrent non-watch requests before 429.
    pub max_inflight: usize,
    /// Open watches per user before 429.
    pub max_watches_per_user: usize,
    /// Events kept per resource for watches resuming from an older resourceVersion; older
    /// versions get an in-stream 410.
    pub watch_history: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_inflight: 800, max_watches_per_user: 4096, watch_history: crate::cache::HISTORY }
    }
}

/// Shared state of one API server.
pub struct Server {
    pub registry: Registry,
    pub tokens: Tokens,
    pub audit: Option<AuditLog>,
    pub metrics: Metrics,
    pub inflight: Semaphore,
    pub watches: Mutex<HashMap<String, usize>>,
    pub limits: Limits,
    pub server_address: String,
    pub shutdown: CancellationToken,
    pub ready: std::sync::atomic::AtomicBool,
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn json_response(code: u16, v: &Value, content_type: &str) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/json")),
    );
    r
}

fn formatted(code: u16, v: &Value, fmt: ResponseFormat) -> Response<Body> {
    if fmt == ResponseFormat::Yaml {
        let text = serde_yaml::to_string(v).unwrap_or_default();
        let mut r = Response::new(full(text));
        *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
        return r;
    }
    let ct = match fmt {
        ResponseFormat::Table
        | ResponseFormat::PartialObjectMetadata
        | ResponseFormat::PartialObjectMetadataList
        | ResponseFormat::AggregatedDiscovery => fmt.content_type(),
        _ => "application/json",
    };
    json_response(code, v, ct)
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.code, &e.to_status(), "application/json");
    if let Some(s) = e.retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

/// Parsed query parameters (last value wins; repeated keys are not needed here).
#[derive(Default, Debug)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(q: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

/// Where a resource request points.
#[derive(Debug)]
pub struct Target {
    pub res: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

/// Maps `/api/v1/...` and `/apis/<g>/<v>/...` onto the resource table.
pub fn route(path: &str) -> Option<Result<Target, ApiError>> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", "v1", rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return None,
    };
    let find = |plural: &str| resource::find(group, version, plural);
    let t = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if find(plural).is_some_and(|r| r.namespaced) && tail.len() <= 2 =>
        {
            Target {
                res: find(plural)?,
                namespace: Some((*ns).to_owned()),
                name: tail.first().map(|s| (*s).to_owned()),
                sub: tail.get(1).map(|s| (*s).to_owned()),
            }
        }
        [plural, tail @ ..] if find(plural).is_some() && tail.len() <= 2 => Target {
            res: find(plural)?,
            namespace: None,
            name: tail.first().map(|s| (*s).to_owned()),
            sub: tail.get(1).map(|s| (*s).to_owned()),
        },
        _ => return Some(Err(ApiError::not_found_path())),
    };
    Some(Ok(t))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({}))})
}

/// A Table of `objs`.
pub fn to_table(
    res: &Resource,
    objs: &[&Value],
    list_meta: &Value,
    include: &str,
    with_columns: bool,
) -> Value {
    let now = now();
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let mut row = json!({"cells": table::cells(res.group, res.kind, o, now)});
            match include {
                "None" => {}
                "Object" => row["object"] = (*o).clone(),
                _ => row["object"] = partial_metadata(o),
            }
            row
        })
        .collect();
    let cols =
        if with_columns { table::column_definitions(res.group, res.kind) } else { json!([]) };
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": cols, "rows": rows})
}

/// An object rendered in the negotiated form.
pub fn render_object(res: &Resource, obj: &Value, fmt: ResponseFormat, include: &str) -> Value {
    match fmt {
        ResponseFormat::Table => to_table(
            res,
            &[obj],
            &json!({"resourceVersion": obj.pointer("/metadata/resourceVersion")}),
            include,
            true,
        ),
        ResponseFormat::PartialObjectMetadata | ResponseFormat::PartialObjectMetadataList => {
            partial_metadata(obj)
        }
        _ => obj.clone(),
    }
}

/// An object response in the negotiated form; JSON and YAML encode `obj` itself (no copy).
fn object_response(
    code: u16,
    res: &Resource,
    obj: &Value,
    fmt: ResponseFormat,
    include: &str,
) -> Response<Body> {
    match fmt {
        ResponseFormat::Table
        | ResponseFormat::PartialObjectMetadata
        | ResponseFormat::PartialObjectMetadataList => {
            formatted(code, &render_object(res, obj, fmt, include), fmt)
        }
        _ => formatted(code, obj, fmt),
    }
}

fn user_agent_manager(headers: &HeaderMap) -> String {
    let ua = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("unknown");
    ua.split('/').next().unwrap_or("unknown").to_owned()
}

struct Ctx<'a> {
    server: &'a Arc<Server>,
    method: Method,
    query: Query,
    headers: HeaderMap,
    user: User,
    fmt: ResponseFormat,
}

impl Server {
    fn verb_of(method: &Method, t: &Target, query: &Query) -> &'static str {
        match (method.as_str(), t.name.is_some()) {
            ("GET", false) if query.flag("watch") => "watch",
            ("GET", false) => "list",
            ("GET", true) => "get",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            _ => "unknown",
        }
    }

    /// Serves one request.
    #[expect(
        clippy::too_many_lines,
        reason = "one linear request pipeline: auth, limits, routing, audit, metrics"
    )]
    pub async fn handle<B>(
        self: Arc<Self>,
        req: Request<B>,
        client_cert: Option<Arc<Vec<u8>>>,
    ) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let received = meta::format_rfc3339(now());
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let uri = parts.uri.to_string();
        let query = Query::parse(parts.uri.query());
        let method = parts.method.clone();

        // Public endpoints (upstream's system:public-info-viewer).
        if method == Method::GET {
            match path.trim_end_matches('/') {
                "/healthz" | "/livez" => return text(200, "ok"),
                "/readyz" => {
                    return if self.ready.load(std::sync::atomic::Ordering::Relaxed) {
                        text(200, "ok")
                    } else {
                        text(503, "[-]watch-cache not synced\nreadyz check failed")
                    };
                }
                "/version" => return json_response(200, &discovery::version(), "application/json"),
                _ => {}
            }
        }
        let auth_header = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let Some(user) = auth::authenticate(
            &self.tokens,
            client_cert.as_deref().map(Vec::as_slice),
            auth_header,
        ) else {
            return error_response(&ApiError::new(401, "Unauthorized", "Unauthorized"));
        };
        let accept = parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let fmt = match codec::negotiate_response(&accept) {
            Ok(f) => f,
            Err(e) => return error_response(&ApiError::new(e.code(), e.reason(), e.to_string())),
        };
        let target = route(&path);
        let is_watch = method == Method::GET && query.flag("watch");
        let _permit = if is_watch {
            None
        } else if let Ok(p) = self.inflight.try_acquire() {
            Some(p)
        } else {
            {
                let e = ApiError {
                    retry_after: Some(1),
                    ..ApiError::new(
                        429,
                        "TooManyRequests",
                        "Too many requests, please try again later.",
                    )
                };
                return error_response(&e);
            }
        };
        self.metrics.inflight.inc();
        let _inflight = crate::metrics::GaugeGuard(self.metrics.inflight.clone());
        let body_bytes =
            if matches!(method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
                if parts
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.parse::<usize>().ok())
                    .is_some_and(|n| n > MAX_BODY)
                {
                    return error_response(&ApiError::new(
                        413,
                        "RequestEntityTooLarge",
                        "Request entity too large: limit is 3145728",
                    ));
                }
                match Limited::new(body, MAX_BODY).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                            return error_response(&ApiError::new(
                                413,
                                "RequestEntityTooLarge",
                                "Request entity too large: limit is 3145728",
                            ));
                        }
                        return error_response(&ApiError::bad_request(format!(
                            "reading request body: {e}"
                        )));
                    }
                }
            } else {
                Bytes::new()
            };
        let ctx =
            Ctx { server: &self, method: method.clone(), query, headers: parts.headers, user, fmt };
        let (verb, labels, response) = match target {
            None => ("get", ("", "", String::new()), self.non_resource(&ctx, &path)),
            Some(Err(e)) => ("get", ("", "", String::new()), Err(e)),
            Some(Ok(t)) => {
                let verb = Self::verb_of(&method, &t, &ctx.query);
                let res = t.res;
                let ns = t.namespace.clone().unwrap_or_default();
                let name = t.name.clone().unwrap_or_default();
                let sub = t.sub.clone().unwrap_or_default();
                let r = self.resource(&ctx, t, verb, &body_bytes).await;
                if verb != "get"
                    && verb != "list"
                    && verb != "watch"
                    && let Some(audit) = &self.audit
                {
                    let code = r.as_ref().map_or_else(|e| e.code, |resp| resp.status().as_u16());
                    audit.record(&AuditEntry {
                        verb,
                        uri: &uri,
                        user: &ctx.user.name,
                        groups: &ctx.user.groups,
                        group: res.group,
                        version: res.version,
                        resource: res.plural,
                        subresource: &sub,
                        namespace: &ns,
                        name: &name,
                        code,
                        received: &received,
                        completed: &meta::format_rfc3339(now()),
                        user_agent: ctx
                            .headers
                            .get(header::USER_AGENT)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or(""),
                    });
                }
                (verb, (res.plural, "", sub), r)
            }
        };
        let resp = response.unwrap_or_else(|e| error_response(&e));
        let resource_label = if labels.2.is_empty() {
            labels.0.to_owned()
        } else {
            format!("{}/{}", labels.0, labels.2)
        };
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                verb: verb.to_owned(),
                resource: resource_label.clone(),
                code: resp.status().as_u16().to_string(),
            })
            .inc();
        if verb != "watch" {
            self.metrics
                .latency
                .get_or_create(&LatencyLabels { verb: verb.to_owned(), resource: resource_label })
                .observe(started.elapsed().as_secs_f64());
        }
        resp
    }

    fn non_resource(&self, ctx: &Ctx<'_>, path: &str) -> Result<Response<Body>, ApiError> {
        if ctx.method != Method::GET {
            return Err(ApiError::method_not_allowed());
        }
        let agg = ctx.fmt == ResponseFormat::AggregatedDiscovery;
        let trimmed = path.trim_end_matches('/');
        let body = match trimmed {
            "/api" if agg => {
                return Ok(formatted(
                    200,
                    &discovery::aggregated(true),
                    ResponseFormat::AggregatedDiscovery,
                ));
            }
            "/apis" if agg => {
                return Ok(formatted(
                    200,
                    &discovery::aggregated(false),
                    ResponseFormat::AggregatedDiscovery,
                ));
            }
            "/api" => discovery::api_versions(&self.server_address),
            "/apis" => discovery::api_group_list(),
            "/api/v1" => discovery::resource_list("", "v1").ok_or_else(ApiError::not_found_path)?,
            "/metrics" => return Ok(text(200, &self.metrics.render())),
            "/openapi/v3" => openapi::root(),
            _ => {
                if let Some(gv) = trimmed.strip_prefix("/openapi/v3/") {
                    openapi::document(gv).ok_or_else(ApiError::not_found_path)?
                } else if let Some(rest) = trimmed.strip_prefix("/apis/") {
                    match rest.split('/').collect::<Vec<_>>().as_slice() {
                        [g] => discovery::group(g).ok_or_else(ApiError::not_found_path)?,
                        [g, v] => {
                            discovery::resource_list(g, v).ok_or_else(ApiError::not_found_path)?
                        }
                        _ => return Err(ApiError::not_found_path()),
                    }
                } else {
                    return Err(ApiError::not_found_path());
                }
            }
        };
        Ok(json_response(200, &body, "application/json"))
    }

    fn write_ctx(ctx: &Ctx<'_>) -> Result<WriteCtx, ApiError> {
        let dry_run = match ctx.query.get("dryRun") {
            None | Some("") => false,
            Some("All") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "Invalid dryRun value {other:?}: supported value is All"
                )));
            }
        };
        Ok(WriteCtx {
            user: ctx.user.name.clone(),
            groups: ctx.user.groups.clone(),
            manager: ctx
                .query
                .get("fieldManager")
                .map_or_else(|| user_agent_manager(&ctx.headers), str::to_owned),
            dry_run,
            now: now(),
            record_managed: true,
        })
    }

    fn list_opts(res: &Resource, q: &Query) -> Result<ListOpts, ApiError> {
        let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields =
            FieldSelector::parse(q.get("fieldSelector").unwrap_or(""), |f| res.allows_field(f))
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let limit = match q.get("limit") {
            None | Some("") => None,
            Some(l) => Some(
                l.parse::<usize>()
                    .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
            ),
        };
        let resource_version =
            match q.get("resourceVersion") {
                None | Some("") => None,
                Some(rv) => Some(rv.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version {rv:?}"))
                })?),
            };
        let exact = q.get("resourceVersionMatch") == Some("Exact");
        let continue_token = q.get("continue").filter(|c| !c.is_empty()).map(str::to_owned);
        Ok(ListOpts { labels, fields, limit, continue_token, resource_version, exact })
    }

    #[expect(clippy::too_many_lines, reason = "one arm per verb keeps the verb table in one place")]
    async fn resource(
        &self,
        ctx: &Ctx<'_>,
        t: Target,
        verb: &str,
        body: &Bytes,
    ) -> Result<Response<Body>, ApiError> {
        let res = t.res;
        if res.namespaced && t.namespace.is_none() && t.name.is_some() {
            return Err(ApiError::not_found_path());
        }
        if !res.namespaced && t.namespace.is_some() {
            return Err(ApiError::not_found_path());
        }
        let sub = match t.sub.as_deref() {
            None => None,
            Some(s) => Some(
                res.subresources
                    .iter()
                    .copied()
                    .find(|x| x.name() == s)
                    .ok_or_else(ApiError::not_found_path)?,
            ),
        };
        let ns = t.namespace.clone().unwrap_or_default();
        let include = ctx.query.get("includeObject").unwrap_or("Metadata").to_owned();
        let reg = &self.registry;
        match verb {
            "list" => {
                let opts = Self::list_opts(res, &ctx.query)?;
                let page = reg.list(res, t.namespace.as_deref(), &opts).await?;
                let mut lm = json!({"resourceVersion": page.rev.to_string()});
                if let Some(c) = &page.continue_token {
                    lm["continue"] = json!(c);
                }
                if let Some(r) = page.remaining {
                    lm["remainingItemCount"] = json!(r);
                }
                let body = match ctx.fmt {
                    ResponseFormat::Table => to_table(
                        res,
                        &page.items.iter().map(|i| i.value()).collect::<Vec<_>>(),
                        &lm,
                        &include,
                        true,
                    ),
                    ResponseFormat::PartialObjectMetadata
                    | ResponseFormat::PartialObjectMetadataList => {
                        json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": lm, "items": page.items.iter().map(|i| partial_metadata(i)).collect::<Vec<_>>()})
                    }
                    ResponseFormat::Yaml => {
                        let items: Vec<&Value> = page.items.iter().map(|i| i.value()).collect();
                        json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": lm, "items": items})
                    }
                    _ => return Ok(list_json(res, &lm, &page.items)),
                };
                Ok(formatted(200, &body, ctx.fmt))
            }
            "watch" => {
                let opts = Self::list_opts(res, &ctx.query)?;
                let user = ctx.user.name.clone();
                {
                    let mut w =
                        self.watches.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let n = w.entry(user.clone()).or_insert(0);
                    if *n >= self.limits.max_watches_per_user {
                        return Err(ApiError {
                            retry_after: Some(1),
                            ..ApiError::new(
                                429,
                                "TooManyRequests",
                                "too many watches for this user",
                            )
                        });
                    }
                    *n += 1;
                }
                let guard = watch::WatchSlot::new(Arc::clone(ctx.server), user);
                watch::serve(
                    ctx.server,
                    res,
                    t.namespace.as_deref(),
                    opts,
                    &ctx.query,
                    ctx.fmt,
                    guard,
                )
            }
            "get" => {
                let name = t.name.clone().unwrap_or_default();
                let obj = reg.get(res, &ns, &name).await?;
                let out = match sub {
                    Some(Subresource::Scale) => Registry::scale_of(res, &obj),
                    Some(Subresource::Binding) => return Err(ApiError::method_not_allowed()),
                    _ => render_object(res, &obj, ctx.fmt, &include),
                };
                Ok(formatted(
                    200,
                    &out,
                    if sub == Some(Subresource::Scale) { ResponseFormat::Json } else { ctx.fmt },
                ))
            }
            "create" => {
                let wctx = Self::write_ctx(ctx)?;
                let ct = ctx
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let obj = codec::decode_body(ct, body)?;
                if let Some(name) = &t.name {
                    return match sub {
                        Some(Subresource::Binding) => {
                            let s = reg.bind(res, &ns, name, &obj, &wctx).await?;
                            Ok(json_response(201, &s, "application/json"))
                        }
                        _ => Err(ApiError::method_not_allowed()),
                    };
                }
                if res.namespaced && t.namespace.is_none() {
                    return Err(ApiError::not_found_path());
                }
                check_type(res, &obj)?;
                let (created, json) = reg.create_encoded(res, &ns, obj, &wctx).await?;
                if let (ResponseFormat::Json, Some(json)) = (ctx.fmt, json) {
                    let mut r = Response::new(full(json));
                    *r.status_mut() = StatusCode::CREATED;
                    r.headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    return Ok(r);
                }
                Ok(object_response(201, res, &created, ctx.fmt, &include))
            }
            "update" => {
                let wctx = Self::write_ctx(ctx)?;
                let name = t.name.clone().unwrap_or_default();
                let ct = ctx
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let obj = codec::decode_body(ct, body)?;
                if sub == Some(Subresource::Scale) {
                    let out = reg.update_scale(res, &ns, &name, &wctx, |_| Ok(obj.clone())).await?;
                    return Ok(json_response(200, &out, "application/json"));
                }
                check_type(res, &obj)?;
                let updated = reg
                    .guaranteed_update(
                        res,
                        &ns,
                        &name,
                        &wctx,
                        sub,
                        |_old| Ok(obj.clone()),
                        obj.pointer("/metadata/resourceVersion")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty),
                    )
                    .await?;
                Ok(object_response(200, res, &updated, ctx.fmt, &include))
            }
            "patch" => {
                let mut wctx = Self::write_ctx(ctx)?;
                let name = t.name.clone().unwrap_or_default();
                let ct = ctx
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let force = ctx.query.flag("force");
                let kind = patch_bridge::patch_type(&ct)?;
                let sub_name = sub.map(Subresource::name);
                wctx.record_managed = kind != PatchType::Apply;
                if kind == PatchType::Apply
                    && ctx.query.get("fieldManager").is_none_or(str::is_empty)
                {
                    return Err(ApiError::bad_request(
                        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                    ));
                }
                if sub == Some(Subresource::Scale) {
                    let out = reg
                        .update_scale(res, &ns, &name, &wctx, |scale| {
                            patch_bridge::apply_patch(
                                res,
                                kind,
                                Some(scale),
                                body,
                                &wctx,
                                force,
                                None,
                            )
                        })
                        .await?;
                    return Ok(json_response(200, &out, "application/json"));
                }
                let result = reg
                    .guaranteed_update(
                        res,
                        &ns,
                        &name,
                        &wctx,
                        sub,
                        |old| {
                            patch_bridge::apply_patch(
                                res,
                                kind,
                                Some(old),
                                body,
                                &wctx,
                                force,
                                sub_name,
                            )
                        },
                        true,
                    )
                    .await;
                let (code, obj) = match result {
                    Ok(o) => (200, o),
                    Err(e) if e.code == 404 && kind == PatchType::Apply && sub.is_none() => {
                        let applied =
                            patch_bridge::apply_patch(res, kind, None, body, &wctx, force, None)?;
                        (201, reg.create(res, &ns, applied, &wctx).await?)
                    }
                    Err(e) => return Err(e),
                };
                Ok(object_response(code, res, &obj, ctx.fmt, &include))
            }
            "delete" => {
                let wctx = Self::write_ctx(ctx)?;
                let name = t.name.clone().unwrap_or_default();
                let opts = if body.is_empty() {
                    Value::Null
                } else {
                    codec::decode_body(
                        ctx.headers
                            .get(header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or(""),
                        body,
                    )?
                };
                let mut dopts = DeleteOpts::from_value(&opts);
                if let Some(g) = ctx.query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()) {
                    dopts.grace_period = Some(g);
                }
                match reg.delete(res, &ns, &name, &dopts, &wctx).await? {
                    Deleted::Pending(obj) => Ok(object_response(200, res, &obj, ctx.fmt, &include)),
                    Deleted::Gone(obj) if res.kind == "Pod" => {
                        Ok(object_response(200, res, &obj, ctx.fmt, &include))
                    }
                    Deleted::Gone(obj) => Ok(json_response(
                        200,
                        &status::success(
                            res,
                            &name,
                            obj.pointer("/metadata/uid").and_then(Value::as_str),
                            None,
                        ),
                        "application/json",
                    )),
                }
            }
            "deletecollection" => {
                let wctx = Self::write_ctx(ctx)?;
                let opts = Self::list_opts(res, &ctx.query)?;
                let dopts = if body.is_empty() {
                    DeleteOpts::default()
                } else {
                    DeleteOpts::from_value(&codec::decode_body(
                        ctx.headers
                            .get(header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or(""),
                        body,
                    )?)
                };
                let items = reg
                    .delete_collection(res, t.namespace.as_deref(), &opts, &dopts, &wctx)
                    .await?;
                let rev = reg.cache.revision();
                Ok(formatted(
                    200,
                    &json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": {"resourceVersion": rev.to_string()}, "items": items}),
                    ResponseFormat::Json,
                ))
            }
            _ => Err(ApiError::method_not_allowed()),
        }
    }
}

/// A body's `apiVersion`/`kind` (or a protobuf envelope's), when present, must name the
/// endpoint's resource: 400 otherwise, as upstream.
fn check_type(res: &Resource, obj: &Value) -> Result<(), ApiError> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if !api_version.is_empty() && api_version != res.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            res.api_version()
        )));
    }
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if !kind.is_empty() && kind != res.kind {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            res.kind
        )));
    }
    Ok(())
}

/// A JSON list written by concatenating the cached objects' encodings: each object is
/// encoded once (by the first list or watch event that needs it), not once per list.
fn list_json(res: &Resource, list_meta: &Value, items: &[Arc<CachedObject>]) -> Response<Body> {
    let encoded: Vec<&Bytes> = items.iter().map(|i| i.json()).collect();
    let mut out = Vec::with_capacity(encoded.iter().map(|b| b.len() + 1).sum::<usize>() + 256);
    let head = json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": list_meta}).to_string();
    out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in encoded.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.extend_from_slice(b"]}");
    let mut r = Response::new(full(out));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn text(code: u16, body: &str) -> Response<Body> {
    let mut r = Response::new(full(body.to_owned()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let t = route("/apis/apps/v1/namespaces/default/deployments/web/scale")
            .expect("routed")
            .expect("ok");
        assert_eq!(
            (t.res.plural, t.namespace.as_deref(), t.name.as_deref(), t.sub.as_deref()),
            ("deployments", Some("default"), Some("web"), Some("scale"))
        );
        let t = route("/api/v1/namespaces/demo").expect("routed").expect("ok");
        assert_eq!(
            (t.res.plural, t.namespace, t.name.as_deref()),
            ("namespaces", None, Some("demo"))
        );
        let t = route("/api/v1/namespaces/demo/status").expect("routed").expect("ok");
        assert_eq!(
            (t.res.plural, t.name.as_deref(), t.sub.as_deref()),
            ("namespaces", Some("demo"), Some("status"))
        );
        let t = route("/api/v1/pods").expect("routed").expect("ok");
        assert_eq!((t.res.plural, t.namespace), ("pods", None));
        assert!(route("/api/v1/bogus").expect("routed").is_err());
        assert!(route("/api").is_none());
        assert_eq!(Query::parse(Some("&limit=2&")).get("limit"), Some("2"));
    }
}
