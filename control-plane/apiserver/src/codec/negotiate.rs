//! `Accept` negotiation: JSON, YAML, or a JSON transform (Table, `PartialObjectMetadata`, aggregated
//! discovery) chosen by media-type parameters. Protobuf is answered with JSON (client-go decodes
//! by the response `Content-Type`).

/// What the response body should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    Json,
    Yaml,
    /// `application/json;as=Table;v=v1;g=meta.k8s.io` (also `v1beta1`).
    Table,
    /// `application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io`.
    PartialObjectMetadata,
    /// `application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io`.
    PartialObjectMetadataList,
    /// `application/json;as=APIGroupDiscoveryList;v=v2;g=apidiscovery.k8s.io`.
    AggregatedDiscovery,
}

impl ResponseFormat {
    /// The `Content-Type` to answer with.
    pub fn content_type(self) -> &'static str {
        match self {
            ResponseFormat::Json => "application/json",
            ResponseFormat::Yaml => "application/yaml",
            ResponseFormat::Table => "application/json;as=Table;v=v1;g=meta.k8s.io",
            ResponseFormat::PartialObjectMetadata => {
                "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io"
            }
            ResponseFormat::PartialObjectMetadataList => {
                "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
            }
            ResponseFormat::AggregatedDiscovery => {
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
            }
        }
    }
}

/// No media range in `Accept` can be served: 406 `NotAcceptable`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf (answered as JSON)"
)]
pub struct NotAcceptable {
    /// The `Accept` header as received.
    pub accept: String,
}

impl NotAcceptable {
    pub fn code(&self) -> u16 {
        406
    }
    pub fn reason(&self) -> &'static str {
        "NotAcceptable"
    }
}

/// One media range: type, parameters, quality.
struct Range<'a> {
    media: String,
    params: Vec<(String, &'a str)>,
    q: f32,
}

impl Range<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim_matches('"'))
    }
}

fn parse_ranges(accept: &str) -> Vec<Range<'_>> {
    let mut ranges: Vec<Range<'_>> = accept
        .split(',')
        .filter_map(|part| {
            let mut pieces = part.split(';');
            let media = pieces.next()?.trim().to_ascii_lowercase();
            if media.is_empty() {
                return None;
            }
            let mut params = Vec::new();
            let mut q = 1.0f32;
            for p in pieces {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                let k = k.trim().to_ascii_lowercase();
                if k == "q" {
                    q = v.trim().parse().unwrap_or(0.0);
                } else {
                    params.push((k, v.trim()));
                }
            }
            Some(Range { media, params, q })
        })
        .filter(|r| r.q > 0.0)
        .collect();
    // Stable: equal qualities keep the client's order, which is how kubectl states preference.
    ranges.sort_by(|a, b| b.q.total_cmp(&a.q));
    ranges
}

/// Picks the response format for an `Accept` header. An empty header means JSON. Ranges whose
/// transform Skiff does not serve are skipped; if only protobuf ranges remain the answer is JSON.
pub fn negotiate_response(accept: &str) -> Result<ResponseFormat, NotAcceptable> {
    if accept.trim().is_empty() {
        return Ok(ResponseFormat::Json);
    }
    let mut saw_protobuf = false;
    for range in parse_ranges(accept) {
        let format = match range.media.as_str() {
            "application/json" => json_transform(&range),
            "application/yaml" if range.param("as").is_none() => Some(ResponseFormat::Yaml),
            "*/*" | "application/*" => Some(ResponseFormat::Json),
            "application/vnd.kubernetes.protobuf"
            | "application/vnd.kubernetes.protobuf;stream=watch" => {
                saw_protobuf = true;
                None
            }
            _ => None,
        };
        if let Some(format) = format {
            return Ok(format);
        }
    }
    if saw_protobuf {
        return Ok(ResponseFormat::Json);
    }
    Err(NotAcceptable { accept: accept.to_owned() })
}

fn json_transform(range: &Range<'_>) -> Option<ResponseFormat> {
    let Some(as_kind) = range.param("as") else {
        return Some(ResponseFormat::Json);
    };
    let group = range.param("g").unwrap_or("");
    let version = range.param("v").unwrap_or("");
    match (as_kind, group, version) {
        ("Table", "meta.k8s.io", "v1" | "v1beta1") => Some(ResponseFormat::Table),
        ("PartialObjectMetadata", "meta.k8s.io", "v1" | "v1beta1") => {
            Some(ResponseFormat::PartialObjectMetadata)
        }
        ("PartialObjectMetadataList", "meta.k8s.io", "v1" | "v1beta1") => {
            Some(ResponseFormat::PartialObjectMetadataList)
        }
        ("APIGroupDiscoveryList", "apidiscovery.k8s.io", "v2") => {
            Some(ResponseFormat::AggregatedDiscovery)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(accept: &str, expected: Result<ResponseFormat, ()>) {
        assert_eq!(negotiate_response(accept).map_err(|_| ()), expected, "Accept: {accept}");
    }

    #[test]
    fn kubectl_and_client_accept_headers() {
        use ResponseFormat::*;
        check("", Ok(Json));
        check("application/json, */*", Ok(Json));
        check(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
            Ok(Table),
        );
        check(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json",
            Ok(AggregatedDiscovery),
        );
        check(
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json",
            Ok(Json),
        );
        check("application/vnd.kubernetes.protobuf,application/json", Ok(Json));
        check("application/vnd.kubernetes.protobuf", Ok(Json));
        check("application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io", Ok(Json));
        check("application/yaml", Ok(Yaml));
        check("application/json;q=0.5, application/yaml", Ok(Yaml));
        check(
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
            Ok(PartialObjectMetadataList),
        );
        check("text/html", Err(()));
        check("application/json;as=Foo;g=x;v=v1", Err(()));
        check("application/json;q=0", Err(()));
    }

    #[test]
    fn not_acceptable_maps_to_406() {
        let err = negotiate_response("text/html").unwrap_err();
        assert_eq!((err.code(), err.reason()), (406, "NotAcceptable"));
    }
}
