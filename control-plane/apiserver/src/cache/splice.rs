//! Splicing `metadata.resourceVersion` into a stored object's JSON without decoding it: the
//! store keeps objects without their resourceVersion (it is the key's mod revision), and the
//! watch cache serves the stored bytes with it added.

use std::borrow::Cow;

use bytes::Bytes;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// `stored` (valid JSON, checked by the caller) with `"resourceVersion":"<rev>"` appended to
/// its top-level `metadata` object. `None` when the bytes are not in the plain shape this
/// handles, so the caller decodes and re-encodes instead: a line break anywhere (the result
/// must fit on one watch line), an escaped or repeated key at the top level or in `metadata`,
/// or a `resourceVersion` already present. Without a `metadata` object (or with a top level
/// that is not an object) the bytes are returned as they are, as decoding would leave them
/// without a resourceVersion too.
pub fn with_resource_version(stored: &[u8], rev: i64) -> Option<Bytes> {
    if stored.iter().any(|b| matches!(b, b'\n' | b'\r')) {
        return None;
    }
    let json = trim(stored);
    let meta = match find_metadata(json)? {
        Metadata::At(start) => start,
        Metadata::Absent => return Some(Bytes::copy_from_slice(json)),
    };
    let (close, empty) = scan_metadata(json, meta)?;
    let field = format!("{}\"resourceVersion\":\"{rev}\"", if empty { "" } else { "," });
    let mut out = Vec::with_capacity(json.len() + field.len());
    out.extend_from_slice(&json[..close]);
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(&json[close..]);
    Some(Bytes::from(out))
}

/// Whether `stored` decodes as a [`serde_json::Value`] does: `None` when decoding would fail
/// (invalid UTF-8, a lone surrogate escape, a number out of range, nesting deeper than the
/// decoder allows, trailing bytes), so the object is skipped exactly as a decode would skip
/// it; otherwise `Some(repeats)`, where `repeats` says some object in it repeats a key.
/// Decoding keeps the last of repeated keys and the bytes keep all of them, so such bytes
/// must be decoded and re-encoded rather than served. Nothing is allocated for keys and
/// strings without escapes.
pub fn decodable(stored: &[u8]) -> Option<bool> {
    let mut repeats = false;
    let mut de = serde_json::Deserializer::from_slice(stored);
    Check { repeats: &mut repeats }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(repeats)
}

/// A [`serde::de::Visitor`] that accepts what a `Value` accepts and notes repeated keys.
struct Check<'r> {
    repeats: &'r mut bool,
}

impl<'de> DeserializeSeed<'de> for Check<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Check { repeats: &mut *self.repeats })?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys: Vec<Cow<'de, str>> = Vec::new();
        while let Some(key) = map.next_key_seed(Key)? {
            keys.push(key);
            map.next_value_seed(Check { repeats: &mut *self.repeats })?;
        }
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            *self.repeats = true;
        }
        Ok(())
    }
}

/// An object key, borrowed from the input unless it has escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &b[start..end]
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// End (exclusive) of the string starting at `b[i] == '"'`.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        match *b.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// End (exclusive) of the value starting at `b[i]`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match *b.get(j)? {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while b
                .get(j)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
            {
                j += 1;
            }
            Some(j)
        }
    }
}

/// Calls `each(key, value_start, value_end)` for every member of the object at `b[i] == '{'`;
/// returns the index of its closing brace. `None` if a key is escaped or `each` refuses.
fn members<'a>(
    b: &'a [u8],
    i: usize,
    mut each: impl FnMut(&'a [u8], usize, usize) -> Option<()>,
) -> Option<usize> {
    let mut i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Some(i);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(b, i)?;
        let key = &b[i + 1..key_end - 1];
        if key.contains(&b'\\') {
            return None;
        }
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(b, i + 1);
        let end = skip_value(b, start)?;
        each(key, start, end)?;
        i = skip_ws(b, end);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return Some(i),
            _ => return None,
        }
    }
}

/// Where the top-level `metadata` object is.
enum Metadata {
    /// It starts at this index.
    At(usize),
    /// There is none (or it is not an object).
    Absent,
}

/// The top-level `metadata` object; `None` for a shape this module declines.
fn find_metadata(json: &[u8]) -> Option<Metadata> {
    if json.first() != Some(&b'{') {
        return Some(Metadata::Absent);
    }
    let mut found = None;
    let mut repeated = false;
    members(json, 0, |key, start, _| {
        if key == b"metadata" {
            repeated |= found.is_some();
            found = Some(start);
        }
        Some(())
    })?;
    if repeated {
        return None;
    }
    Some(match found {
        Some(start) if json[start] == b'{' => Metadata::At(start),
        _ => Metadata::Absent,
    })
}

/// The closing brace of the metadata object at `start` and whether it is empty; `None` if it
/// already has a resourceVersion or a repeated key.
fn scan_metadata(json: &[u8], start: usize) -> Option<(usize, bool)> {
    let mut keys: Vec<&[u8]> = Vec::new();
    let close = members(json, start, |key, _, _| {
        if key == b"resourceVersion" || keys.contains(&key) {
            return None;
        }
        keys.push(key);
        Some(())
    })?;
    Some((close, keys.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The splice, when it applies, must equal decoding, setting the resourceVersion, and
    /// re-encoding; when it declines, the caller does exactly that.
    fn check(stored: &str, expect_spliced: bool) {
        let out = with_resource_version(stored.as_bytes(), 42);
        assert_eq!(out.is_some(), expect_spliced, "{stored}");
        let Some(out) = out else { return };
        assert!(!out.contains(&b'\n'));
        let spliced: Value = serde_json::from_slice(&out).expect("spliced bytes are JSON");
        let mut decoded: Value = serde_json::from_str(stored).expect("test input is JSON");
        if let Some(m) = decoded.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), json!("42"));
        }
        assert_eq!(spliced, decoded, "{stored}");
    }

    #[test]
    fn splices_or_declines() {
        check(
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"a":"}{"}},"spec":{"x":[1,{"y":"\"}"}]}}"#,
            true,
        );
        check(r#"{"metadata":{}}"#, true);
        check(
            r#"  { "kind" : "X" , "metadata" : { "name" : "n" } , "n": -1.5e3, "t": true, "z": null }  "#,
            true,
        );
        check(r#"{"spec":{"metadata":{"name":"inner"}},"metadata":{"name":"outer"}}"#, true);
        check(r#"{"kind":"NoMeta"}"#, true);
        check(r#"{"metadata":"not an object"}"#, true);
        check("[1,2]", true);
        check(r#""a string""#, true);
        check(r#"{"metadata":{"resourceVersion":"7","name":"n"}}"#, false);
        check(r#"{"metadata":{"name":"a","name":"b"}}"#, false);
        check(r#"{"metadata":{"name":"a"},"metadata":{"name":"b"}}"#, false);
        check(r#"{"metadata":{"n\u0061me":"a"}}"#, false);
        check("{\"metadata\":{\n\"name\":\"a\"}}", false);
        check("{\"metadata\":{\"name\":\"a\"}}\r\n", false);
    }

    #[test]
    fn escapes_inside_strings_do_not_confuse_the_scan() {
        check(r#"{"a":"\\","metadata":{"b":"\\\"{","c":["]"]},"d":"}"}"#, true);
    }
}
