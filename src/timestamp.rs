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
    match OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000) {
        Ok(t) => {
            let (y, mo, d) = (t.year(), t.month() as u8, t.day());
            let (h, mi, s) = (t.hour(), t.minute(), t.second());
            format!(
                "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
                t.millisecond()
            )
        }
        Err(_) => ms.to_string(),
    }
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
}
