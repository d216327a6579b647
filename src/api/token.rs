//! Page tokens: opaque, tamper-proof keyset cursors. Pure.
//!
//! A token is base64url (no padding) of
//! `version (1) | from_ms | to_ms | last_ts_ms | last_seq (i64 big-endian each) |
//! filters digest (16) | HMAC-SHA256 of all before (32)`, under a key kept in the spool.
//! The window (`from_ms..=to_ms`) is fixed by the first page, so later pages neither
//! move with the clock nor see events that arrive meanwhile above the cursor; the digest
//! binds the token to the query's filters, so it cannot be replayed with other ones.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const DIGEST_LEN: usize = 16;
const BODY_LEN: usize = 1 + 4 * 8 + DIGEST_LEN;
const MAC_LEN: usize = 32;

/// The filters a token is bound to, as the caller asked them (`None` = not given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filters<'a> {
    pub organization_id: &'a str,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub actor_id: Option<&'a str>,
    pub action: Option<&'a str>,
}

impl Filters<'_> {
    /// A digest that changes with any filter (length-prefixed, so no two filter sets
    /// collide by concatenation).
    pub fn digest(&self) -> [u8; DIGEST_LEN] {
        let mut h = Sha256::new();
        let opt_str = |h: &mut Sha256, s: Option<&str>| match s {
            Some(s) => {
                h.update([1]);
                h.update((s.len() as u64).to_be_bytes());
                h.update(s.as_bytes());
            }
            None => h.update([0]),
        };
        let opt_i64 = |h: &mut Sha256, v: Option<i64>| match v {
            Some(v) => {
                h.update([1]);
                h.update(v.to_be_bytes());
            }
            None => h.update([0]),
        };
        opt_str(&mut h, Some(self.organization_id));
        opt_i64(&mut h, self.from_ms);
        opt_i64(&mut h, self.to_ms);
        opt_str(&mut h, self.actor_id);
        opt_str(&mut h, self.action);
        let full = h.finalize();
        let mut out = [0u8; DIGEST_LEN];
        out.copy_from_slice(&full[..DIGEST_LEN]);
        out
    }
}

/// Where the next page starts: the window of the first page, and the last event
/// returned, as `(ts_ms, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub from_ms: i64,
    pub to_ms: i64,
    pub last_ts_ms: i64,
    pub last_seq: i64,
}

/// Why a token was refused (the API answers all of them as invalid_argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a page token from this server")]
    Malformed,
    #[error("not a page token from this server (or altered)")]
    BadSignature,
    #[error("was issued for a query with other filters")]
    OtherFilters,
}

fn mac(key: &[u8], body: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(body);
    m
}

/// The token for the page after `cursor`.
pub fn encode(key: &[u8], filters: &Filters, cursor: &Cursor) -> String {
    let mut buf = Vec::with_capacity(BODY_LEN + MAC_LEN);
    buf.push(VERSION);
    for v in [
        cursor.from_ms,
        cursor.to_ms,
        cursor.last_ts_ms,
        cursor.last_seq,
    ] {
        buf.extend_from_slice(&v.to_be_bytes());
    }
    buf.extend_from_slice(&filters.digest());
    let tag = mac(key, &buf).finalize().into_bytes();
    buf.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(buf)
}

/// Checks a token's signature and that it belongs to `filters`; returns its cursor.
pub fn decode(key: &[u8], filters: &Filters, token: &str) -> Result<Cursor, TokenError> {
    let raw = URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed)?;
    if raw.len() != BODY_LEN + MAC_LEN || raw[0] != VERSION {
        return Err(TokenError::Malformed);
    }
    let (body, tag) = raw.split_at(BODY_LEN);
    // Constant-time comparison.
    mac(key, body)
        .verify_slice(tag)
        .map_err(|_| TokenError::BadSignature)?;
    if body[1 + 32..] != filters.digest() {
        return Err(TokenError::OtherFilters);
    }
    let n = |i: usize| {
        let at = 1 + 8 * i;
        i64::from_be_bytes(body[at..at + 8].try_into().expect("8 bytes"))
    };
    Ok(Cursor {
        from_ms: n(0),
        to_ms: n(1),
        last_ts_ms: n(2),
        last_seq: n(3),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn filters() -> Filters<'static> {
        Filters {
            organization_id: "3d5e4ee2-7e5f-468f-b027-276a65518784",
            from_ms: None,
            to_ms: Some(1_719_235_776_484),
            actor_id: None,
            action: Some("startWorkspace"),
        }
    }

    const CURSOR: Cursor = Cursor {
        from_ms: 1,
        to_ms: 1_719_235_776_484,
        last_ts_ms: 1_719_235_000_000,
        last_seq: 42,
    };

    #[test]
    fn round_trip() {
        let t = encode(KEY, &filters(), &CURSOR);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(decode(KEY, &filters(), &t), Ok(CURSOR));
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let t = encode(KEY, &filters(), &CURSOR);
        let raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for i in 0..raw.len() {
            let mut r = raw.clone();
            r[i] ^= 0x01;
            let forged = URL_SAFE_NO_PAD.encode(&r);
            assert!(decode(KEY, &filters(), &forged).is_err(), "byte {i}");
        }
        assert_eq!(
            decode(b"another key", &filters(), &t),
            Err(TokenError::BadSignature)
        );
        for bad in ["", "!!!", "AAAA", &t[..t.len() - 2]] {
            assert_eq!(decode(KEY, &filters(), bad), Err(TokenError::Malformed));
        }
    }

    #[test]
    fn other_filters_are_refused() {
        let t = encode(KEY, &filters(), &CURSOR);
        let mut f = filters();
        f.action = None;
        assert_eq!(decode(KEY, &f, &t), Err(TokenError::OtherFilters));
        let mut f = filters();
        f.to_ms = None;
        assert_eq!(decode(KEY, &f, &t), Err(TokenError::OtherFilters));
        let mut f = filters();
        f.organization_id = "another";
        assert_eq!(decode(KEY, &f, &t), Err(TokenError::OtherFilters));
        // Moving bytes between fields changes the digest.
        let a = Filters {
            actor_id: Some("ab"),
            action: Some("c"),
            ..filters()
        };
        let b = Filters {
            actor_id: Some("a"),
            action: Some("bc"),
            ..filters()
        };
        assert_ne!(a.digest(), b.digest());
    }
}
