//! Units of the ledger (spec §2): UTC instants in milliseconds, calendar
//! months, and exact rounding of rationals.
//!
//! Everything here is pure integer arithmetic: no floats, no clock, no
//! locale. Instants are milliseconds since the Unix epoch (`i64`); months are
//! counted from year 0 (`year * 12 + month - 1`) so that they order and
//! subtract like integers.

/// Milliseconds since 1970-01-01T00:00:00Z.
pub type Millis = i64;

pub const SECOND_MS: Millis = 1_000;
pub const MINUTE_MS: Millis = 60 * SECOND_MS;
pub const HOUR_MS: Millis = 60 * MINUTE_MS;
pub const DAY_MS: Millis = 24 * HOUR_MS;

/// Days since the epoch of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Inverse of [`days_from_civil`]: (year, month 1..=12, day 1..=31).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

fn digits(bytes: &[u8]) -> Option<u32> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    bytes.iter().try_fold(0u32, |acc, b| acc.checked_mul(10)?.checked_add(u32::from(b - b'0')))
}

/// Parses an RFC 3339 date-time (`2024-03-01T12:00:00.123456+02:00`).
///
/// Digits below the millisecond are truncated, offsets are applied, and a
/// leap second (`:60`) is refused: the ledger's instants are POSIX instants.
pub fn parse_rfc3339(text: &str) -> Option<Millis> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 {
        return None;
    }
    let (date, rest) = bytes.split_at(10);
    if date[4] != b'-' || date[7] != b'-' || !matches!(rest[0], b'T' | b't' | b' ') {
        return None;
    }
    let year = i64::from(digits(&date[0..4])?);
    let month = digits(&date[5..7])?;
    let day = digits(&date[8..10])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let time = &rest[1..];
    if time.len() < 9 || time[2] != b':' || time[5] != b':' {
        return None;
    }
    let hour = digits(&time[0..2])?;
    let minute = digits(&time[3..5])?;
    let second = digits(&time[6..8])?;
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &time[8..];
    let mut millis = 0i64;
    if rest.first() == Some(&b'.') {
        let fraction_len = rest[1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if fraction_len == 0 {
            return None;
        }
        for position in 0..3 {
            let digit = if position < fraction_len { i64::from(rest[1 + position] - b'0') } else { 0 };
            millis = millis * 10 + digit;
        }
        rest = &rest[1 + fraction_len..];
    }
    let offset_minutes: i64 = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = i64::from(digits(&[*h1, *h2])?);
            let minutes = i64::from(digits(&[*m1, *m2])?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let magnitude = hours * 60 + minutes;
            if *sign == b'+' {
                magnitude
            } else {
                -magnitude
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let local = days * DAY_MS
        + i64::from(hour) * HOUR_MS
        + i64::from(minute) * MINUTE_MS
        + i64::from(second) * SECOND_MS
        + millis;
    Some(local - offset_minutes * MINUTE_MS)
}

/// Formats an instant as `YYYY-MM-DDTHH:MM:SS.mmmZ` (spec §2).
pub fn format_millis(instant: Millis) -> String {
    let mut buffer = [0u8; 24];
    match format_millis_into(instant, &mut buffer) {
        Some(text) => text.to_owned(),
        None => {
            let days = instant.div_euclid(DAY_MS);
            let in_day = instant.rem_euclid(DAY_MS);
            let (year, month, day) = civil_from_days(days);
            format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
                in_day / HOUR_MS,
                in_day % HOUR_MS / MINUTE_MS,
                in_day % MINUTE_MS / SECOND_MS,
                in_day % SECOND_MS
            )
        }
    }
}

/// Writes the 24-byte form into `buffer` without allocating; `None` for
/// years outside 0000–9999 (then [`format_millis`] falls back to `format!`).
/// Output records format several instants each, so this is on the hot path.
pub fn format_millis_into(instant: Millis, buffer: &mut [u8; 24]) -> Option<&str> {
    let days = instant.div_euclid(DAY_MS);
    let in_day = instant.rem_euclid(DAY_MS);
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut put = |at: usize, value: i64, width: usize| {
        let mut value = value;
        for position in (at..at + width).rev() {
            buffer[position] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year, 4);
    put(5, i64::from(month), 2);
    put(8, i64::from(day), 2);
    put(11, in_day / HOUR_MS, 2);
    put(14, in_day % HOUR_MS / MINUTE_MS, 2);
    put(17, in_day % MINUTE_MS / SECOND_MS, 2);
    put(20, in_day % SECOND_MS, 3);
    buffer[4] = b'-';
    buffer[7] = b'-';
    buffer[10] = b'T';
    buffer[13] = b':';
    buffer[16] = b':';
    buffer[19] = b'.';
    buffer[23] = b'Z';
    Some(std::str::from_utf8(buffer).expect("ASCII digits and separators"))
}

/// A calendar month in UTC, counted from year 0: `year * 12 + (month - 1)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month(pub i64);

impl Month {
    pub fn of(instant: Millis) -> Month {
        let (year, month, _) = civil_from_days(instant.div_euclid(DAY_MS));
        Month(year * 12 + i64::from(month) - 1)
    }

    /// The first instant of the month.
    pub fn start(self) -> Millis {
        let year = self.0.div_euclid(12);
        let month = self.0.rem_euclid(12) as u32 + 1;
        days_from_civil(year, month, 1) * DAY_MS
    }

    pub fn next(self) -> Month {
        Month(self.0 + 1)
    }

    /// Parses `YYYY-MM`.
    pub fn parse(text: &str) -> Option<Month> {
        let bytes = text.as_bytes();
        if bytes.len() != 7 || bytes[4] != b'-' {
            return None;
        }
        let year = i64::from(digits(&bytes[0..4])?);
        let month = i64::from(digits(&bytes[5..7])?);
        (1..=12).contains(&month).then_some(Month(year * 12 + month - 1))
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{:04}-{:02}", self.0.div_euclid(12), self.0.rem_euclid(12) + 1)
    }
}

impl serde::Serialize for Month {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Month {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Month::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("not a month (YYYY-MM): {text:?}")))
    }
}

/// An instant that serializes as `YYYY-MM-DDTHH:MM:SS.mmmZ` (output records).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts(pub Millis);

impl serde::Serialize for Ts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buffer = [0u8; 24];
        match format_millis_into(self.0, &mut buffer) {
            Some(text) => serializer.serialize_str(text),
            None => serializer.serialize_str(&format_millis(self.0)),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Ts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        parse_rfc3339(&text).map(Ts).ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {text:?}")))
    }
}

/// `round(numerator / denominator)`, half to even, of the exact rational
/// (spec §2). The denominator must be positive.
pub fn round_half_even(numerator: i128, denominator: i128) -> i128 {
    debug_assert!(denominator > 0, "rounding needs a positive denominator");
    let quotient = numerator.div_euclid(denominator);
    let remainder = numerator.rem_euclid(denominator);
    // remainder in [0, denominator): compare 2 * remainder with denominator
    // without overflow.
    let twice = remainder.checked_mul(2);
    match twice.map(|twice| twice.cmp(&denominator)) {
        Some(std::cmp::Ordering::Less) => quotient,
        Some(std::cmp::Ordering::Greater) | None => quotient + 1,
        Some(std::cmp::Ordering::Equal) => {
            if quotient % 2 == 0 {
                quotient
            } else {
                quotient + 1
            }
        }
    }
}

/// `round(a * b / c)` computed exactly in 128 bits; `None` when the product
/// does not fit (never for 64-bit factors).
pub fn mul_div_round(a: i128, b: i128, c: i128) -> Option<i128> {
    Some(round_half_even(a.checked_mul(b)?, c))
}

/// Lowercase hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 15)] as char);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_instants() {
        let instant = parse_rfc3339("2024-02-29T23:59:59.999Z").unwrap();
        assert_eq!(format_millis(instant), "2024-02-29T23:59:59.999Z");
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.999Z"), Some(-1));
        assert_eq!(format_millis(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_millis(parse_rfc3339("9999-12-31T23:59:59.999Z").unwrap() + 1), "10000-01-01T00:00:00.000Z");
        assert_eq!(format_millis(-62_167_219_200_001), "-001-12-31T23:59:59.999Z");
    }

    #[test]
    fn applies_offsets_and_truncates_below_the_millisecond() {
        assert_eq!(parse_rfc3339("2024-03-01T02:00:00.1239+02:00"), parse_rfc3339("2024-03-01T00:00:00.123Z"));
        assert_eq!(parse_rfc3339("2024-03-01T00:00:00.5-00:30"), parse_rfc3339("2024-03-01T00:30:00.500Z"));
    }

    #[test]
    fn refuses_leap_seconds_and_malformed_times() {
        for bad in [
            "2016-12-31T23:59:60Z",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00+24:00",
            "2024-1-01T00:00:00Z",
            "",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn months_order_and_start() {
        let month = Month::of(parse_rfc3339("2024-12-31T23:59:59.999Z").unwrap());
        assert_eq!(month.to_string(), "2024-12");
        assert_eq!(format_millis(month.next().start()), "2025-01-01T00:00:00.000Z");
        assert_eq!(Month::parse("2025-01"), Some(month.next()));
        assert_eq!(Month::parse("2025-13"), None);
    }

    #[test]
    fn rounds_half_to_even() {
        assert_eq!(round_half_even(5, 2), 2);
        assert_eq!(round_half_even(7, 2), 4);
        assert_eq!(round_half_even(-5, 2), -2);
        assert_eq!(round_half_even(-7, 2), -4);
        assert_eq!(round_half_even(10, 3), 3);
        assert_eq!(round_half_even(11, 3), 4);
        assert_eq!(round_half_even(0, 7), 0);
    }
}
