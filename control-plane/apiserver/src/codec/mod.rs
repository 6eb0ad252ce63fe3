//! Request-body decoding and response-format negotiation; pure functions, no IO.
//!
//! - [`decode_body`]`(content_type, body)` turns a create/update body into Kubernetes JSON:
//!   `application/json`, `application/yaml` and `application/vnd.kubernetes.protobuf` (the
//!   `k8s\0` magic, a `runtime.Unknown` envelope, then the typed message, decoded through the
//!   field table in `k8s-protobuf-schema.txt`; see `docs/api-codec.md` for the kinds covered).
//!   The result is always a JSON object; a protobuf body yields `apiVersion` and `kind` from its
//!   envelope, which the caller checks against the endpoint exactly as for JSON bodies. Patch
//!   bodies are not decoded here: see [`crate::patch`].
//! - [`negotiate_response`]`(accept)` picks the response format from an `Accept` header.
//!
//! Errors carry the Kubernetes status they map to ([`DecodeError::code`], [`DecodeError::reason`]).

mod negotiate;
pub mod protobuf;
pub(crate) mod schema;

use serde_json::Value;

pub use negotiate::{NotAcceptable, ResponseFormat, negotiate_response};

/// The media types [`decode_body`] accepts.
pub const SUPPORTED_BODY_TYPES: &[&str] =
    &["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"];

/// Why a request body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body is malformed for its media type (400 `BadRequest`).
    #[error("{0}")]
    BadRequest(String),
    /// The media type, or a protobuf kind or encoding, is not supported (415
    /// `UnsupportedMediaType`).
    #[error("{0}")]
    UnsupportedMediaType(String),
}

impl DecodeError {
    /// The HTTP status code of the Kubernetes `Status` to answer with.
    pub fn code(&self) -> u16 {
        match self {
            DecodeError::BadRequest(_) => 400,
            DecodeError::UnsupportedMediaType(_) => 415,
        }
    }

    /// The `reason` of the Kubernetes `Status`.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::BadRequest(_) => "BadRequest",
            DecodeError::UnsupportedMediaType(_) => "UnsupportedMediaType",
        }
    }
}

/// The bare media type of a `Content-Type` value: parameters dropped, lower-cased.
pub fn media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Decodes a request body (create, update, delete options, subresource writes) into a JSON
/// object. An empty `content_type` is treated as JSON, as curl users expect.
pub fn decode_body(content_type: &str, body: &[u8]) -> Result<Value, DecodeError> {
    let media = media_type(content_type);
    let value = match media.as_str() {
        "" | "application/json" => decode_json(body)?,
        "application/yaml" => decode_yaml(body)?,
        "application/vnd.kubernetes.protobuf" => protobuf::decode(body)?,
        _ => {
            return Err(DecodeError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                SUPPORTED_BODY_TYPES.join(", ")
            )));
        }
    };
    if !value.is_object() {
        return Err(DecodeError::BadRequest(format!(
            "the request body must be an object, not {}",
            json_type_name(&value)
        )));
    }
    Ok(value)
}

/// Parses JSON; the error names the line and column.
pub fn decode_json(body: &[u8]) -> Result<Value, DecodeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::BadRequest("the request body is empty".into()));
    }
    serde_json::from_slice(body)
        .map_err(|e| DecodeError::BadRequest(format!("invalid JSON in request body: {e}")))
}

/// Parses one YAML document (JSON is valid YAML). Non-string map keys and multiple documents are
/// refused, as upstream does.
pub fn decode_yaml(body: &[u8]) -> Result<Value, DecodeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::BadRequest("the request body is empty".into()));
    }
    // JSON first: every client sends JSON even for YAML media types, and it is exact for numbers.
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    serde_yaml::from_slice::<Value>(body)
        .map_err(|e| DecodeError::BadRequest(format!("invalid YAML in request body: {e}")))
}

pub(crate) fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_and_yaml_bodies() {
        let v = decode_body("application/json; charset=utf-8", br#"{"a":1}"#).unwrap();
        assert_eq!(v, json!({"a": 1}));
        let v = decode_body("application/yaml", b"kind: Pod\nspec:\n  x: [1, 2]\n").unwrap();
        assert_eq!(v, json!({"kind": "Pod", "spec": {"x": [1, 2]}}));
        let v = decode_body("", br#"{"b":true}"#).unwrap();
        assert_eq!(v, json!({"b": true}));
    }

    #[test]
    fn bad_bodies_are_400_and_unknown_types_415() {
        let check = |ct: &str, body: &[u8], code: u16, needle: &str| {
            let err = decode_body(ct, body).unwrap_err();
            assert_eq!(err.code(), code, "{err}");
            assert!(err.to_string().contains(needle), "{err}");
        };
        check("application/json", b"{", 400, "invalid JSON");
        check("application/json", b"", 400, "empty");
        check("application/json", b"[1]", 400, "must be an object");
        check("application/yaml", b"a: [", 400, "invalid YAML");
        check("application/yaml", b"a: 1\n---\nb: 2\n", 400, "invalid YAML");
        check("text/plain", b"{}", 415, "unknown format");
        check("application/vnd.kubernetes.protobuf", b"{}", 400, "magic");
        assert_eq!(decode_body("text/plain", b"").unwrap_err().reason(), "UnsupportedMediaType");
    }

    #[test]
    fn hostile_yaml_and_json_are_refused_not_expanded() {
        // Billion laughs: nine levels of nine aliases.
        let mut yaml = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        let mut previous = "a";
        for name in ["b", "c", "d", "e", "f", "g", "h", "i"] {
            let refs = vec![format!("*{previous}"); 9].join(", ");
            yaml += &[name, ": &", name, " [", &refs, "]\n"].concat();
            previous = name;
        }
        let err = decode_body("application/yaml", yaml.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("repetition limit"), "{err}");
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        for media in ["application/json", "application/yaml"] {
            let err = decode_body(media, deep.as_bytes()).unwrap_err();
            assert_eq!(err.code(), 400, "{media}: {err}");
        }
    }

    proptest::proptest! {
        /// Any bytes under any supported media type decode or fail with 400/415; never panic.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            media in 0usize..3,
        ) {
            let media = SUPPORTED_BODY_TYPES[media];
            if let Err(e) = decode_body(media, &bytes) {
                proptest::prop_assert!(e.code() == 400 || e.code() == 415);
            }
            let mut envelope = b"k8s\0".to_vec();
            envelope.extend_from_slice(&bytes);
            if let Err(e) = decode_body("application/vnd.kubernetes.protobuf", &envelope) {
                proptest::prop_assert!(e.code() == 400 || e.code() == 415);
            }
        }
    }
}
