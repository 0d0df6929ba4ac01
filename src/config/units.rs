//! The small languages inside config values: durations (`"5m"`), sizes
//! (`"512M"`, `"infinity"`), rates (`"50/1s"`) and octal modes
//! (`"0022"`). Each parser returns a reason a user can act on; the walk
//! (`parse.rs` and the handlers) adds the position.

use std::time::Duration;

/// A token bucket: `count` tokens, refilled `count` per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.count, DurationText(self.per))
    }
}

/// A duration in the largest unit that states it exactly ("1m", "500ms").
pub struct DurationText(pub Duration);

impl std::fmt::Display for DurationText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms >= size && ms % size == 0 {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

/// `"90"` (seconds), `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"`; never zero.
pub fn duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("\"{text}\" is not a duration like \"30s\", \"5m\" or \"500ms\"");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let millis_per: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let millis = n
        .checked_mul(millis_per)
        .filter(|m| *m <= u64::from(u32::MAX) * 1000)
        .ok_or_else(|| format!("\"{text}\" is too long"))?;
    if millis == 0 {
        return Err(format!("\"{text}\" is zero; leave the key out instead"));
    }
    Ok(Duration::from_millis(millis))
}

/// `"COUNT/DURATION"`: `"50/1s"`, `"10/1m"`; both parts non-zero.
pub fn rate(text: &str) -> Result<Rate, String> {
    let (count, per) = text
        .split_once('/')
        .ok_or_else(|| format!("\"{text}\" is not a rate like \"50/1s\" (COUNT/DURATION)"))?;
    let count: u32 = count
        .parse()
        .map_err(|_| format!("\"{text}\": \"{count}\" is not a count"))?;
    if count == 0 {
        return Err(format!(
            "\"{text}\" allows nothing; a service nobody may reach is disabled = true"
        ));
    }
    let per = duration(per).map_err(|e| format!("\"{text}\": {e}"))?;
    Ok(Rate { count, per })
}

/// A resource-limit size: a number, or with a K, M, G or T suffix (powers
/// of 1024), or `"infinity"`. `None` is infinity.
pub fn size(text: &str) -> Result<Option<u64>, String> {
    if text == "infinity" || text == "unlimited" {
        return Ok(None);
    }
    let bad = || format!("\"{text}\" is not a size like \"512M\", \"2G\" or \"infinity\"");
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 10),
        Some((i, 'M')) => (&text[..i], 20),
        Some((i, 'G')) => (&text[..i], 30),
        Some((i, 'T')) => (&text[..i], 40),
        _ => (text, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift)
        .filter(|v| *v < u64::MAX)
        .map(Some)
        .ok_or_else(|| format!("\"{text}\" is too large"))
}

/// An octal mode like `"0022"` or `"660"`, at most `max`.
pub fn octal(text: &str, max: u32) -> Option<u32> {
    if text.is_empty() || text.len() > 5 {
        return None;
    }
    u32::from_str_radix(text, 8).ok().filter(|m| *m <= max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["5x", "", "m", "-1s", "1.5s", " 5s"] {
            assert!(
                duration(bad).unwrap_err().contains("is not a duration"),
                "{bad}"
            );
        }
        assert!(duration("0s").unwrap_err().contains("zero"));
        assert!(duration("99999999999999d")
            .unwrap_err()
            .contains("too long"));
    }

    #[test]
    fn rates() {
        assert_eq!(
            rate("50/1s"),
            Ok(Rate {
                count: 50,
                per: Duration::from_secs(1)
            })
        );
        assert!(rate("0/1s").unwrap_err().contains("allows nothing"));
        assert!(rate("10/0s").unwrap_err().contains("zero"));
        assert!(rate("10").unwrap_err().contains("COUNT/DURATION"));
        assert!(rate("x/1s").unwrap_err().contains("not a count"));
    }

    #[test]
    fn sizes() {
        assert_eq!(size("512M"), Ok(Some(512 << 20)));
        assert_eq!(size("1024"), Ok(Some(1024)));
        assert_eq!(size("4k"), Ok(Some(4096)));
        assert_eq!(size("infinity"), Ok(None));
        assert!(size("99999999999G").unwrap_err().contains("too large"));
        assert!(size("12Q").unwrap_err().contains("not a size"));
        assert!(size("").is_err());
    }

    #[test]
    fn octal_modes() {
        assert_eq!(octal("0022", 0o777), Some(0o22));
        assert_eq!(octal("8", 0o777), None);
        assert_eq!(octal("07777", 0o777), None);
        assert_eq!(octal("", 0o777), None);
    }
}
