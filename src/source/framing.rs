//! Framing: turns the bytes of a file into records, one state machine per file.
//!
//! Pure and synchronous: [`Deframer::push`] takes the next bytes read from the file and
//! calls back with each complete record (or each bad one). [`Deframer::resume_point`]
//! says where to start reading again after a restart so that no record is lost or
//! repeated: the first byte of the first record not yet emitted, or a position inside an
//! oversize record together with the instruction to keep skipping it.
//!
//! Layers: bytes → physical lines (`\n`, a trailing `\r` dropped) → records. For `plain`
//! a line is a record. For `cri` (`<time> <stream> <P|F> <text>`) and `docker`
//! (`{"log":"…","stream":…,"time":…}`) a record is the text of partial pieces joined up
//! to the final one. Memory is bounded: no line or record grows past the limit; past it,
//! the first KiB is reported as bad and the rest is skipped.

use crate::config::Framing;
use serde::Deserialize;
use std::borrow::Cow;

/// How many bytes of an oversize record are kept for quarantine.
pub const OVERSIZE_HEAD_BYTES: usize = 1024;
/// Room a `cri`/`docker` physical line may take beyond the record limit (prefix,
/// JSON escaping of a 16 KiB piece).
const FRAME_OVERHEAD: usize = 128 << 10;

/// What to do at the resume offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeMode {
    /// Start of a line; read normally.
    Normal = 0,
    /// Inside an oversize physical line already reported: discard up to its `\n`.
    SkipLine = 1,
    /// At a line boundary inside an oversize partial record already reported: discard
    /// pieces up to and including the final one.
    SkipRecord = 2,
}

impl ResumeMode {
    pub fn from_i64(v: i64) -> ResumeMode {
        match v {
            1 => ResumeMode::SkipLine,
            2 => ResumeMode::SkipRecord,
            _ => ResumeMode::Normal,
        }
    }
}

/// Something the deframer found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete record, starting at `offset` in the file.
    Record { bytes: &'a [u8], offset: u64 },
    /// Bytes that cannot be a record: `raw` is at most the first KiB.
    Bad {
        reason: String,
        raw: &'a [u8],
        offset: u64,
    },
}

/// The per-file framing state machine.
#[derive(Debug)]
pub struct Deframer {
    framing: Framing,
    max_record: usize,
    max_line: usize,
    /// Bytes of the incomplete last line; `buf[0]` is at file offset `buf_start`.
    buf: Vec<u8>,
    buf_start: u64,
    /// Discarding the rest of an oversize physical line (up to its `\n`).
    skip_line: bool,
    /// Text of the partial pieces of the current record (`cri`, `docker`).
    pending: Vec<u8>,
    /// File offset of the first piece of `pending`.
    pending_start: Option<u64>,
    /// Discarding pieces of an oversize record up to its final piece.
    skip_record: bool,
}

impl Deframer {
    /// A deframer that starts at `offset` of a file, in `mode`.
    pub fn new(framing: Framing, max_record: usize, offset: u64, mode: ResumeMode) -> Self {
        let max_line = match framing {
            Framing::Plain => max_record,
            Framing::Cri | Framing::Docker => max_record + FRAME_OVERHEAD,
        };
        Deframer {
            framing,
            max_record,
            max_line,
            buf: Vec::new(),
            buf_start: offset,
            skip_line: mode == ResumeMode::SkipLine,
            pending: Vec::new(),
            pending_start: None,
            skip_record: mode == ResumeMode::SkipRecord,
        }
    }

    /// Where to resume after a restart, given everything emitted so far is stored.
    pub fn resume_point(&self) -> (u64, ResumeMode) {
        let pos_after_buf = self.buf_start + self.buf.len() as u64;
        if self.skip_line {
            (pos_after_buf, ResumeMode::SkipLine)
        } else if self.skip_record {
            (self.buf_start, ResumeMode::SkipRecord)
        } else if let Some(start) = self.pending_start {
            (start, ResumeMode::Normal)
        } else {
            (self.buf_start, ResumeMode::Normal)
        }
    }

    /// File offset just after the last byte pushed.
    pub fn read_offset(&self) -> u64 {
        self.buf_start + self.buf.len() as u64
    }

    /// Bytes held in memory (bounded by the line and record limits).
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.pending.len()
    }

    /// Feeds the next bytes of the file; calls `out` for every record or bad input.
    pub fn push(&mut self, data: &[u8], out: &mut impl FnMut(Frame<'_>)) {
        let mut data = data;
        if self.skip_line {
            match memchr(b'\n', data) {
                Some(i) => {
                    self.skip_line = false;
                    self.buf_start += i as u64 + 1;
                    data = &data[i + 1..];
                }
                None => {
                    self.buf_start += data.len() as u64;
                    return;
                }
            }
        }
        // Lines wholly inside `data` are framed without copying them into `buf`.
        let mut pos = 0;
        if !self.buf.is_empty() {
            match memchr(b'\n', data) {
                Some(i) if self.buf.len() + i <= self.max_line => {
                    self.buf.extend_from_slice(&data[..i]);
                    let line = std::mem::take(&mut self.buf);
                    let start = self.buf_start;
                    self.buf_start += line.len() as u64 + 1;
                    self.frame_line(&line, start, out);
                    self.buf = line;
                    self.buf.clear();
                    pos = i + 1;
                }
                Some(_) | None => {
                    let room = self.max_line - self.buf.len();
                    if data.len() <= room {
                        self.buf.extend_from_slice(data);
                        return;
                    }
                    self.buf.extend_from_slice(&data[..room]);
                    self.oversize_line(out);
                    // Re-enter: the rest of `data` continues the skipped line.
                    return self.push(&data[room..], out);
                }
            }
        }
        while pos < data.len() {
            match memchr(b'\n', &data[pos..]) {
                Some(i) if i <= self.max_line => {
                    let start = self.buf_start;
                    self.buf_start += i as u64 + 1;
                    self.frame_line(&data[pos..pos + i], start, out);
                    pos += i + 1;
                }
                found => {
                    let rest = &data[pos..];
                    let line_len = found.unwrap_or(rest.len());
                    if line_len <= self.max_line {
                        self.buf.extend_from_slice(rest);
                        return;
                    }
                    self.buf.extend_from_slice(&rest[..self.max_line + 1]);
                    self.oversize_line(out);
                    return self.push(&rest[self.max_line + 1..], out);
                }
            }
        }
    }

    /// The buffered line passed the limit: report its head, skip the rest.
    fn oversize_line(&mut self, out: &mut impl FnMut(Frame<'_>)) {
        let start = self.buf_start;
        let head = &self.buf[..self.buf.len().min(OVERSIZE_HEAD_BYTES)];
        out(Frame::Bad {
            reason: format!(
                "line: longer than source.max_line_bytes ({} bytes); first {} bytes kept, the rest skipped",
                self.max_record,
                head.len()
            ),
            raw: head,
            offset: start,
        });
        self.buf_start += self.buf.len() as u64;
        self.buf.clear();
        self.skip_line = true;
        // A partial record cut by a broken line is lost with it.
        self.pending.clear();
        self.pending_start = None;
    }

    fn frame_line(&mut self, line: &[u8], start: u64, out: &mut impl FnMut(Frame<'_>)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match self.framing {
            Framing::Plain => {
                if !line.iter().all(u8::is_ascii_whitespace) {
                    out(Frame::Record {
                        bytes: line,
                        offset: start,
                    })
                }
            }
            Framing::Cri => match parse_cri(line) {
                Some((text, last)) => self.piece(text, last, start, out),
                None => out(bad(
                    "cri: malformed record: expected \"<time> <stdout|stderr> <P|F> <text>\"",
                    line,
                    start,
                )),
            },
            Framing::Docker => match serde_json::from_slice::<DockerLine>(line) {
                Ok(d) => {
                    let (text, last) = match d.log.strip_suffix('\n') {
                        Some(t) => (t.strip_suffix('\r').unwrap_or(t), true),
                        None => (&*d.log, false),
                    };
                    let text = text.as_bytes().to_vec();
                    self.piece(&text, last, start, out)
                }
                Err(e) => out(bad(
                    &format!("docker: not a json-file record: {e}"),
                    line,
                    start,
                )),
            },
        }
    }

    /// One piece of a `cri`/`docker` record; `last` when it ends the record.
    fn piece(&mut self, text: &[u8], last: bool, start: u64, out: &mut impl FnMut(Frame<'_>)) {
        if self.skip_record {
            self.skip_record = !last;
            return;
        }
        if self.pending_start.is_none() {
            if last {
                if !text.iter().all(u8::is_ascii_whitespace) {
                    out(Frame::Record {
                        bytes: text,
                        offset: start,
                    });
                }
                return;
            }
            self.pending_start = Some(start);
        }
        let rec_start = self.pending_start.expect("set above");
        if self.pending.len() + text.len() > self.max_record {
            let mut head = std::mem::take(&mut self.pending);
            head.extend_from_slice(&text[..text.len().min(OVERSIZE_HEAD_BYTES)]);
            head.truncate(OVERSIZE_HEAD_BYTES);
            out(Frame::Bad {
                reason: format!(
                    "record: longer than source.max_line_bytes ({} bytes); first {} bytes kept, the rest skipped",
                    self.max_record,
                    head.len()
                ),
                raw: &head,
                offset: rec_start,
            });
            self.pending_start = None;
            self.skip_record = !last;
            return;
        }
        self.pending.extend_from_slice(text);
        if last {
            let rec = std::mem::take(&mut self.pending);
            self.pending_start = None;
            out(Frame::Record {
                bytes: &rec,
                offset: rec_start,
            });
            self.pending = rec;
            self.pending.clear();
        }
    }
}

fn bad<'a>(reason: &str, raw: &'a [u8], offset: u64) -> Frame<'a> {
    Frame::Bad {
        reason: reason.to_string(),
        raw: &raw[..raw.len().min(OVERSIZE_HEAD_BYTES * 4)],
        offset,
    }
}

#[derive(Deserialize)]
struct DockerLine<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
}

/// Splits a CRI line into its text and whether it is the final piece.
fn parse_cri(line: &[u8]) -> Option<(&[u8], bool)> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(b"");
    if time.is_empty() || !(stream == b"stdout" || stream == b"stderr") {
        return None;
    }
    // Tags are `P` or `F`, possibly followed by `:`-separated flags.
    match tag.split(|b| *b == b':').next()? {
        b"P" => Some((text, false)),
        b"F" => Some((text, true)),
        _ => None,
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|b| *b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Out {
        Rec(Vec<u8>, u64),
        Bad(String, usize, u64),
    }

    fn run(d: &mut Deframer, chunks: &[&[u8]]) -> Vec<Out> {
        let mut v = Vec::new();
        for c in chunks {
            d.push(c, &mut |f| {
                v.push(match f {
                    Frame::Record { bytes, offset } => Out::Rec(bytes.to_vec(), offset),
                    Frame::Bad {
                        reason,
                        raw,
                        offset,
                    } => Out::Bad(
                        reason.split(':').next().unwrap().to_string(),
                        raw.len(),
                        offset,
                    ),
                })
            });
        }
        v
    }

    fn all(framing: Framing, max: usize, input: &[u8]) -> Vec<Out> {
        run(
            &mut Deframer::new(framing, max, 0, ResumeMode::Normal),
            &[input],
        )
    }

    #[test]
    fn plain_lines_and_incomplete_tail() {
        let mut d = Deframer::new(Framing::Plain, 100, 0, ResumeMode::Normal);
        let out = run(&mut d, &[b"{\"a\":1}\r\n{\"b\"", b":2}\n\n{\"c\":3}"]);
        assert_eq!(
            out,
            vec![
                Out::Rec(b"{\"a\":1}".to_vec(), 0),
                Out::Rec(b"{\"b\":2}".to_vec(), 9)
            ]
        );
        // The last line has no newline yet: not consumed.
        assert_eq!(d.resume_point(), (18, ResumeMode::Normal));
        assert_eq!(
            run(&mut d, &[b"\n"]),
            vec![Out::Rec(b"{\"c\":3}".to_vec(), 18)]
        );
        assert_eq!(d.resume_point(), (26, ResumeMode::Normal));
    }

    #[test]
    fn oversize_line_is_reported_once_and_skipped() {
        let mut input = b"ok1\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 5000));
        input.extend(b"\nok2\n");
        for chunk in [1, 7, 100, 4096, 10_000] {
            let mut d = Deframer::new(Framing::Plain, 1500, 0, ResumeMode::Normal);
            let chunks: Vec<&[u8]> = input.chunks(chunk).collect();
            let out = run(&mut d, &chunks);
            assert_eq!(
                out,
                vec![
                    Out::Rec(b"ok1".to_vec(), 0),
                    Out::Bad("line".into(), 1024, 4),
                    Out::Rec(b"ok2".to_vec(), 5005),
                ],
                "chunk {chunk}"
            );
            assert!(d.buffered() <= 1501);
        }
    }

    #[test]
    fn cri_partial_pieces_join_up_to_the_final_one() {
        let input = b"2024-01-01T00:00:00.1Z stdout P {\"a\":\n2024-01-01T00:00:00.2Z stdout P 1,\"b\"\n2024-01-01T00:00:00.3Z stdout F :2}\n2024-01-01T00:00:00.4Z stderr F {}\nbroken\n";
        let at = |needle: &str| {
            let n = needle.as_bytes();
            input.windows(n.len()).position(|w| w == n).unwrap() as u64
        };
        assert_eq!(
            all(Framing::Cri, 100, input),
            vec![
                Out::Rec(b"{\"a\":1,\"b\":2}".to_vec(), 0),
                Out::Rec(b"{}".to_vec(), at("2024-01-01T00:00:00.4Z")),
                Out::Bad("cri".into(), 6, at("broken")),
            ]
        );
        let mut d = Deframer::new(Framing::Cri, 100, 0, ResumeMode::Normal);
        run(&mut d, &[&input[..76]]);
        // Mid-record: resume re-reads from the first piece.
        assert_eq!(d.resume_point(), (0, ResumeMode::Normal));
    }

    #[test]
    fn oversize_cri_record_is_skipped_up_to_its_final_piece() {
        let piece = format!("t stdout P {}\n", "y".repeat(600));
        let mut input = piece.repeat(3).into_bytes();
        input.extend(b"t stdout F end\nt stdout F {}\n");
        let mut d = Deframer::new(Framing::Cri, 1000, 0, ResumeMode::Normal);
        let out = run(&mut d, &[&input[..piece.len() * 2 + 3]]);
        assert_eq!(out, vec![Out::Bad("record".into(), 1024, 0)]);
        let (off, mode) = d.resume_point();
        assert_eq!(
            (off, mode),
            (piece.len() as u64 * 2, ResumeMode::SkipRecord)
        );
        // A restart at the resume point skips the rest of the record too.
        let mut d2 = Deframer::new(Framing::Cri, 1000, off, mode);
        let out = run(&mut d2, &[&input[off as usize..]]);
        let last = (input.len() - "t stdout F {}\n".len()) as u64;
        assert_eq!(out, vec![Out::Rec(b"{}".to_vec(), last)]);
    }

    #[test]
    fn docker_lines_unescape_and_join() {
        let input = b"{\"log\":\"{\\\"a\\\":\",\"stream\":\"stdout\",\"time\":\"t\"}\n{\"log\":\"1}\\n\",\"stream\":\"stdout\",\"time\":\"t\"}\nnot json\n";
        let out = all(Framing::Docker, 100, input);
        assert_eq!(out[0], Out::Rec(b"{\"a\":1}".to_vec(), 0));
        let bad_at = input.windows(8).position(|w| w == b"not json").unwrap() as u64;
        assert_eq!(out[1], Out::Bad("docker".into(), 8, bad_at));
    }

    /// A CRI stream of `records`, each cut into pieces at the given sizes.
    fn cri_stream(records: &[(String, Vec<usize>)]) -> Vec<u8> {
        let mut s = Vec::new();
        for (rec, cuts) in records {
            let mut rest = rec.as_str();
            for c in cuts {
                let c = (*c).min(rest.len());
                if c == rest.len() {
                    break;
                }
                s.extend(format!("2024-01-01T00:00:00Z stdout P {}\n", &rest[..c]).bytes());
                rest = &rest[c..];
            }
            s.extend(format!("2024-01-01T00:00:00Z stdout F {rest}\n").bytes());
        }
        s
    }

    proptest! {
        /// However the bytes arrive, and wherever the reader restarts from its resume
        /// point, every record comes out exactly once and in order.
        #[test]
        fn chunking_and_restarts_neither_lose_nor_repeat(
            records in proptest::collection::vec(("[a-z{}\":,]{1,60}", proptest::collection::vec(1usize..30, 0..4)), 1..30),
            chunk_sizes in proptest::collection::vec(1usize..200, 1..50),
            restart_at in proptest::collection::vec(any::<bool>(), 50),
            framing_cri in any::<bool>(),
        ) {
            let (framing, input) = if framing_cri {
                (Framing::Cri, cri_stream(&records))
            } else {
                let s: String = records.iter().map(|(r, _)| format!("{r}\n")).collect();
                (Framing::Plain, s.into_bytes())
            };
            let expected: Vec<Vec<u8>> = records.iter().map(|(r, _)| r.as_bytes().to_vec()).collect();
            let mut got = Vec::new();
            let mut d = Deframer::new(framing, 1000, 0, ResumeMode::Normal);
            let mut pos = 0usize;
            let mut last_restart = 0u64;
            let mut i = 0;
            while pos < input.len() {
                let n = chunk_sizes[i % chunk_sizes.len()].min(input.len() - pos);
                for o in run(&mut d, &[&input[pos..pos + n]]) {
                    match o { Out::Rec(b, _) => got.push(b), other => prop_assert!(false, "{:?}", other) }
                }
                pos += n;
                // Restart only past the last restart point, so the walk always advances.
                let (off, mode) = d.resume_point();
                if restart_at[i % restart_at.len()] && off > last_restart {
                    d = Deframer::new(framing, 1000, off, mode);
                    pos = off as usize;
                    last_restart = off;
                }
                i += 1;
            }
            prop_assert_eq!(got, expected);
        }
    }
}
