//! Kubernetes protobuf request bodies: the `k8s\0` + `runtime.Unknown` envelope, then the typed
//! message, decoded through the schema table into the object's Kubernetes JSON.

use serde_json::{Map, Value};

use super::DecodeError;
use super::schema::{Field, FieldType, SCHEMA, Schema};

/// The four bytes before every Kubernetes protobuf object.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// Nested messages deeper than this are refused (the schema's deepest path is far shallower).
const MAX_DEPTH: usize = 48;

/// Decodes a protobuf request body into Kubernetes JSON (with `apiVersion` and `kind`).
pub(crate) fn decode(body: &[u8]) -> Result<Value, DecodeError> {
    decode_with(&SCHEMA, body)
}

fn decode_with(schema: &Schema, body: &[u8]) -> Result<Value, DecodeError> {
    let Some(envelope) = body.strip_prefix(MAGIC) else {
        return Err(bad("protobuf body does not start with the k8s\\0 magic"));
    };
    let unknown = Unknown::parse(envelope)?;
    if !unknown.content_encoding.is_empty() {
        return Err(DecodeError::UnsupportedMediaType(format!(
            "protobuf contentEncoding {:?} is not supported",
            unknown.content_encoding
        )));
    }
    if !unknown.content_type.is_empty()
        && unknown.content_type != "application/vnd.kubernetes.protobuf"
    {
        return Err(DecodeError::UnsupportedMediaType(format!(
            "protobuf envelope contentType {:?} is not supported",
            unknown.content_type
        )));
    }
    if unknown.kind.is_empty() || unknown.api_version.is_empty() {
        return Err(bad("protobuf envelope has no apiVersion/kind"));
    }
    let Some(root) = schema.root_for(&unknown.api_version, &unknown.kind) else {
        return Err(DecodeError::UnsupportedMediaType(format!(
            "protobuf bodies are not supported for {} {}; send application/json",
            unknown.api_version, unknown.kind
        )));
    };
    let mut object = Map::new();
    object.insert("apiVersion".into(), Value::String(unknown.api_version));
    object.insert("kind".into(), Value::String(unknown.kind));
    Decoder { schema, depth: 0 }.message_into(root, unknown.raw, &mut object)?;
    Ok(Value::Object(object))
}

fn bad(message: impl Into<String>) -> DecodeError {
    DecodeError::BadRequest(message.into())
}

/// `runtime.Unknown{typeMeta(1){apiVersion(1), kind(2)}, raw(2), contentEncoding(3), contentType(4)}`.
struct Unknown<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
    content_type: String,
}

impl<'a> Unknown<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut unknown = Unknown {
            api_version: String::new(),
            kind: String::new(),
            raw: &[],
            content_encoding: String::new(),
            content_type: String::new(),
        };
        let mut reader = Reader::new(bytes);
        while let Some((number, value)) = reader.next_field()? {
            match (number, value) {
                (1, Wire::Len(type_meta)) => {
                    let mut inner = Reader::new(type_meta);
                    while let Some((n, v)) = inner.next_field()? {
                        match (n, v) {
                            (1, Wire::Len(b)) => unknown.api_version = utf8(b, "apiVersion")?,
                            (2, Wire::Len(b)) => unknown.kind = utf8(b, "kind")?,
                            _ => return Err(bad("malformed typeMeta in protobuf envelope")),
                        }
                    }
                }
                (2, Wire::Len(raw)) => unknown.raw = raw,
                (3, Wire::Len(b)) => unknown.content_encoding = utf8(b, "contentEncoding")?,
                (4, Wire::Len(b)) => unknown.content_type = utf8(b, "contentType")?,
                _ => return Err(bad(format!("malformed protobuf envelope (field {number})"))),
            }
        }
        Ok(unknown)
    }
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, DecodeError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| bad(format!("{what} is not valid UTF-8")))
}

/// One field value on the wire.
#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let Some(&byte) = self.bytes.get(self.pos) else {
                return Err(bad("truncated protobuf varint"));
            };
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(bad("protobuf varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(bad("protobuf varint longer than 10 bytes"))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| bad("truncated protobuf field"))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// The next `(field number, value)`, or `None` at the end of the message.
    fn next_field(&mut self) -> Result<Option<(u32, Wire<'a>)>, DecodeError> {
        if self.pos >= self.bytes.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|n| *n > 0 && *n < (1 << 29))
            .ok_or_else(|| bad("invalid protobuf field number"))?;
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Wire::Fixed64(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            }
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| bad("protobuf length does not fit"))?;
                Wire::Len(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                Wire::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            other => return Err(bad(format!("unsupported protobuf wire type {other}"))),
        };
        Ok(Some((number, value)))
    }
}

struct Decoder<'s> {
    schema: &'s Schema,
    depth: usize,
}

impl Decoder<'_> {
    /// Decodes `bytes` as message `name` and merges its fields into `out`.
    fn message_into(
        &mut self,
        name: &str,
        bytes: &[u8],
        out: &mut Map<String, Value>,
    ) -> Result<(), DecodeError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(bad("protobuf message nesting is too deep"));
        }
        let Some(message) = self.schema.messages.get(name) else {
            return Err(bad(format!("no schema for protobuf message {name}")));
        };
        let mut reader = Reader::new(bytes);
        while let Some((number, wire)) = reader.next_field()? {
            let Some(field) = message.fields.get(&number) else {
                if is_zero_wire(wire) {
                    continue;
                }
                return Err(bad(format!(
                    "protobuf field {number} of {name} is not known to this server"
                )));
            };
            self.field(name, number, field, wire, out)?;
        }
        self.depth -= 1;
        Ok(())
    }

    fn field(
        &mut self,
        parent: &str,
        number: u32,
        field: &Field,
        wire: Wire<'_>,
        out: &mut Map<String, Value>,
    ) -> Result<(), DecodeError> {
        let Some(json) = &field.json else {
            // An embedded message: its fields become the parent's.
            let (FieldType::Message(inner), Wire::Len(bytes)) = (&field.ty, wire) else {
                return Err(wrong_wire(parent, number));
            };
            return self.message_into(inner, bytes, out);
        };
        if let FieldType::Map(value_type) = &field.ty {
            let Wire::Len(entry) = wire else {
                return Err(wrong_wire(parent, number));
            };
            let (key, value) = self.map_entry(parent, number, value_type, entry)?;
            let slot = out.entry(json.clone()).or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(map) = slot {
                map.insert(key, value);
            }
            return Ok(());
        }
        if field.repeated {
            let slot = out.entry(json.clone()).or_insert_with(|| Value::Array(Vec::new()));
            let Value::Array(items) = slot else {
                return Err(wrong_wire(parent, number));
            };
            match (wire, is_varint_type(&field.ty)) {
                // Packed scalars (proto3 style); gogo's proto2 output is unpacked, accept both.
                (Wire::Len(bytes), true) => {
                    let mut packed = Reader::new(bytes);
                    while packed.pos < bytes.len() {
                        let v = packed.varint()?;
                        items.push(Self::scalar(parent, number, &field.ty, Wire::Varint(v))?);
                    }
                }
                _ => items.push(self.value(parent, number, &field.ty, wire)?),
            }
            return Ok(());
        }
        let value = self.value(parent, number, &field.ty, wire)?;
        if value.is_null() || (!field.keep_zero && is_zero_scalar(&value)) {
            out.remove(json);
        } else {
            out.insert(json.clone(), value);
        }
        Ok(())
    }

    fn map_entry(
        &mut self,
        parent: &str,
        number: u32,
        value_type: &FieldType,
        entry: &[u8],
    ) -> Result<(String, Value), DecodeError> {
        let mut key = String::new();
        let mut value = None;
        let mut reader = Reader::new(entry);
        while let Some((n, wire)) = reader.next_field()? {
            match (n, wire) {
                (1, Wire::Len(bytes)) => key = utf8(bytes, "map key")?,
                (2, wire) => value = Some(self.value(parent, number, value_type, wire)?),
                _ => return Err(wrong_wire(parent, number)),
            }
        }
        let value = match value {
            Some(v) if !v.is_null() => v,
            // An absent value is the type's zero value.
            _ => match value_type {
                FieldType::String | FieldType::Bytes => Value::String(String::new()),
                FieldType::Message(name) if name.ends_with(".ExtraValue") => {
                    Value::Array(Vec::new())
                }
                FieldType::Message(name) if name == "resource.Quantity" => Value::from("0"),
                _ => Value::Object(Map::new()),
            },
        };
        Ok((key, value))
    }

    /// One value (not repeated, not a map) of type `ty`.
    fn value(
        &mut self,
        parent: &str,
        number: u32,
        ty: &FieldType,
        wire: Wire<'_>,
    ) -> Result<Value, DecodeError> {
        match ty {
            FieldType::Message(name) => {
                let Wire::Len(bytes) = wire else {
                    return Err(wrong_wire(parent, number));
                };
                self.message_value(name, bytes)
            }
            FieldType::Map(_) => Err(wrong_wire(parent, number)),
            _ => Self::scalar(parent, number, ty, wire),
        }
    }

    fn scalar(
        parent: &str,
        number: u32,
        ty: &FieldType,
        wire: Wire<'_>,
    ) -> Result<Value, DecodeError> {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_possible_wrap,
            reason = "protobuf int32/int64 are two's complement in a 64-bit varint"
        )]
        Ok(match (ty, wire) {
            (FieldType::String, Wire::Len(b)) => Value::String(utf8(b, "string field")?),
            (FieldType::Bytes, Wire::Len(b)) => Value::String(base64(b)),
            (FieldType::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
            (FieldType::Int32, Wire::Varint(v)) => Value::from(v as i64 as i32),
            (FieldType::Int64, Wire::Varint(v)) => Value::from(v as i64),
            (FieldType::Double, Wire::Fixed64(bits)) => {
                let f = f64::from_bits(bits);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| bad(format!("field {number} of {parent} is not finite")))?
            }
            _ => return Err(wrong_wire(parent, number)),
        })
    }

    fn message_value(&mut self, name: &str, bytes: &[u8]) -> Result<Value, DecodeError> {
        match name {
            "meta.v1.Time" => time(bytes, false),
            "meta.v1.MicroTime" => time(bytes, true),
            "resource.Quantity" => {
                let mut s = String::new();
                read_fields(bytes, |n, wire| match (n, wire) {
                    (1, Wire::Len(b)) => {
                        s = utf8(b, "quantity")?;
                        Ok(())
                    }
                    _ => Err(bad("malformed Quantity")),
                })?;
                Ok(Value::String(s))
            }
            "intstr.IntOrString" => int_or_string(bytes),
            "runtime.RawExtension" | "meta.v1.FieldsV1" => {
                let mut raw: &[u8] = &[];
                read_fields(bytes, |n, wire| match (n, wire) {
                    (1, Wire::Len(b)) => {
                        raw = b;
                        Ok(())
                    }
                    _ => Err(bad(format!("malformed {name}"))),
                })?;
                if raw.is_empty() {
                    return Ok(Value::Null);
                }
                serde_json::from_slice(raw)
                    .map_err(|e| bad(format!("{name} does not hold JSON: {e}")))
            }
            _ if name.ends_with(".ExtraValue") => {
                let mut items = Vec::new();
                read_fields(bytes, |n, wire| match (n, wire) {
                    (1, Wire::Len(b)) => {
                        items.push(Value::String(utf8(b, "extra value")?));
                        Ok(())
                    }
                    _ => Err(bad("malformed ExtraValue")),
                })?;
                Ok(Value::Array(items))
            }
            _ => {
                let mut object = Map::new();
                self.message_into(name, bytes, &mut object)?;
                Ok(Value::Object(object))
            }
        }
    }
}

fn read_fields<'a>(
    bytes: &'a [u8],
    mut each: impl FnMut(u32, Wire<'a>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let mut reader = Reader::new(bytes);
    while let Some((n, wire)) = reader.next_field()? {
        each(n, wire)?;
    }
    Ok(())
}

fn wrong_wire(parent: &str, number: u32) -> DecodeError {
    bad(format!("protobuf field {number} of {parent} has the wrong wire type"))
}

fn is_varint_type(ty: &FieldType) -> bool {
    matches!(ty, FieldType::Bool | FieldType::Int32 | FieldType::Int64)
}

fn is_zero_wire(wire: Wire<'_>) -> bool {
    match wire {
        Wire::Varint(v) | Wire::Fixed64(v) => v == 0,
        Wire::Fixed32(v) => v == 0,
        Wire::Len(b) => b.is_empty(),
    }
}

fn is_zero_scalar(value: &Value) -> bool {
    match value {
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// `IntOrString{type(1): 0 int | 1 string, intVal(2), strVal(3)}`.
fn int_or_string(bytes: &[u8]) -> Result<Value, DecodeError> {
    let (mut kind, mut int_val, mut str_val) = (0u64, 0i64, String::new());
    read_fields(bytes, |n, wire| {
        match (n, wire) {
            (1, Wire::Varint(v)) => kind = v,
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_possible_wrap,
                reason = "int32 on the wire"
            )]
            (2, Wire::Varint(v)) => int_val = i64::from(v as i64 as i32),
            (3, Wire::Len(b)) => str_val = utf8(b, "IntOrString")?,
            _ => return Err(bad("malformed IntOrString")),
        }
        Ok(())
    })?;
    match kind {
        0 => Ok(Value::from(int_val)),
        1 => Ok(Value::String(str_val)),
        _ => Err(bad("IntOrString has an unknown type")),
    }
}

/// `Time{seconds(1), nanos(2)}` → RFC 3339 in UTC; the zero Time (what gogo writes for an unset
/// timestamp) becomes null, i.e. the field is omitted.
fn time(bytes: &[u8], micro: bool) -> Result<Value, DecodeError> {
    let (mut seconds, mut nanos) = (0i64, 0i64);
    read_fields(bytes, |n, wire| {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_possible_wrap,
            reason = "int64/int32 on the wire"
        )]
        match (n, wire) {
            (1, Wire::Varint(v)) => seconds = v as i64,
            (2, Wire::Varint(v)) => nanos = i64::from(v as i64 as i32),
            _ => return Err(bad("malformed Time")),
        }
        Ok(())
    })?;
    if seconds == 0 && nanos == 0 {
        return Ok(Value::Null);
    }
    if !(0..1_000_000_000).contains(&nanos)
        || !(-62_135_596_800..=253_402_300_799).contains(&seconds)
    {
        return Err(bad("Time is out of range"));
    }
    Ok(Value::String(format_rfc3339(seconds, nanos, micro)))
}

/// Seconds since the Unix epoch → `YYYY-MM-DDTHH:MM:SSZ` (or `.ffffffZ` with `micro`).
pub(crate) fn format_rfc3339(seconds: i64, nanos: i64, micro: bool) -> String {
    let days = seconds.div_euclid(86_400);
    let rem = seconds.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm), proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if micro {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:06}Z", nanos / 1000)
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    }
}

/// Standard base64 with padding (how Go's encoding/json writes `[]byte`).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod schema_check;
#[cfg(test)]
mod tests;
