//! Finding a byte eight at a time (pure): the file source looks for line ends and the
//! JSON writer for bytes to escape this way (issue 11: a byte-by-byte search cost
//! about 6 instructions per byte).

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// `byte` in every byte of a word.
pub const fn splat(byte: u8) -> u64 {
    ONES * byte as u64
}

/// Flags (high bit) the zero bytes of `w`. The lowest flagged byte is always a true
/// zero: a borrow only flags bytes above one, never below.
#[inline]
pub fn zero_bytes(w: u64) -> u64 {
    w.wrapping_sub(ONES) & !w & HIGHS
}

/// Flags the bytes of `w` below `n` (`n` ≤ 0x80), exact for the lowest as above.
#[inline]
pub fn bytes_below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(splat(n)) & !w & HIGHS
}

/// The index of the first byte of `hay` that `is_match` accepts, read eight bytes at a
/// time: `flags` must flag the lowest matching byte of a little-endian word exactly
/// (and nothing below it), as [`zero_bytes`] and [`bytes_below`] do.
#[inline]
pub fn find(
    hay: &[u8],
    flags: impl Fn(u64) -> u64,
    is_match: impl Fn(u8) -> bool,
) -> Option<usize> {
    let mut words = hay.chunks_exact(8);
    let mut at = 0;
    for w in words.by_ref() {
        let f = flags(u64::from_le_bytes(w.try_into().expect("eight bytes")));
        if f != 0 {
            return Some(at + (f.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&c| is_match(c))
        .map(|i| at + i)
}
