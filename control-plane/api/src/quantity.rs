//! Resource quantities (`500m`, `1Gi`): validation and canonicalisation of numeric JSON values
//! to the string form clients require (Python's models reject numbers).

use serde_json::Value;

const SUFFIXES: &[&str] =
    &["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", ""];

/// Whether `s` is a valid quantity: sign, decimal number, then a binary/decimal suffix or an
/// exponent.
pub fn valid(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let num_end = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
    let (num, suffix) = body.split_at(num_end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return false;
    }
    if SUFFIXES.contains(&suffix) {
        return true;
    }
    let exp = suffix.strip_prefix(['e', 'E']).map(|e| e.strip_prefix(['+', '-']).unwrap_or(e));
    exp.is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()))
}

/// The canonical string for a numeric quantity: `1`, `500m`, `1500m`.
pub fn from_number(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    let f = n.as_f64().unwrap_or(0.0);
    let milli = f * 1000.0;
    if (milli - milli.round()).abs() < 1e-6 && milli.abs() < 9e15 {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "bounded above and exact at milli precision"
        )]
        let m = milli.round() as i64;
        if m % 1000 == 0 { (m / 1000).to_string() } else { format!("{m}m") }
    } else {
        format!("{f}")
    }
}

/// Replaces numbers by quantity strings in every map named like a quantity map (`limits`,
/// `requests`, `capacity`, `allocatable`, `hard`, `used`) anywhere in `v`.
pub fn canonicalize(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let is_quantity_map = matches!(
                    k.as_str(),
                    "limits" | "requests" | "capacity" | "allocatable" | "hard" | "used"
                );
                if is_quantity_map && let Value::Object(q) = child {
                    for qv in q.values_mut() {
                        if let Value::Number(n) = qv {
                            *qv = Value::String(from_number(n));
                        }
                    }
                }
                canonicalize(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(canonicalize),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn quantities_validate() {
        for ok in ["1", "500m", "1Gi", "0.5", "1e3", "+2", "128974848", "129e6", "123Mi", "1.5k"] {
            assert!(valid(ok), "{ok}");
        }
        for bad in ["", "m", "1..2", "1Xi", "abc", "1e", "--1"] {
            assert!(!valid(bad), "{bad}");
        }
    }

    #[test]
    fn numbers_become_strings() {
        let mut v = json!({"containers":[{"resources":{"limits":{"cpu":1,"memory":"1Gi"},"requests":{"cpu":0.5}}}]});
        canonicalize(&mut v);
        assert_eq!(
            v,
            json!({"containers":[{"resources":{"limits":{"cpu":"1","memory":"1Gi"},"requests":{"cpu":"500m"}}}]})
        );
        assert_eq!(from_number(&serde_json::Number::from_f64(1.5).expect("finite")), "1500m");
    }
}
