//! Writing text as a JSON string, fast (pure).
//!
//! Every forwarded event is a JSON document carried as a string inside the
//! PutLogEvents body, so each of its ~40 quotes is escaped on the way out; the decoder
//! and the query API write strings the same way. serde_json looks at one byte at a
//! time; this looks at eight (the bytes that need an escape are `"`, `\` and the
//! controls below 0x20) and copies the clean runs between them whole. The output is
//! byte for byte serde_json's (`\"`, `\\`, `\b \f \n \r \t`, `\u00xx` for the other
//! controls; DEL and non-ASCII as they are): the tests compare the two.

use crate::scan::{bytes_below, splat, zero_bytes};

#[inline]
fn needs_escape(c: u8) -> bool {
    c == b'"' || c == b'\\' || c < 0x20
}

/// The index of the first byte of `bytes` that a JSON string must escape.
#[inline]
pub fn find_escape(bytes: &[u8]) -> Option<usize> {
    crate::scan::find(
        bytes,
        |w| bytes_below(w, 0x20) | zero_bytes(w ^ splat(b'"')) | zero_bytes(w ^ splat(b'\\')),
        needs_escape,
    )
}

/// Appends `s` to `out` as a JSON string, quotes included.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut rest = bytes;
    while let Some(i) = find_escape(rest) {
        out.extend_from_slice(&rest[..i]);
        push_escape(out, rest[i]);
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

fn push_escape(out: &mut Vec<u8>, c: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match c {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0c => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        _ => {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 0xf)],
            ]);
            return;
        }
    };
    out.extend_from_slice(&[b'\\', short]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ours(s: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, s);
        String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
    }

    #[test]
    fn every_byte_that_needs_an_escape_is_escaped_as_serde_json_does() {
        for c in (0u8..0x80).map(char::from) {
            for s in [
                c.to_string(),
                format!("abcdefg{c}"),
                format!("abcdefgh{c}xyz"),
                format!("{c}{c}0123456789{c}"),
            ] {
                assert_eq!(ours(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
            }
        }
    }

    #[test]
    fn a_document_as_a_message_is_escaped_as_serde_json_does() {
        let doc = r#"{"id":"1ac75456-ae7d-4233-9914-32d124fa35c3","action":"get\"Team\\","args":["x\ny",{"é":"€😀","del":"\u007f"}]}"#;
        assert_eq!(ours(doc), serde_json::to_string(doc).unwrap());
        assert_eq!(ours(""), "\"\"");
    }

    #[test]
    fn the_first_escape_is_found_past_bytes_whose_subtraction_borrows() {
        // 0x00 then a quote in one word: the borrow from the first must not hide or
        // invent anything below it; high bytes (UTF-8) are never taken for controls.
        assert_eq!(find_escape(b"ab\x00\"cdefgh"), Some(2));
        assert_eq!(find_escape("\u{80}\u{9f}\u{a0}ÿ12345678".as_bytes()), None);
        assert_eq!(find_escape(b"12345678\x1f"), Some(8));
        assert_eq!(find_escape(b"1234567 "), None);
    }

    proptest! {
        #[test]
        fn any_string_is_escaped_as_serde_json_does(s in any::<String>()) {
            prop_assert_eq!(ours(&s), serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn any_ascii_with_controls_is_escaped_as_serde_json_does(
            s in proptest::collection::vec(0u8..0x80, 0..64)
        ) {
            let s = String::from_utf8(s).unwrap();
            prop_assert_eq!(ours(&s), serde_json::to_string(&s).unwrap());
            let first = s.bytes().position(needs_escape);
            prop_assert_eq!(find_escape(s.as_bytes()), first);
        }
    }
}
