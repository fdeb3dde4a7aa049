//! Durations in documents: `"90s"`, `"30m"`, `"4h"`, `"2d"`, `"1w"`, combinations such as
//! `"1h30m"`, or a plain integer number of seconds.

use std::time::Duration;

use serde::{de, Deserializer, Serializer};

/// Parses a duration written as `"1h30m"`, `"45s"`, `"2d"` (units `s`, `m`, `h`, `d`, `w`).
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => {
                return Err(format!(
                    "unknown unit `{c}` in duration `{t}` (use s, m, h, d, w)"
                ))
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("missing number before `{c}` in duration `{t}`"))?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration `{t}` is too long"))?;
    }
    if !digits.is_empty() {
        return Err(format!(
            "missing unit after `{digits}` in duration `{t}` (use s, m, h, d, w)"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// Formats whole seconds compactly (`5400` seconds as `1h30m`).
pub(crate) fn format(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, name) in [(86_400, 'd'), (3_600, 'h'), (60, 'm'), (1, 's')] {
        if s >= unit {
            out.push_str(&(s / unit).to_string());
            out.push(name);
            s %= unit;
        }
    }
    out
}

struct Visitor;

impl de::Visitor<'_> for Visitor {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a duration such as \"30m\", \"4h\", \"1h30m\" or a number of seconds")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_secs)
            .map_err(|_| E::custom(format!("negative duration `{v}`")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(E::custom)
    }
}

/// `#[serde(with = "crate::duration::serde_duration")]`.
pub(crate) mod serde_duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(Visitor)
    }
}

/// `#[serde(with = "crate::duration::serde_opt_duration")]`.
pub(crate) mod serde_opt_duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&format(*d)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        d.deserialize_any(Visitor).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let cases = [
            ("90s", 90),
            ("30m", 1_800),
            ("4h", 14_400),
            ("1h30m", 5_400),
            ("2d", 172_800),
            ("1w", 604_800),
        ];
        for (text, secs) in cases {
            assert_eq!(parse(text), Ok(Duration::from_secs(secs)), "{text}");
            assert_eq!(
                parse(&format(Duration::from_secs(secs))),
                Ok(Duration::from_secs(secs))
            );
        }
        for bad in ["", "h", "10", "5x", "99999999999999999999d"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(format(Duration::from_secs(5_400)), "1h30m");
    }
}
