//! Timestamps as the relay writes and reads them: RFC 3339 text and UTC milliseconds
//! since the Unix epoch (pure). Shared by the event model, the chain's checkpoints, the
//! query API and the CLI.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Parses an RFC 3339 timestamp into UTC milliseconds since the epoch.
pub fn parse_timestamp_ms(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

/// Formats UTC milliseconds as RFC 3339 with milliseconds and `Z`.
pub fn format_timestamp_ms(ms: i64) -> String {
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000) else {
        return ms.to_string();
    };
    let (y, mo, d) = (t.year(), t.month() as u8, t.day());
    let (h, mi, s, milli) = (t.hour(), t.minute(), t.second(), t.millisecond());
    if !(0..=9999).contains(&y) {
        return format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z");
    }
    // The API formats one of these per event it returns: digits written in place, not
    // through the formatting machinery (a tenth of the instructions).
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y as u32);
    put(5, 2, mo.into());
    put(8, 2, d.into());
    put(11, 2, h.into());
    put(14, 2, mi.into());
    put(17, 2, s.into());
    put(20, 3, milli.into());
    String::from_utf8_lossy(&b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_with_offsets_normalize_to_utc() {
        assert_eq!(
            parse_timestamp_ms("2024-06-24T15:29:36.484+02:00"),
            Some(1_719_235_776_484)
        );
        assert_eq!(
            format_timestamp_ms(1_719_235_776_484),
            "2024-06-24T13:29:36.484Z"
        );
        assert_eq!(parse_timestamp_ms("2024-06-24"), None);
    }

    #[test]
    fn formatting_pads_every_field_and_matches_the_formatting_machinery() {
        let reference =
            |ms: i64| match OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000) {
                Ok(t) => format!(
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                    t.year(),
                    t.month() as u8,
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second(),
                    t.millisecond()
                ),
                Err(_) => ms.to_string(),
            };
        assert_eq!(format_timestamp_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_timestamp_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            format_timestamp_ms(253_402_300_799_999),
            "9999-12-31T23:59:59.999Z"
        );
        let mut edges = vec![
            i64::MIN,
            i64::MAX,
            253_402_300_800_000,
            -62_135_596_800_001,
            -62_167_219_200_000,
            1_719_235_776_484,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            edges.push((x % 600_000_000_000_000) as i64 - 300_000_000_000_000);
        }
        for ms in edges {
            let text = format_timestamp_ms(ms);
            assert_eq!(text, reference(ms), "{ms}");
            if text.ends_with('Z') && !text.starts_with('-') {
                assert_eq!(parse_timestamp_ms(&text), Some(ms), "{text}");
            }
        }
    }
}
