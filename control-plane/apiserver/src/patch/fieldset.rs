//! Sets of field paths and their `FieldsV1` encoding (`{"f:spec":{"f:replicas":{}}}`), the unit
//! of ownership in `metadata.managedFields`.
//!
//! A path is a sequence of elements: `f:<field>`, `k:<json of the list-map keys>` (an element of
//! a keyed list), `v:<json value>` (an element of a set), `i:<index>`. A node is a *member* when
//! the path ending there is in the set; in `FieldsV1` a member with children carries `".": {}`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    pub fn new() -> FieldSet {
        FieldSet::default()
    }

    /// A set holding only the empty path (used as a leaf).
    pub(crate) fn leaf() -> FieldSet {
        FieldSet { member: true, children: BTreeMap::new() }
    }

    pub(crate) fn set_member(&mut self, member: bool) {
        self.member = member;
    }

    pub(crate) fn is_member(&self) -> bool {
        self.member
    }

    pub(crate) fn insert_child(&mut self, element: String, child: FieldSet) {
        if child.is_empty() {
            return;
        }
        match self.children.get_mut(&element) {
            Some(existing) => existing.union_with(&child),
            None => {
                self.children.insert(element, child);
            }
        }
    }

    pub(crate) fn children(&self) -> impl Iterator<Item = (&String, &FieldSet)> {
        self.children.iter()
    }

    pub(crate) fn child(&self, element: &str) -> Option<&FieldSet> {
        self.children.get(element)
    }

    /// No path at all.
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    pub fn union_with(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (element, child) in &other.children {
            self.children.entry(element.clone()).or_default().union_with(child);
        }
        self.prune();
    }

    /// The paths of `self` that are not in `other`.
    #[must_use]
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet { member: self.member && !other.member, children: BTreeMap::new() };
        for (element, child) in &self.children {
            let rest = match other.children.get(element) {
                Some(o) => child.difference(o),
                None => child.clone(),
            };
            if !rest.is_empty() {
                out.children.insert(element.clone(), rest);
            }
        }
        out
    }

    /// The paths in both sets.
    #[must_use]
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet { member: self.member && other.member, children: BTreeMap::new() };
        for (element, child) in &self.children {
            if let Some(o) = other.children.get(element) {
                let both = child.intersection(o);
                if !both.is_empty() {
                    out.children.insert(element.clone(), both);
                }
            }
        }
        out
    }

    /// Whether any path of `self` is at or below this node (used to keep parents that others
    /// still own something under).
    pub(crate) fn has_any(&self) -> bool {
        !self.is_empty()
    }

    fn prune(&mut self) {
        self.children.retain(|_, c| !c.is_empty());
    }

    /// Every member path, each as its list of elements.
    pub fn paths(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (element, child) in &self.children {
            prefix.push(element.clone());
            child.collect(prefix, out);
            prefix.pop();
        }
    }

    /// Parses the `fieldsV1` object of a managedFields entry.
    pub fn from_fields_v1(value: &Value) -> Result<FieldSet, String> {
        let Value::Object(map) = value else {
            return Err("fieldsV1 must be an object".into());
        };
        let mut set = FieldSet::new();
        if map.is_empty() {
            set.member = true;
            return Ok(set);
        }
        for (key, child) in map {
            if key == "." {
                set.member = true;
                continue;
            }
            if !(key.starts_with("f:")
                || key.starts_with("k:")
                || key.starts_with("v:")
                || key.starts_with("i:"))
            {
                return Err(format!("unknown fieldsV1 path element {key:?}"));
            }
            set.children.insert(key.clone(), FieldSet::from_fields_v1(child)?);
        }
        Ok(set)
    }

    /// The `fieldsV1` object of this set.
    pub fn to_fields_v1(&self) -> Value {
        let mut map = Map::new();
        if self.member && !self.children.values().all(FieldSet::is_empty) {
            map.insert(".".into(), Value::Object(Map::new()));
        }
        for (element, child) in &self.children {
            if !child.is_empty() {
                map.insert(element.clone(), child.to_fields_v1());
            }
        }
        Value::Object(map)
    }
}

/// A path as upstream prints it in conflicts: `.spec.containers[name="nginx"].image`.
pub fn format_path(path: &[String]) -> String {
    let mut out = String::new();
    for element in path {
        if let Some(field) = element.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(key) = element.strip_prefix("k:") {
            match serde_json::from_str::<Map<String, Value>>(key) {
                Ok(keys) => {
                    let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    out.push('[');
                    out.push_str(&parts.join(","));
                    out.push(']');
                }
                Err(_) => {
                    let _ = write!(out, "[{key}]");
                }
            }
        } else if let Some(value) = element.strip_prefix("v:") {
            let _ = write!(out, "[={value}]");
        } else if let Some(index) = element.strip_prefix("i:") {
            let _ = write!(out, "[{index}]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(v: &Value) -> FieldSet {
        FieldSet::from_fields_v1(v).unwrap()
    }

    #[test]
    fn fields_v1_round_trip_and_algebra() {
        let a = json!({"f:metadata":{"f:labels":{"f:app":{}}},
                       "f:spec":{"f:replicas":{},"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{},"f:name":{}}}}});
        let sa = set(&a);
        assert_eq!(sa.to_fields_v1(), a);
        let b = set(&json!({"f:spec":{"f:replicas":{}}}));
        let diff = sa.difference(&b);
        assert_eq!(
            diff.to_fields_v1(),
            json!({"f:metadata":{"f:labels":{"f:app":{}}},
                   "f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{},"f:name":{}}}}})
        );
        assert_eq!(sa.intersection(&b), b);
        let mut u = diff.clone();
        u.union_with(&b);
        assert_eq!(u, sa);
        let paths: Vec<String> = sa.paths().iter().map(|p| format_path(p)).collect();
        assert_eq!(
            paths,
            [
                ".metadata.labels.app",
                ".spec.containers[name=\"nginx\"]",
                ".spec.containers[name=\"nginx\"].image",
                ".spec.containers[name=\"nginx\"].name",
                ".spec.replicas"
            ]
        );
        assert!(FieldSet::from_fields_v1(&json!({"x:y": {}})).is_err());
        assert!(FieldSet::from_fields_v1(&json!([])).is_err());
    }
}
