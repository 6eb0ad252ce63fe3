//! A stable-Rust mutation fuzzer for the apiserver's parsers of untrusted input: request bodies
//! (JSON, YAML, the Kubernetes protobuf envelope) and patches (JSON, merge, strategic merge,
//! server-side apply). cargo-fuzz needs nightly; this drives the same targets from a seed corpus
//! with a seeded RNG, catches panics and saves the inputs that caused them.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use skiff_apiserver::{codec, patch};

/// What a target is fed: bytes plus the media type they claim to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub media: Media,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Json,
    Yaml,
    Protobuf,
    JsonPatch,
    MergePatch,
    StrategicMergePatch,
    ApplyPatch,
    /// A full object written by PUT: `update_managed_fields` against the live Deployment (the
    /// body may carry its own managedFields, which clients are allowed to set).
    Update,
}

impl Media {
    pub const DECODE: [Media; 3] = [Media::Json, Media::Yaml, Media::Protobuf];
    pub const PATCH: [Media; 5] = [
        Media::JsonPatch,
        Media::MergePatch,
        Media::StrategicMergePatch,
        Media::ApplyPatch,
        Media::Update,
    ];

    pub fn content_type(self) -> &'static str {
        match self {
            Media::Json | Media::Update => "application/json",
            Media::Yaml => "application/yaml",
            Media::Protobuf => "application/vnd.kubernetes.protobuf",
            Media::JsonPatch => "application/json-patch+json",
            Media::MergePatch => "application/merge-patch+json",
            Media::StrategicMergePatch => "application/strategic-merge-patch+json",
            Media::ApplyPatch => "application/apply-patch+yaml",
        }
    }
}

/// Which parsers a run exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// `codec::decode_body` for JSON, YAML and protobuf bodies.
    Decode,
    /// The patch engines and server-side apply against a live Deployment.
    Patch,
}

/// Result of one input: decoded/applied, or refused with this HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Refused(u16),
}

/// Runs one input through its target. Panics propagate (the driver catches them).
pub fn run_one(input: &Input) -> Outcome {
    match input.media {
        Media::Json | Media::Yaml | Media::Protobuf => {
            match codec::decode_body(input.media.content_type(), &input.bytes) {
                Ok(value) => {
                    assert!(value.is_object(), "decode_body returned a non-object");
                    Outcome::Accepted
                }
                Err(e) => {
                    assert!(matches!(e.code(), 400 | 415), "unexpected code {}", e.code());
                    Outcome::Refused(e.code())
                }
            }
        }
        Media::Update => {
            let live = live_deployment();
            match codec::decode_body("application/json", &input.bytes) {
                Ok(mut new) => {
                    match patch::update_managed_fields(
                        Some(&live),
                        &mut new,
                        "fuzz",
                        patch::Operation::Update,
                        None,
                        "2026-01-01T00:00:00Z",
                    ) {
                        Ok(()) => Outcome::Accepted,
                        Err(e) => Outcome::Refused(e.code()),
                    }
                }
                Err(e) => Outcome::Refused(e.code()),
            }
        }
        Media::ApplyPatch => {
            let live = live_deployment();
            let request = patch::ApplyRequest {
                live: Some(&live),
                body: &input.bytes,
                manager: "fuzz",
                force: input.bytes.len().is_multiple_of(2),
                subresource: None,
                time: "2026-01-01T00:00:00Z",
            };
            match patch::server_side_apply(&request) {
                Ok(_) => Outcome::Accepted,
                Err(e) => Outcome::Refused(e.code()),
            }
        }
        Media::JsonPatch | Media::MergePatch | Media::StrategicMergePatch => {
            let Ok(patch_type) = patch::PatchType::from_content_type(input.media.content_type())
            else {
                unreachable!("every patch media type maps to a patch type")
            };
            match patch::apply_patch(patch_type, &live_deployment(), &input.bytes) {
                Ok(_) => Outcome::Accepted,
                Err(e) => {
                    assert!(matches!(e.code(), 400 | 409 | 413 | 415 | 422), "code {}", e.code());
                    Outcome::Refused(e.code())
                }
            }
        }
    }
}

/// The object patches are applied to: a Deployment with managed fields from two managers.
pub fn live_deployment() -> Value {
    json!({"apiVersion":"apps/v1","kind":"Deployment",
        "metadata":{"name":"web","namespace":"default","labels":{"app":"web"},"finalizers":["a","b"],
            "managedFields":[
                {"manager":"kubectl-client-side-apply","operation":"Update","apiVersion":"apps/v1",
                 "time":"2026-01-01T00:00:00Z","fieldsType":"FieldsV1",
                 "fieldsV1":{"f:spec":{"f:replicas":{},"f:template":{"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{}}}}}}}},
                {"manager":"fuzz","operation":"Apply","apiVersion":"apps/v1",
                 "time":"2026-01-01T00:00:00Z","fieldsType":"FieldsV1",
                 "fieldsV1":{"f:metadata":{"f:labels":{"f:app":{}}}}}]},
        "spec":{"replicas":1,"selector":{"matchLabels":{"app":"web"}},
            "strategy":{"type":"RollingUpdate","rollingUpdate":{"maxSurge":"25%"}},
            "template":{"metadata":{"labels":{"app":"web"}},"spec":{
                "containers":[{"name":"nginx","image":"nginx:1.25","ports":[{"containerPort":80}],
                               "env":[{"name":"A","value":"1"}]},
                              {"name":"sidecar","image":"busybox"}],
                "volumes":[{"name":"v","emptyDir":{}}]}}}})
}

/// xorshift64*: small, seedable, good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        #[expect(clippy::cast_possible_truncation, reason = "reduced modulo a usize")]
        let r = (self.next_u64() % n as u64) as usize;
        r
    }
}

/// Interesting bytes to insert: JSON/YAML syntax, protobuf varint edges.
const DICTIONARY: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"-1",
    b"1e999",
    b"\\u0000",
    b"\xff",
    b"$patch",
    b"\"$patch\":\"delete\"",
    b"\"$patch\":\"replace\"",
    b"$retainKeys",
    b"$setElementOrder/containers",
    b"$deleteFromPrimitiveList/finalizers",
    b"\"op\":\"move\"",
    b"\"path\":\"/\"",
    b"\"from\":\"/spec\"",
    b"&a [*a, *a]",
    b"!!binary",
    b"---\n",
    b"? ",
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
    b"\xff\xff\xff\xff\x0f",
    b"\x0a\x00",
    b"\x12\x7f",
    b"\x1a\x02\x0a\x00",
    b"k8s\0",
];

/// Mutates `input` in place with one to four random edits; protobuf inputs are sometimes
/// mutated inside the envelope's `raw` with the length fixed up, to reach the typed decoder.
pub fn mutate(rng: &mut Rng, input: &mut Input, corpus: &[Input]) {
    if input.media == Media::Protobuf
        && rng.below(2) == 0
        && let Some((prefix, raw)) = split_envelope(&input.bytes)
    {
        let mut raw = raw.to_vec();
        for _ in 0..=rng.below(4) {
            mutate_bytes(rng, &mut raw, corpus);
        }
        input.bytes = rewrap(&prefix, &raw);
        return;
    }
    for _ in 0..=rng.below(4) {
        mutate_bytes(rng, &mut input.bytes, corpus);
    }
}

fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>, corpus: &[Input]) {
    let len = bytes.len();
    match rng.below(8) {
        0 if len > 0 => {
            let i = rng.below(len);
            bytes[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            #[expect(clippy::cast_possible_truncation, reason = "a random byte")]
            let b = rng.next_u64() as u8;
            bytes[i] = b;
        }
        2 => {
            let word = DICTIONARY[rng.below(DICTIONARY.len())];
            let at = rng.below(len + 1);
            bytes.splice(at..at, word.iter().copied());
        }
        3 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(16)).min(len);
            bytes.drain(start..end);
        }
        4 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(32)).min(len);
            let chunk: Vec<u8> = bytes[start..end].to_vec();
            let at = rng.below(len + 1);
            bytes.splice(at..at, chunk);
        }
        5 if !corpus.is_empty() => {
            let other = &corpus[rng.below(corpus.len())].bytes;
            if !other.is_empty() {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(64)).min(other.len());
                let at = rng.below(len + 1);
                bytes.splice(at..at, other[start..end].iter().copied());
            }
        }
        6 if len > 0 => bytes.truncate(rng.below(len)),
        _ => {
            // Nest: wrap in brackets/braces to push depth limits.
            let (open, close): (&[u8], &[u8]) =
                if rng.below(2) == 0 { (b"[", b"]") } else { (b"{\"a\":", b"}") };
            for _ in 0..rng.below(64) {
                bytes.splice(0..0, open.iter().copied());
                bytes.extend_from_slice(close);
            }
        }
    }
}

/// Splits `k8s\0` + Unknown into (everything but field 2, raw bytes), when field 2 is found.
fn split_envelope(bytes: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let body = bytes.strip_prefix(b"k8s\0")?;
    let mut pos = 0;
    let mut rest = Vec::new();
    let mut raw = None;
    while pos < body.len() {
        let key = *body.get(pos)?;
        let len = usize::from(*body.get(pos + 1)?);
        // Only single-byte lengths are rewritten here; longer fields are copied via the varint.
        let (len, header) = if len < 0x80 {
            (len, 2)
        } else {
            let second = usize::from(*body.get(pos + 2)?);
            if second >= 0x80 {
                return None;
            }
            ((len & 0x7f) | (second << 7), 3)
        };
        let end = pos + header + len;
        let field = body.get(pos..end)?;
        if key == 0x12 {
            raw = Some(&body[pos + header..end]);
        } else {
            rest.extend_from_slice(field);
        }
        pos = end;
    }
    Some((rest, raw?))
}

fn rewrap(rest: &[u8], raw: &[u8]) -> Vec<u8> {
    let mut out = b"k8s\0".to_vec();
    out.extend_from_slice(rest);
    out.push(0x12);
    let mut n = raw.len();
    loop {
        #[expect(clippy::cast_possible_truncation, reason = "seven bits at a time")]
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(raw);
    out
}

/// Loads seed inputs: `*.pb` as protobuf, `*.json` as JSON, `*.yaml` as YAML for the decode
/// target; every file of the patch corpus as each patch type.
pub fn load_corpus(target: Target, dirs: &[PathBuf]) -> std::io::Result<Vec<Input>> {
    let mut inputs = Vec::new();
    for dir in dirs {
        let mut paths: Vec<PathBuf> =
            std::fs::read_dir(dir)?.filter_map(Result::ok).map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let bytes = std::fs::read(&path)?;
            let medias: &[Media] = match (target, ext) {
                (Target::Decode, "pb") => &[Media::Protobuf],
                (Target::Decode, "json") => &[Media::Json, Media::Yaml],
                (Target::Decode, "yaml") => &[Media::Yaml],
                (Target::Patch, "json" | "yaml") => &Media::PATCH,
                _ => &[],
            };
            for media in medias {
                inputs.push(Input { media: *media, bytes: bytes.clone() });
            }
        }
    }
    Ok(inputs)
}

/// The default seed directories of a target, relative to the workspace root.
pub fn default_corpus(target: Target, workspace: &Path) -> Vec<PathBuf> {
    match target {
        Target::Decode => vec![
            workspace.join("control-plane/apiserver/testdata/kubectl-create"),
            workspace.join("fuzz/corpus/decode"),
        ],
        Target::Patch => vec![workspace.join("fuzz/corpus/patch")],
    }
}

/// Counters of one run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub executions: u64,
    pub accepted: u64,
    pub refused: u64,
    /// Inputs that panicked (the run keeps going).
    pub crashes: Vec<Input>,
}

/// Runs every seed, then `iterations` mutated inputs. Panics inside a target are caught and the
/// offending inputs returned in the report.
pub fn fuzz(corpus: &[Input], iterations: u64, seed: u64) -> Report {
    let mut report = Report::default();
    let mut rng = Rng::new(seed);
    let run = |input: &Input, report: &mut Report| {
        report.executions += 1;
        match catch_unwind(AssertUnwindSafe(|| run_one(input))) {
            Ok(Outcome::Accepted) => report.accepted += 1,
            Ok(Outcome::Refused(_)) => report.refused += 1,
            Err(_) => report.crashes.push(input.clone()),
        }
    };
    for input in corpus {
        run(input, &mut report);
    }
    if corpus.is_empty() {
        return report;
    }
    for _ in 0..iterations {
        let mut input = corpus[rng.below(corpus.len())].clone();
        mutate(&mut rng, &mut input, corpus);
        run(&input, &mut report);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
    }

    /// CI's short run: every seed plus a few thousand fixed-seed mutations, no panics.
    #[test]
    fn corpus_and_short_fuzz_run_clean() {
        for target in [Target::Decode, Target::Patch] {
            let corpus = load_corpus(target, &default_corpus(target, &workspace())).unwrap();
            assert!(corpus.len() >= 10, "{target:?}: {} seeds", corpus.len());
            let seeds_only = fuzz(&corpus, 0, 1);
            assert!(seeds_only.crashes.is_empty(), "{:?}", seeds_only.crashes);
            if target == Target::Decode {
                // Every real body and seed decodes.
                assert_eq!(seeds_only.accepted, seeds_only.executions);
            }
            let report = fuzz(&corpus, 3000, 7);
            assert!(report.crashes.is_empty(), "{target:?}: {:?}", report.crashes);
            assert!(report.refused > 0 && report.accepted > 0, "{report:?}");
        }
    }

    #[test]
    fn envelope_rewrap_round_trips() {
        let body = std::fs::read(
            workspace().join("control-plane/apiserver/testdata/kubectl-create/namespace.pb"),
        )
        .unwrap();
        let (rest, raw) = split_envelope(&body).unwrap();
        assert_eq!(raw.len(), 28);
        let rewrapped = rewrap(&rest, raw);
        assert_eq!(
            codec::decode_body("application/vnd.kubernetes.protobuf", &rewrapped).unwrap(),
            codec::decode_body("application/vnd.kubernetes.protobuf", &body).unwrap()
        );
    }
}
