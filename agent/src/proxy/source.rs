//! Where the proxy's Services and EndpointSlices come from when it runs standalone: a JSON file
//! or stdin holding a `v1` `List`, a JSON array, or a stream of objects (the API server becomes
//! another source later).
//!
//! Objects of other kinds are skipped; malformed input is an error that names the item.

use std::io::Read;
use std::path::Path;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;

use super::tracker::ServiceTracker;

/// Why objects could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("parsing JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("item {index} ({kind}): {source}")]
    Item { index: usize, kind: String, source: serde_json::Error },
}

/// An object the proxy understands.
#[derive(Debug, Clone)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
}

/// Parses a List, an array or a stream of objects.
pub fn parse_objects(text: &str) -> Result<Vec<Object>, SourceError> {
    let mut items = Vec::new();
    for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        match value? {
            Value::Array(a) => items.extend(a),
            Value::Object(o)
                if o.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List")) =>
            {
                if let Some(Value::Array(a)) = o.get("items") {
                    items.extend(a.iter().cloned());
                }
            }
            other => items.push(other),
        }
    }
    let mut out = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let kind = item.get("kind").and_then(Value::as_str).unwrap_or("").to_owned();
        let wrap = |source| SourceError::Item { index, kind: kind.clone(), source };
        match kind.as_str() {
            "Service" => {
                out.push(Object::Service(Box::new(serde_json::from_value(item).map_err(wrap)?)));
            }
            "EndpointSlice" => {
                out.push(Object::EndpointSlice(Box::new(
                    serde_json::from_value(item).map_err(wrap)?,
                )));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Reads `path` (`-` = stdin) into a fresh tracker for `node`.
pub fn load(path: &Path, node: &str) -> Result<ServiceTracker, SourceError> {
    let mut tracker = ServiceTracker::new(node);
    for obj in read(path)? {
        match obj {
            Object::Service(s) => tracker.upsert_service(*s),
            Object::EndpointSlice(s) => tracker.upsert_slice(*s),
        }
    }
    Ok(tracker)
}

/// Reads the objects in `path` (`-` = stdin).
pub fn read(path: &Path) -> Result<Vec<Object>, SourceError> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|source| SourceError::Io { what: "stdin".into(), source })?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|source| SourceError::Io { what: path.display().to_string(), source })?
    };
    parse_objects(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(parse_objects("{").is_err());
        let e = parse_objects(r#"[{"kind":"Service","spec":{"ports":"nope"}}]"#).unwrap_err();
        assert!(e.to_string().starts_with("item 0 (Service)"), "{e}");
        assert!(parse_objects(r#"{"kind":"ConfigMap"}"#).unwrap().is_empty());
    }
}
