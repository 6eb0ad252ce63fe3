//! Object metadata helpers: RFC 3339 timestamps without a clock dependency, `generateName`
//! suffixes, and human-readable ages as kubectl prints them.

use rand::Rng;
use serde_json::Value;

/// Alphabet upstream uses for `generateName` suffixes (no vowels, no confusable digits).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `prefix` plus five random characters from the upstream alphabet.
pub fn generate_name(prefix: &str, rng: &mut impl Rng) -> String {
    let mut out = String::with_capacity(prefix.len() + 5);
    out.push_str(prefix);
    for _ in 0..5 {
        out.push(char::from(NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())]));
    }
    out
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds → `2006-01-02T15:04:05Z`.
pub fn format_rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, (secs / 60) % 60, secs % 60)
}

/// Unix seconds and microseconds → `2006-01-02T15:04:05.000000Z` (metav1.MicroTime).
pub fn format_rfc3339_micros(unix: i64, micros: u32) -> String {
    let base = format_rfc3339(unix);
    format!("{}.{micros:06}Z", &base[..base.len() - 1])
}

/// Parses RFC 3339 (`Z` or a `+hh:mm` offset, optional fraction) into Unix seconds.
#[expect(clippy::many_single_char_names, reason = "y/m/d/h/s are the conventional names")]
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b't') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let end = frac.find(|c: char| !c.is_ascii_digit()).unwrap_or(frac.len());
        rest = &frac[end..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh = rest.get(1..3)?.parse::<i64>().ok()?;
            let om = rest.get(4..6)?.parse::<i64>().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    let mo = u32::try_from(mo).ok().filter(|m| (1..=12).contains(m))?;
    let d = u32::try_from(d).ok().filter(|d| (1..=31).contains(d))?;
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset)
}

/// kubectl's `HumanDuration`: `5s`, `3m20s`, `5h`, `2d3h`, `3y`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".to_owned();
    }
    let secs = secs.max(0);
    let minutes = secs / 60;
    let hours = secs / 3600;
    let days = hours / 24;
    let years = days / 365;
    if secs < 120 {
        format!("{secs}s")
    } else if minutes < 10 {
        if secs % 60 == 0 { format!("{minutes}m") } else { format!("{minutes}m{}s", secs % 60) }
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        if minutes % 60 == 0 { format!("{hours}h") } else { format!("{hours}h{}m", minutes % 60) }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        if hours % 24 == 0 { format!("{days}d") } else { format!("{days}d{}h", hours % 24) }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        if days % 365 == 0 { format!("{years}y") } else { format!("{years}y{}d", days % 365) }
    } else {
        format!("{years}y")
    }
}

/// Age of an object from its `metadata.creationTimestamp`, as kubectl prints it.
pub fn age(obj: &Value, now_unix: i64) -> String {
    obj.pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(parse_rfc3339)
        .map_or_else(|| "<unknown>".to_owned(), |t| human_duration(now_unix - t))
}

/// `metadata.name`, or the empty string.
pub fn name(obj: &Value) -> &str {
    obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
}

/// `metadata.namespace`, or the empty string.
pub fn namespace(obj: &Value) -> &str {
    obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        for t in [0, 1_700_000_000, 951_782_400, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t));
        }
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            parse_rfc3339("2024-02-29T12:00:00+01:00"),
            parse_rfc3339("2024-02-29T11:00:00Z")
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T11:00:00.123456Z"),
            parse_rfc3339("2024-02-29T11:00:00Z")
        );
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn human_durations_match_kubectl() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (200, "3m20s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (50 * 3600, "2d2h"),
            (400 * 86_400, "400d"),
            (800 * 86_400, "2y70d"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn generated_names_use_the_upstream_alphabet() {
        let mut rng = rand::rng();
        let n = generate_name("web-", &mut rng);
        assert_eq!(n.len(), 9);
        assert!(n[4..].bytes().all(|b| NAME_ALPHABET.contains(&b)));
    }
}
