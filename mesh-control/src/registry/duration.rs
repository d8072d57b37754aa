//! Duration strings as Istio (`5s`, `0.5s`) and the Gateway API (`1h30m`, `500ms`) write them.

use std::time::Duration;

/// The longest duration accepted: protobuf's `Duration` range (about 10,000 years), which is
/// what Istio's own validation allows.
pub const MAX_DURATION: Duration = Duration::from_secs(315_576_000_000);

/// Parses a sequence of `<number><unit>` terms, units `h`, `m`, `s`, `ms`; Istio allows a
/// fraction (`0.25s`). Returns a message suitable for a diagnostic on failure; never panics,
/// whatever the numbers (the sum is checked, and capped at [`MAX_DURATION`]).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_string());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {text:?} has a number without a unit"))?;
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("duration {text:?} has a bad number {number:?}"))?;
        let seconds = match unit {
            "h" => value * 3600.0,
            "m" => value * 60.0,
            "s" => value,
            "ms" => value / 1000.0,
            _ => {
                return Err(format!(
                    "duration {text:?} has unknown unit {unit:?} (h, m, s, ms)"
                ))
            }
        };
        let out_of_range = || format!("duration {text:?} is longer than {MAX_DURATION:?}");
        let term = Duration::try_from_secs_f64(seconds).map_err(|_| out_of_range())?;
        total = total
            .checked_add(term)
            .filter(|sum| *sum <= MAX_DURATION)
            .ok_or_else(out_of_range)?;
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_and_gateway_api_forms() {
        let ok = [
            ("5s", 5_000),
            ("0.5s", 500),
            ("250ms", 250),
            ("1h30m", 5_400_000),
            ("2m", 120_000),
            ("1m0.5s", 60_500),
        ];
        for (text, millis) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(millis)),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_garbage_with_the_value() {
        for text in ["", "5", "5 sec", "s", "1.2.3s", "-1s"] {
            let err = parse_duration(text).expect_err(text);
            assert!(!err.is_empty());
        }
        assert!(parse_duration("3d").unwrap_err().contains("\"d\""));
    }

    #[test]
    fn huge_numbers_are_errors_not_panics() {
        let max = u64::MAX;
        for text in [
            format!("{max}s{max}s"),
            format!("{max}h"),
            format!("{}s", "9".repeat(400)),
            "315576000001s".to_string(),
            "87660000h1s".to_string(),
        ] {
            let error = parse_duration(&text).expect_err(&text);
            assert!(error.contains("longer than"), "{text}: {error}");
        }
        assert_eq!(parse_duration("315576000000s"), Ok(MAX_DURATION));
    }
}
