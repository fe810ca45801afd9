//! Durations in the syntax of Mesos flags and environment variables (stout's `Duration`):
//! a decimal number followed by a unit, `ns us ms secs mins hrs days weeks`.
use crate::ExecutorError;
use std::time::Duration;

const NANOS_PER_UNIT: &[(&[&str], f64)] = &[
    (&["ns", "nanosecond", "nanoseconds"], 1.0),
    (&["us", "µs", "microsecond", "microseconds"], 1e3),
    (&["ms", "millisecond", "milliseconds"], 1e6),
    (&["secs", "sec", "s", "second", "seconds"], 1e9),
    (&["mins", "min", "m", "minute", "minutes"], 60e9),
    (&["hrs", "hr", "h", "hour", "hours"], 3600e9),
    (&["days", "day", "d"], 86_400e9),
    (&["weeks", "week", "w"], 604_800e9),
];

/// Parses a Mesos duration such as `"5secs"`, `"3.5secs"`, `"100ms"` or `"2mins"`.
///
/// The unit is required. Besides stout's spellings (`ns us ms secs mins hrs days weeks`)
/// the singular and short forms (`sec`, `s`, `min`, `m`, `hr`, `h`, `day`, `d`, `week`,
/// `w`) are accepted; whitespace between number and unit is allowed. Negative, non-finite
/// and out-of-range values are errors.
pub fn parse_mesos_duration(s: &str) -> Result<Duration, ExecutorError> {
    let bad = |why: &str| ExecutorError::Duration { input: s.to_string(), why: why.to_string() };
    let text = s.trim();
    let split = text
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
        .map_or(text.len(), |(i, _)| i);
    let (number, unit) = text.split_at(split);
    let unit = unit.trim();
    if number.is_empty() {
        return Err(bad("expected a number followed by a unit (ns, us, ms, secs, mins, hrs, days, weeks)"));
    }
    if unit.is_empty() {
        return Err(bad("missing unit (ns, us, ms, secs, mins, hrs, days, weeks)"));
    }
    let value: f64 = number.parse().map_err(|_| bad("not a number"))?;
    if value.is_sign_negative() && value != 0.0 {
        return Err(bad("durations cannot be negative"));
    }
    let per_unit = NANOS_PER_UNIT
        .iter()
        .find(|(names, _)| names.contains(&unit))
        .map(|&(_, n)| n)
        .ok_or_else(|| bad("unknown unit (expected ns, us, ms, secs, mins, hrs, days, weeks)"))?;
    let nanos = value * per_unit;
    if !nanos.is_finite() || nanos >= u64::MAX as f64 {
        return Err(bad("out of range"));
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

/// Formats a duration the way stout prints one: the largest unit that the duration
/// reaches, with a decimal fraction when needed (`"300ms"`, `"1.5secs"`, `"2mins"`).
pub fn format_mesos_duration(d: Duration) -> String {
    let nanos = d.as_nanos() as f64;
    let units: [(&str, f64); 8] = [
        ("weeks", 604_800e9),
        ("days", 86_400e9),
        ("hrs", 3600e9),
        ("mins", 60e9),
        ("secs", 1e9),
        ("ms", 1e6),
        ("us", 1e3),
        ("ns", 1.0),
    ];
    for (name, per) in units {
        if nanos >= per {
            let v = (nanos / per * 1000.0).round() / 1000.0;
            return format!("{v}{name}");
        }
    }
    "0ns".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        parse_mesos_duration(s).expect("valid duration")
    }

    #[test]
    fn parses_stout_units() {
        assert_eq!(ok("5secs"), Duration::from_secs(5));
        assert_eq!(ok("3.5secs"), Duration::from_millis(3500));
        assert_eq!(ok("100ms"), Duration::from_millis(100));
        assert_eq!(ok("2mins"), Duration::from_secs(120));
        assert_eq!(ok("15mins"), Duration::from_secs(900));
        assert_eq!(ok("1hrs"), Duration::from_secs(3600));
        assert_eq!(ok("2days"), Duration::from_secs(2 * 86_400));
        assert_eq!(ok("1weeks"), Duration::from_secs(604_800));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("0secs"), Duration::ZERO);
    }

    #[test]
    fn accepts_short_forms_and_spaces() {
        assert_eq!(ok(" 5 secs "), Duration::from_secs(5));
        assert_eq!(ok("5s"), Duration::from_secs(5));
        assert_eq!(ok("1sec"), Duration::from_secs(1));
        assert_eq!(ok("2min"), Duration::from_secs(120));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok(".5secs"), Duration::from_millis(500));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "5", "secs", "-1secs", "5parsecs", "1.2.3secs", "abc", "1e400weeks", "NaNsecs"] {
            let err = parse_mesos_duration(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn formats_like_stout() {
        assert_eq!(format_mesos_duration(Duration::from_millis(300)), "300ms");
        assert_eq!(format_mesos_duration(Duration::from_millis(1500)), "1.5secs");
        assert_eq!(format_mesos_duration(Duration::from_secs(120)), "2mins");
        assert_eq!(format_mesos_duration(Duration::ZERO), "0ns");
        assert_eq!(ok(&format_mesos_duration(Duration::from_millis(2500))), Duration::from_millis(2500));
    }
}
