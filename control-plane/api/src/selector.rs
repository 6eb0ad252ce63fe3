//! Label and field selectors: parsing of the query-string forms (`app=web,tier in (a,b),!x`,
//! `metadata.name=web`) and matching against objects.

use std::collections::BTreeMap;

use serde_json::Value;

/// A selector that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

/// One `key op values` requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
}

/// A parsed label selector: every requirement must hold. Empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

fn valid_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// A qualified label key: optional DNS prefix and `/`, then a name of at most 63 characters.
pub fn valid_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => {
            !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                })
                && valid_name_part(name)
        }
        None => valid_name_part(key),
    }
}

/// A label value: empty, or a name part of at most 63 characters.
pub fn valid_label_value(v: &str) -> bool {
    v.is_empty() || valid_name_part(v)
}

struct Lexer<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn skip_ws(&mut self) {
        while self.s[self.pos..].starts_with([' ', '\t']) {
            self.pos += 1;
        }
    }
    fn eat(&mut self, t: &str) -> bool {
        self.skip_ws();
        if self.s[self.pos..].starts_with(t) {
            self.pos += t.len();
            true
        } else {
            false
        }
    }
    fn word(&mut self) -> &'a str {
        self.skip_ws();
        let rest = &self.s[self.pos..];
        let end =
            rest.find(|c: char| c.is_whitespace() || "=!,()<>".contains(c)).unwrap_or(rest.len());
        self.pos += end;
        &rest[..end]
    }
    fn at_end_of_requirement(&mut self) -> bool {
        self.skip_ws();
        self.pos == self.s.len() || self.s[self.pos..].starts_with(',')
    }
}

impl LabelSelector {
    /// Parses the `labelSelector` query form.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        let mut lx = Lexer { s, pos: 0 };
        lx.skip_ws();
        if lx.pos == s.len() {
            return Ok(Self(reqs));
        }
        loop {
            let err = || SelectorError(s.to_owned());
            let negated = lx.eat("!");
            let key = lx.word().to_owned();
            if !valid_label_key(&key) {
                return Err(SelectorError(format!("{s}: invalid label key {key:?}")));
            }
            let op = if negated {
                if !lx.at_end_of_requirement() {
                    return Err(err());
                }
                Op::DoesNotExist
            } else if lx.at_end_of_requirement() {
                Op::Exists
            } else if lx.eat("==") || lx.eat("=") {
                Op::Equals(value(&mut lx, s)?)
            } else if lx.eat("!=") {
                Op::NotEquals(value(&mut lx, s)?)
            } else if lx.eat(">") {
                Op::Gt(lx.word().parse().map_err(|_| err())?)
            } else if lx.eat("<") {
                Op::Lt(lx.word().parse().map_err(|_| err())?)
            } else {
                let w = lx.word();
                let set = match w {
                    "in" | "notin" => set(&mut lx, s)?,
                    _ => return Err(err()),
                };
                if w == "in" { Op::In(set) } else { Op::NotIn(set) }
            };
            reqs.push(Requirement { key, op });
            lx.skip_ws();
            if lx.pos == s.len() {
                return Ok(Self(reqs));
            }
            if !lx.eat(",") {
                return Err(err());
            }
        }
    }

    /// Whether a label map satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| {
            let v = labels.get(&r.key);
            match &r.op {
                Op::Equals(x) => v == Some(x),
                Op::NotEquals(x) => v != Some(x),
                Op::In(xs) => v.is_some_and(|v| xs.contains(v)),
                Op::NotIn(xs) => v.is_none_or(|v| !xs.contains(v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
                Op::Gt(n) => v.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v > *n),
                Op::Lt(n) => v.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v < *n),
            }
        })
    }

    /// Whether an object's `metadata.labels` satisfy the selector.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.0.is_empty() || self.matches(&labels_of(obj))
    }
}

fn value(lx: &mut Lexer<'_>, whole: &str) -> Result<String, SelectorError> {
    let v = lx.word();
    if valid_label_value(v) {
        Ok(v.to_owned())
    } else {
        Err(SelectorError(format!("{whole}: invalid label value {v:?}")))
    }
}

fn set(lx: &mut Lexer<'_>, whole: &str) -> Result<Vec<String>, SelectorError> {
    if !lx.eat("(") {
        return Err(SelectorError(whole.to_owned()));
    }
    let mut out = Vec::new();
    loop {
        if lx.eat(")") {
            return Ok(out);
        }
        out.push(value(lx, whole)?);
        if !lx.eat(",") {
            return if lx.eat(")") { Ok(out) } else { Err(SelectorError(whole.to_owned())) };
        }
    }
}

/// `metadata.labels` as a map (non-string values are ignored).
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default()
}

/// One `field=value` / `field!=value` term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldTerm {
    pub field: String,
    pub value: String,
    pub equal: bool,
}

/// A parsed field selector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldTerm>);

impl FieldSelector {
    /// Parses the `fieldSelector` query form; `allowed` says which field paths the resource
    /// supports (others are an error, as upstream).
    pub fn parse(s: &str, allowed: impl Fn(&str) -> bool) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, true)
            } else {
                return Err(SelectorError(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !allowed(field) {
                return Err(SelectorError(format!("field label not supported: {field}")));
            }
            terms.push(FieldTerm {
                field: field.to_owned(),
                value: value.trim().to_owned(),
                equal,
            });
        }
        Ok(Self(terms))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|t| (field_value(obj, &t.field) == t.value) == t.equal)
    }

    /// The value the selector pins `metadata.name` to, if any (lets lists skip a scan).
    pub fn exact_name(&self) -> Option<&str> {
        self.0.iter().find(|t| t.equal && t.field == "metadata.name").map(|t| t.value.as_str())
    }
}

/// The string form of a field path's value in an object (`""` when absent), as upstream's field
/// sets expose it: booleans and numbers as their text, Event `source` as `source.component`.
pub fn field_value(obj: &Value, path: &str) -> String {
    let path = if path == "source" { "source.component" } else { path };
    let mut cur = obj;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => {
                return match path {
                    "spec.hostNetwork" | "spec.unschedulable" => "false".to_owned(),
                    _ => String::new(),
                };
            }
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// Renders a `metav1.LabelSelector` (matchLabels/matchExpressions) in the query form, as
/// `Scale.status.selector` carries it.
pub fn label_selector_string(sel: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in m {
            parts.push(format!("{k}={}", v.as_str().unwrap_or("")));
        }
    }
    if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e.get("operator").and_then(Value::as_str) {
                Some("In") => parts.push(format!("{key} in ({})", values.join(","))),
                Some("NotIn") => parts.push(format!("{key} notin ({})", values.join(","))),
                Some("Exists") => parts.push(key.to_owned()),
                Some("DoesNotExist") => parts.push(format!("!{key}")),
                _ => {}
            }
        }
    }
    parts.join(",")
}

/// Whether a `metav1.LabelSelector` object matches a label map (an empty selector matches all).
pub fn label_selector_matches(sel: &Value, labels: &BTreeMap<String, String>) -> bool {
    LabelSelector::parse(&label_selector_string(sel)).is_ok_and(|s| s.matches(labels))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn label_operators() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        let check = |sel: &str, want: bool| {
            let parsed = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(parsed.matches(&l), want, "{sel}");
        };
        check("", true);
        check("app=web", true);
        check("app==web", true);
        check("app!=web", false);
        check("missing!=x", true);
        check("app in (web, db)", true);
        check("app notin (web)", false);
        check("tier,app", true);
        check("!tier", false);
        check("!missing", true);
        check("app=web,tier=back", false);
        check("n>4", true);
        check("n<5", false);
        check("kubernetes.io/cluster-service=true", false);
    }

    #[test]
    fn bad_label_selectors_are_errors() {
        for s in ["app=", "=web", "app in web", "app in (a", "a b", "app=we b", "!a=b", "x/=1"] {
            if s == "app=" {
                assert!(LabelSelector::parse(s).is_ok(), "empty value is allowed");
                continue;
            }
            assert!(LabelSelector::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata":{"name":"p","namespace":"d"},"spec":{"nodeName":"n1"},"status":{"phase":"Running"}});
        let allow = |f: &str| {
            f.starts_with("metadata.") || f.starts_with("spec.") || f.starts_with("status.")
        };
        let sel =
            FieldSelector::parse("metadata.name=p,status.phase!=Failed", allow).expect("parses");
        assert!(sel.matches(&pod));
        assert_eq!(sel.exact_name(), Some("p"));
        let sel = FieldSelector::parse("spec.nodeName==n2", allow).expect("parses");
        assert!(!sel.matches(&pod));
        assert!(FieldSelector::parse("spec.bogus=1", |f| f == "metadata.name").is_err());
        assert!(FieldSelector::parse("nonsense", allow).is_err());
        let ev = json!({"source":{"component":"kubelet"}});
        assert_eq!(field_value(&ev, "source"), "kubelet");
    }

    #[test]
    fn label_selector_objects_render_and_match() {
        let sel = json!({"matchLabels":{"app":"web"},"matchExpressions":[{"key":"tier","operator":"In","values":["a","b"]}]});
        assert_eq!(label_selector_string(&sel), "app=web,tier in (a,b)");
        assert!(label_selector_matches(&sel, &labels(&[("app", "web"), ("tier", "a")])));
        assert!(!label_selector_matches(&sel, &labels(&[("app", "web")])));
    }

    fn key() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9]{0,6}"
    }

    proptest! {
        #[test]
        fn equality_selectors_agree_with_the_map(
            map in proptest::collection::btree_map(key(), key(), 0..5),
            k in key(),
            v in key(),
        ) {
            let eq = LabelSelector::parse(&format!("{k}={v}")).expect("valid");
            let ne = LabelSelector::parse(&format!("{k}!={v}")).expect("valid");
            prop_assert_eq!(eq.matches(&map), map.get(&k) == Some(&v));
            prop_assert_eq!(ne.matches(&map), !eq.matches(&map));
            let ex = LabelSelector::parse(&k).expect("valid");
            let nex = LabelSelector::parse(&format!("!{k}")).expect("valid");
            prop_assert_eq!(ex.matches(&map), !nex.matches(&map));
        }

        #[test]
        fn set_selectors_are_complements(
            map in proptest::collection::btree_map(key(), key(), 0..5),
            k in key(),
            vs in proptest::collection::vec(key(), 1..4),
        ) {
            let list = vs.join(",");
            let inn = LabelSelector::parse(&format!("{k} in ({list})")).expect("valid");
            let notin = LabelSelector::parse(&format!("{k} notin ({list})")).expect("valid");
            prop_assert_eq!(notin.matches(&map), !inn.matches(&map));
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,40}") {
            let _ = LabelSelector::parse(&s);
            let _ = FieldSelector::parse(&s, |_| true);
        }
    }
}
