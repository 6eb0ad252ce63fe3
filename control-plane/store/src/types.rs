//! Requests and responses of the key-value state machine, with etcd v3 semantics.
//!
//! These are the store's own types (serde, carried inside raft entries); the etcd gRPC service
//! converts to and from `etcdserverpb` at the edge.

use serde::{Deserialize, Serialize};

/// Serde for `Vec<u8>` fields as one byte string instead of a sequence of numbers. bincode's
/// encoding is the same either way (a `u64` length, then the bytes), so data written before
/// stays readable, but it copies the bytes in one go instead of one call per byte, which was a
/// visible share of the write path's CPU (values pass through bincode several times per write:
/// forwarding, raft log, replication, MVCC record).
pub(crate) mod bytes {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::ser::Serializer;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // Formats without byte strings (JSON) send a sequence; never trust its size hint.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// Largest request the store accepts (etcd's default `--max-request-bytes`): 1.5 MiB.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// One key's value at one revision, as etcd's `mvccpb.KeyValue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KeyValue {
    #[serde(with = "crate::types::bytes")]
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    #[serde(with = "crate::types::bytes")]
    pub value: Vec<u8>,
    pub lease: i64,
}

/// A key range: `range_end` empty means the single key `key`; `[0]` means every key `>= key`;
/// otherwise the half-open range `[key, range_end)` (etcd's convention).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KeyRange {
    #[serde(with = "crate::types::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::types::bytes")]
    pub range_end: Vec<u8>,
}

impl KeyRange {
    pub fn single(key: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into(), range_end: Vec::new() }
    }

    /// Every key starting with `prefix` (what `etcdctl get --prefix` sends).
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key: Vec<u8> = prefix.into();
        let range_end = prefix_end(&key);
        Self { key, range_end }
    }

    pub fn is_single(&self) -> bool {
        self.range_end.is_empty()
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        if self.range_end.is_empty() {
            return k == self.key.as_slice();
        }
        if k < self.key.as_slice() {
            return false;
        }
        self.range_end == [0] || k < self.range_end.as_slice()
    }
}

/// The smallest key greater than every key with this prefix; `[0]` ("to the end") when the
/// prefix is empty or all `0xff`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RangeRequest {
    pub range: KeyRange,
    /// 0 = no limit.
    pub limit: i64,
    /// 0 = the current revision.
    pub revision: i64,
    pub keys_only: bool,
    pub count_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RangeResponse {
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PutRequest {
    #[serde(with = "crate::types::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::types::bytes")]
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PutResponse {
    pub revision: i64,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeleteRangeRequest {
    pub range: KeyRange,
    pub prev_kv: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeleteRangeResponse {
    pub revision: i64,
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// What a compare looks at, with the operand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(#[serde(with = "crate::types::bytes")] Vec<u8>),
    Lease(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub range: KeyRange,
    pub result: CompareResult,
    pub target: CompareTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResponse {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TxnResponse {
    pub revision: i64,
    pub succeeded: bool,
    pub responses: Vec<TxnOpResponse>,
}

/// A write that goes through raft. Ranges inside a `Txn` are read at the txn's position in
/// the log, so they are linearizable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(i64),
}

impl WriteOp {
    /// Bytes of keys and values in the request: what the 1.5 MiB limit applies to.
    pub fn payload_size(&self) -> usize {
        fn op(o: &TxnOp) -> usize {
            match o {
                TxnOp::Range(r) => r.range.key.len() + r.range.range_end.len(),
                TxnOp::Put(p) => p.key.len() + p.value.len(),
                TxnOp::DeleteRange(d) => d.range.key.len() + d.range.range_end.len(),
                TxnOp::Txn(t) => txn(t),
            }
        }
        fn txn(t: &TxnRequest) -> usize {
            let cmp: usize = t
                .compare
                .iter()
                .map(|c| {
                    c.range.key.len()
                        + c.range.range_end.len()
                        + match &c.target {
                            CompareTarget::Value(v) => v.len(),
                            _ => 8,
                        }
                })
                .sum();
            cmp + t.success.iter().map(op).sum::<usize>() + t.failure.iter().map(op).sum::<usize>()
        }
        match self {
            WriteOp::Put(p) => p.key.len() + p.value.len(),
            WriteOp::DeleteRange(d) => d.range.key.len() + d.range.range_end.len(),
            WriteOp::Txn(t) => txn(t),
            WriteOp::Compact(_) => 8,
        }
    }
}

/// The result of one applied [`WriteOp`]. Errors that depend on state (compacted, future
/// revision) are results, not failures of the raft entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteResult {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact { revision: i64 },
    Error(crate::error::KvError),
}

impl WriteResult {
    /// The store's revision once this write applied (compactions and errors: none).
    pub fn revision(&self) -> Option<i64> {
        match self {
            Self::Put(r) => Some(r.revision),
            Self::DeleteRange(r) => Some(r.revision),
            Self::Txn(r) => Some(r.revision),
            Self::Compact { .. } | Self::Error(_) => None,
        }
    }
}

/// Kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as etcd's `mvccpb.Event`. For a delete, `kv` carries the key and the deleting
/// revision as `mod_revision`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PutRequest` as it was encoded before its byte fields were marked as byte strings.
    #[derive(Serialize)]
    struct PlainPut {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
        prev_kv: bool,
        ignore_value: bool,
        ignore_lease: bool,
    }

    /// `KeyValue`, `KeyRange` and a value compare as encoded before their byte fields were
    /// marked as byte strings (raft log entries and forwarded batches on disk and the wire).
    #[derive(Serialize)]
    struct PlainKeyValue {
        key: Vec<u8>,
        create_revision: i64,
        mod_revision: i64,
        version: i64,
        value: Vec<u8>,
        lease: i64,
    }

    #[derive(Serialize)]
    struct PlainKeyRange {
        key: Vec<u8>,
        range_end: Vec<u8>,
    }

    #[derive(Serialize)]
    enum PlainCompareTarget {
        _Version(i64),
        _Create(i64),
        _Mod(i64),
        Value(Vec<u8>),
    }

    #[test]
    fn every_byte_field_keeps_its_bincode_encoding() {
        let kv = KeyValue {
            key: b"/k".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            value: (0..=255).collect(),
            lease: 1,
        };
        let plain = PlainKeyValue {
            key: kv.key.clone(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            value: kv.value.clone(),
            lease: 1,
        };
        let old = bincode::serialize(&plain).unwrap();
        assert_eq!(bincode::serialize(&kv).unwrap(), old);
        assert_eq!(bincode::deserialize::<KeyValue>(&old).unwrap(), kv);
        let range = KeyRange::prefix("/a/");
        let old = bincode::serialize(&PlainKeyRange {
            key: range.key.clone(),
            range_end: range.range_end.clone(),
        })
        .unwrap();
        assert_eq!(bincode::serialize(&range).unwrap(), old);
        assert_eq!(bincode::deserialize::<KeyRange>(&old).unwrap(), range);
        let target = CompareTarget::Value(vec![1, 2, 3]);
        let old = bincode::serialize(&PlainCompareTarget::Value(vec![1, 2, 3])).unwrap();
        assert_eq!(bincode::serialize(&target).unwrap(), old);
        assert_eq!(bincode::deserialize::<CompareTarget>(&old).unwrap(), target);
    }

    #[test]
    fn byte_fields_keep_their_bincode_and_json_encodings() {
        let put = PutRequest {
            key: b"/registry/k".to_vec(),
            value: vec![0, 1, 255, 7],
            lease: 3,
            prev_kv: true,
            ..Default::default()
        };
        let plain = PlainPut {
            key: put.key.clone(),
            value: put.value.clone(),
            lease: 3,
            prev_kv: true,
            ignore_value: false,
            ignore_lease: false,
        };
        let bin = bincode::serialize(&put).unwrap();
        assert_eq!(bin, bincode::serialize(&plain).unwrap(), "same bytes as before");
        assert_eq!(bincode::deserialize::<PutRequest>(&bin).unwrap(), put);
        let json = serde_json::to_string(&put).unwrap();
        assert_eq!(json, serde_json::to_string(&plain).unwrap());
        assert_eq!(serde_json::from_str::<PutRequest>(&json).unwrap(), put);
        // A length beyond the input is an error, not an allocation.
        let mut bad = bin;
        bad[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(bincode::deserialize::<PutRequest>(&bad).is_err());
    }
}
