//! Framing: turns the bytes of a file into records, one state machine per file.
//!
//! Pure and synchronous: [`Deframer::push`] takes the next bytes read from the file and
//! calls back with each complete record (or each bad one). [`Deframer::resume_point`]
//! says where to start reading again after a restart so that no record is lost or
//! repeated: the first byte of the first record not yet emitted (or a position inside
//! an oversize line with the instruction to keep skipping it), and up to where records
//! were already emitted and must not be emitted again while re-reading.
//!
//! Layers: bytes → physical lines (`\n`, a trailing `\r` dropped) → records. For `plain`
//! a line is a record. For `cri` (`<time> <stream> <P|F> <text>`) and `docker`
//! (`{"log":"…","stream":…,"time":…}`) a record is the text of partial pieces joined up
//! to the final one; the two streams (stdout, stderr) of one file are joined
//! separately, since a runtime may interleave their pieces. Memory is bounded: no line or record grows past the limit; past it,
//! the first KiB is reported as bad and the rest is skipped.

use crate::config::Framing;
use serde::Deserialize;
use std::borrow::Cow;

/// The quarantine reason of what a rotation (or truncation) cut off: an unterminated
/// last line, or a record without its final piece.
pub const TRUNCATED_BY_ROTATION: &str = "truncated_by_rotation";
/// How many bytes of what a rotation cut off are kept for quarantine.
const TRUNCATED_RAW_BYTES: usize = 4 * OVERSIZE_HEAD_BYTES;
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
}

impl ResumeMode {
    pub fn from_i64(v: i64) -> ResumeMode {
        match v {
            1 => ResumeMode::SkipLine,
            _ => ResumeMode::Normal,
        }
    }
}

/// Where and how reading of a file resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub offset: u64,
    pub mode: ResumeMode,
    /// Records (and bad input) found on lines starting before this offset were already
    /// emitted: when re-reading from `offset` to rebuild a partial record, they are
    /// consumed silently. Equal to `offset` when nothing is re-read.
    pub replay_until: u64,
}

impl Resume {
    /// Reading starts fresh at `offset`.
    pub fn at(offset: u64) -> Resume {
        Resume {
            offset,
            mode: ResumeMode::Normal,
            replay_until: offset,
        }
    }
}

/// The partial record of one stream (`cri`, `docker`).
#[derive(Debug, Default)]
struct Partial {
    text: Vec<u8>,
    /// File offset of its first piece; set while pending or skipping.
    start: Option<u64>,
    /// Oversize and already reported: discard pieces up to the final one.
    skipping: bool,
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
    /// Partial records of stdout (0) and stderr (1).
    partial: [Partial; 2],
    /// See [`Resume::replay_until`].
    replay_until: u64,
}

impl Deframer {
    /// A deframer that resumes a file at `resume`.
    pub fn new(framing: Framing, max_record: usize, resume: Resume) -> Self {
        let max_line = match framing {
            Framing::Plain => max_record,
            Framing::Cri | Framing::Docker => max_record + FRAME_OVERHEAD,
        };
        Deframer {
            framing,
            max_record,
            max_line,
            buf: Vec::new(),
            buf_start: resume.offset,
            skip_line: resume.mode == ResumeMode::SkipLine,
            partial: Default::default(),
            replay_until: resume.replay_until.max(resume.offset),
        }
    }

    /// Where to resume after a restart, given everything emitted so far is stored.
    /// A partial record (pending, or oversize and being skipped) is read again from its
    /// first piece, so that it is rebuilt or recognized again.
    pub fn resume_point(&self) -> Resume {
        let first_partial = self.partial.iter().filter_map(|p| p.start).min();
        if self.skip_line {
            return match first_partial {
                // The other stream's record is still open: re-read from its first piece;
                // the oversize line (before `replay_until`) is skipped again silently.
                Some(start) => Resume {
                    offset: start,
                    mode: ResumeMode::Normal,
                    replay_until: self.replay_until.max(self.read_offset()),
                },
                None => Resume {
                    mode: ResumeMode::SkipLine,
                    ..Resume::at(self.read_offset())
                },
            };
        }
        let replay_until = self.replay_until.max(self.buf_start);
        match first_partial {
            Some(start) => Resume {
                offset: start,
                mode: ResumeMode::Normal,
                replay_until,
            },
            None => Resume {
                replay_until,
                ..Resume::at(self.buf_start)
            },
        }
    }

    /// File offset just after the last byte pushed.
    pub fn read_offset(&self) -> u64 {
        self.buf_start + self.buf.len() as u64
    }

    /// Bytes held in memory (bounded by the line and record limits).
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.partial.iter().map(|p| p.text.len()).sum::<usize>()
    }

    /// At the end of a stream that will not grow (standard input): an unterminated last
    /// line counts as complete, and partial records that never got their final piece
    /// are reported as bad.
    pub fn finish(&mut self, out: &mut impl FnMut(Frame<'_>)) {
        if !self.buf.is_empty() {
            self.push(b"\n", out);
        }
        for p in &mut self.partial {
            if let (Some(start), false) = (p.start, p.skipping) {
                out(Frame::Bad {
                    reason: "record: input ended before its final piece".to_string(),
                    raw: &p.text[..p.text.len().min(OVERSIZE_HEAD_BYTES)],
                    offset: start,
                });
            }
            *p = Partial::default();
        }
    }

    /// The file was rotated away (and stayed quiet for `source.rotate_wait`) or truncated
    /// under us: it will not be read further. An unterminated last line and the records
    /// still waiting for their final piece are reported as bad with the reason
    /// [`TRUNCATED_BY_ROTATION`], once each (an unterminated `cri`/`docker` piece is part
    /// of its stream's record, not a record of its own). The deframer is left empty.
    pub fn finish_rotated(&mut self, out: &mut impl FnMut(Frame<'_>)) {
        if !self.skip_line && !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            let start = self.buf_start;
            self.buf_start += line.len() as u64;
            let piece = match self.framing {
                Framing::Plain => None,
                Framing::Cri => parse_cri(&line).map(|(s, text, _)| (s, text.to_vec())),
                Framing::Docker => serde_json::from_slice::<DockerLine>(&line).ok().map(|d| {
                    let s = usize::from(d.stream.as_deref() == Some("stderr"));
                    (s, d.log.as_bytes().to_vec())
                }),
            };
            match piece {
                Some((stream, text)) if !self.partial[stream].skipping => {
                    let p = &mut self.partial[stream];
                    p.start.get_or_insert(start);
                    p.text.extend_from_slice(&text);
                }
                Some(_) => {}
                None if line.iter().all(u8::is_ascii_whitespace) => {}
                None => out(Frame::Bad {
                    reason: format!(
                        "{TRUNCATED_BY_ROTATION}: the last line has no newline; the file was rotated away or truncated before it was finished"
                    ),
                    raw: &line[..line.len().min(TRUNCATED_RAW_BYTES)],
                    offset: start,
                }),
            }
        }
        for p in &mut self.partial {
            // Never emitted (a record is emitted at its final piece), so never reported.
            if let (Some(start), false) = (p.start, p.skipping) {
                out(Frame::Bad {
                    reason: format!(
                        "{TRUNCATED_BY_ROTATION}: the record's final piece never came; the file was rotated away or truncated before it"
                    ),
                    raw: &p.text[..p.text.len().min(TRUNCATED_RAW_BYTES)],
                    offset: start,
                });
            }
            *p = Partial::default();
        }
        self.skip_line = false;
        self.replay_until = self.replay_until.max(self.buf_start);
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
        if start >= self.replay_until {
            out(Frame::Bad {
                reason: format!(
                    "line: longer than source.max_line_bytes ({} bytes); first {} bytes kept, the rest skipped",
                    self.max_record,
                    head.len()
                ),
                raw: head,
                offset: start,
            });
        }
        // The record the line is a piece of is broken with it (reported just now): the
        // rest of its pieces are skipped up to its final one. The other stream's record
        // is not touched. A `docker` line names its stream only after the (oversize) text,
        // so there both streams' records are given up.
        match self.framing {
            Framing::Plain => {}
            Framing::Cri => {
                if let Some((stream, _, last)) = parse_cri(&self.buf) {
                    let p = &mut self.partial[stream];
                    *p = if last {
                        Partial::default()
                    } else {
                        Partial {
                            text: Vec::new(),
                            start: Some(p.start.unwrap_or(start)),
                            skipping: true,
                        }
                    };
                }
            }
            Framing::Docker => self.partial = Default::default(),
        }
        self.buf_start += self.buf.len() as u64;
        self.buf.clear();
        self.skip_line = true;
    }

    fn frame_line(&mut self, line: &[u8], start: u64, out: &mut impl FnMut(Frame<'_>)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let replaying = start < self.replay_until;
        match self.framing {
            Framing::Plain => {
                if !replaying && !line.iter().all(u8::is_ascii_whitespace) {
                    out(Frame::Record {
                        bytes: line,
                        offset: start,
                    })
                }
            }
            Framing::Cri => match parse_cri(line) {
                Some((stream, text, last)) => self.piece(stream, text, last, start, out),
                None if replaying => {}
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
                    let stream = usize::from(d.stream.as_deref() == Some("stderr"));
                    self.piece(stream, &text, last, start, out)
                }
                Err(_) if replaying => {}
                Err(e) => out(bad(
                    &format!("docker: not a json-file record: {e}"),
                    line,
                    start,
                )),
            },
        }
    }

    /// One piece of a `cri`/`docker` record of `stream`; `last` when it ends the record.
    fn piece(
        &mut self,
        stream: usize,
        text: &[u8],
        last: bool,
        start: u64,
        out: &mut impl FnMut(Frame<'_>),
    ) {
        let max_record = self.max_record;
        let p = &mut self.partial[stream];
        if p.skipping {
            if last {
                *p = Partial::default();
            }
            return;
        }
        let rec_start = *p.start.get_or_insert(start);
        // Whatever ends on a line before `replay_until` was emitted before a restart.
        let replaying = start < self.replay_until;
        if p.text.len() + text.len() > max_record {
            let mut head = std::mem::take(&mut p.text);
            head.extend_from_slice(&text[..text.len().min(OVERSIZE_HEAD_BYTES)]);
            head.truncate(OVERSIZE_HEAD_BYTES);
            if last {
                *p = Partial::default();
            } else {
                p.skipping = true;
            }
            if !replaying {
                out(Frame::Bad {
                    reason: format!(
                        "record: longer than source.max_line_bytes ({max_record} bytes); first {} bytes kept, the rest skipped",
                        head.len()
                    ),
                    raw: &head,
                    offset: rec_start,
                });
            }
            return;
        }
        if !last {
            p.text.extend_from_slice(text);
            return;
        }
        let whole: Cow<[u8]> = if p.text.is_empty() {
            Cow::Borrowed(text)
        } else {
            p.text.extend_from_slice(text);
            Cow::Owned(std::mem::take(&mut p.text))
        };
        *p = Partial::default();
        if !replaying && !whole.iter().all(u8::is_ascii_whitespace) {
            out(Frame::Record {
                bytes: &whole,
                offset: rec_start,
            });
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
    #[serde(borrow)]
    stream: Option<Cow<'a, str>>,
}

/// Splits a CRI line into its stream (0 stdout, 1 stderr), its text, and whether it is
/// the final piece.
fn parse_cri(line: &[u8]) -> Option<(usize, &[u8], bool)> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(b"");
    let stream = match stream {
        b"stdout" => 0,
        b"stderr" => 1,
        _ => return None,
    };
    if time.is_empty() {
        return None;
    }
    // Tags are `P` or `F`, possibly followed by `:`-separated flags.
    match tag.split(|b| *b == b':').next()? {
        b"P" => Some((stream, text, false)),
        b"F" => Some((stream, text, true)),
        _ => None,
    }
}

/// The first `needle` in `hay`, eight bytes at a time: a byte-by-byte `position` cost
/// about 6 instructions per byte, a third of the file source's framing work (issue 11).
fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    use crate::scan::{splat, zero_bytes};
    let rep = splat(needle);
    crate::scan::find(hay, |w| zero_bytes(w ^ rep), |b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The word-at-a-time search finds what a byte-by-byte one finds, wherever the
        /// needle sits in a word and whatever bytes (0x00, 0x80, 0xff, the needle ± 1)
        /// surround it.
        #[test]
        fn memchr_finds_the_first_match(
            hay in proptest::collection::vec(
                prop_oneof![Just(0u8), Just(0x80), Just(0xff), Just(9), Just(10), Just(11), any::<u8>()],
                0..64,
            ),
            needle in prop_oneof![Just(10u8), Just(0), Just(0x80), Just(0xff), any::<u8>()],
        ) {
            prop_assert_eq!(memchr(needle, &hay), hay.iter().position(|b| *b == needle));
        }
    }

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
        run(&mut Deframer::new(framing, max, Resume::at(0)), &[input])
    }

    #[test]
    fn plain_lines_and_incomplete_tail() {
        let mut d = Deframer::new(Framing::Plain, 100, Resume::at(0));
        let out = run(&mut d, &[b"{\"a\":1}\r\n{\"b\"", b":2}\n\n{\"c\":3}"]);
        assert_eq!(
            out,
            vec![
                Out::Rec(b"{\"a\":1}".to_vec(), 0),
                Out::Rec(b"{\"b\":2}".to_vec(), 9)
            ]
        );
        // The last line has no newline yet: not consumed.
        assert_eq!(d.resume_point(), Resume::at(18));
        assert_eq!(
            run(&mut d, &[b"\n"]),
            vec![Out::Rec(b"{\"c\":3}".to_vec(), 18)]
        );
        assert_eq!(d.resume_point(), Resume::at(26));
    }

    #[test]
    fn oversize_line_is_reported_once_and_skipped() {
        let mut input = b"ok1\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 5000));
        input.extend(b"\nok2\n");
        for chunk in [1, 7, 100, 4096, 10_000] {
            let mut d = Deframer::new(Framing::Plain, 1500, Resume::at(0));
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
        let mut d = Deframer::new(Framing::Cri, 100, Resume::at(0));
        run(&mut d, &[&input[..76]]);
        // Mid-record: resume re-reads from the first piece.
        assert_eq!(d.resume_point().offset, 0);
    }

    #[test]
    fn oversize_cri_record_is_skipped_up_to_its_final_piece() {
        let piece = format!("t stdout P {}\n", "y".repeat(600));
        let mut input = piece.repeat(3).into_bytes();
        input.extend(b"t stdout F end\nt stdout F {}\n");
        let mut d = Deframer::new(Framing::Cri, 1000, Resume::at(0));
        let out = run(&mut d, &[&input[..piece.len() * 2 + 3]]);
        assert_eq!(out, vec![Out::Bad("record".into(), 1024, 0)]);
        let r = d.resume_point();
        // The oversize record is read again from its start, silently, after a restart.
        assert_eq!((r.offset, r.replay_until), (0, piece.len() as u64 * 2));
        let mut d2 = Deframer::new(Framing::Cri, 1000, r);
        let out = run(&mut d2, &[&input[..]]);
        let last = (input.len() - "t stdout F {}\n".len()) as u64;
        assert_eq!(out, vec![Out::Rec(b"{}".to_vec(), last)]);
    }

    #[test]
    fn interleaved_streams_are_joined_separately() {
        let input = b"t stdout P {\"a\":\nt stderr F {\"err\":1}\nt stdout F 1}\n";
        let out = all(Framing::Cri, 100, input);
        assert_eq!(
            out,
            vec![
                Out::Rec(b"{\"err\":1}".to_vec(), 17),
                Out::Rec(b"{\"a\":1}".to_vec(), 0)
            ]
        );
        // Restart between the stderr record and the end of the stdout one: the stdout
        // record is rebuilt from its first piece, the stderr one is not emitted again.
        let mut d = Deframer::new(Framing::Cri, 100, Resume::at(0));
        run(&mut d, &[&input[..38]]);
        let r = d.resume_point();
        assert_eq!((r.offset, r.replay_until), (0, 38));
        let out = run(&mut Deframer::new(Framing::Cri, 100, r), &[&input[..]]);
        assert_eq!(out, vec![Out::Rec(b"{\"a\":1}".to_vec(), 0)]);
    }

    #[test]
    fn finish_completes_the_last_line_and_reports_open_records() {
        let mut d = Deframer::new(Framing::Cri, 100, Resume::at(0));
        let mut out = run(
            &mut d,
            &[b"t stdout F {}\nt stderr P {\"a\"\nt stdout F {\"b\":1}"],
        );
        d.finish(&mut |f| {
            if let Frame::Record { bytes, offset } = f {
                out.push(Out::Rec(bytes.to_vec(), offset));
            } else if let Frame::Bad {
                reason,
                raw,
                offset,
            } = f
            {
                out.push(Out::Bad(
                    reason.split(':').next().unwrap().into(),
                    raw.len(),
                    offset,
                ));
            }
        });
        assert_eq!(
            out,
            vec![
                Out::Rec(b"{}".to_vec(), 0),
                Out::Rec(b"{\"b\":1}".to_vec(), 30),
                Out::Bad("record".into(), 4, 14),
            ]
        );
    }

    fn finish_rotated(d: &mut Deframer) -> Vec<Out> {
        let mut v = Vec::new();
        d.finish_rotated(&mut |f| match f {
            Frame::Bad {
                reason,
                raw,
                offset,
            } => v.push(Out::Bad(
                format!(
                    "{}|{}",
                    reason.split(':').next().unwrap(),
                    String::from_utf8_lossy(raw)
                ),
                raw.len(),
                offset,
            )),
            Frame::Record { bytes, offset } => v.push(Out::Rec(bytes.to_vec(), offset)),
        });
        v
    }

    #[test]
    fn rotation_quarantines_what_is_incomplete_once() {
        let input = b"t stdout P {\"a\":\nt stderr F {}\nt stderr P {\"b\"\nt stdout P 1";
        let mut d = Deframer::new(Framing::Cri, 100, Resume::at(0));
        assert_eq!(run(&mut d, &[input]), vec![Out::Rec(b"{}".to_vec(), 17)]);
        // The unterminated stdout piece belongs to stdout's record: one report for it.
        assert_eq!(
            finish_rotated(&mut d),
            vec![
                Out::Bad("truncated_by_rotation|{\"a\":1".into(), 6, 0),
                Out::Bad("truncated_by_rotation|{\"b\"".into(), 4, 31),
            ]
        );
        assert_eq!(finish_rotated(&mut d), vec![], "reported once");
        assert_eq!(d.resume_point(), Resume::at(input.len() as u64));

        let mut d = Deframer::new(Framing::Plain, 100, Resume::at(0));
        assert_eq!(
            run(&mut d, &[b"ok\n{\"half\""]),
            vec![Out::Rec(b"ok".to_vec(), 0)]
        );
        assert_eq!(
            finish_rotated(&mut d),
            vec![Out::Bad("truncated_by_rotation|{\"half\"".into(), 7, 3)]
        );
        // Nothing incomplete: nothing reported.
        let mut d = Deframer::new(Framing::Cri, 100, Resume::at(0));
        run(&mut d, &[b"t stdout F {}\n"]);
        assert_eq!(finish_rotated(&mut d), vec![]);
    }

    #[test]
    fn oversize_line_on_one_stream_keeps_the_other_streams_record() {
        let max = 1000;
        let long = format!("t stdout P {}\n", "y".repeat(max + FRAME_OVERHEAD + 10));
        let mut input = b"t stderr P {\"a\":\n".to_vec();
        let long_at = input.len() as u64;
        input.extend(long.as_bytes());
        input.extend(b"t stdout F tail\nt stderr F 1}\n");
        let last_at = input.len() as u64;
        input.extend(b"t stdout F {}\n");
        let expected = vec![
            Out::Bad("line".into(), 1024, long_at),
            Out::Rec(b"{\"a\":1}".to_vec(), 0),
            Out::Rec(b"{}".to_vec(), last_at),
        ];
        for chunk in [100, 4096, 1 << 20] {
            let mut d = Deframer::new(Framing::Cri, max, Resume::at(0));
            let chunks: Vec<&[u8]> = input.chunks(chunk).collect();
            assert_eq!(run(&mut d, &chunks), expected, "chunk {chunk}");
        }
        // A restart in the middle of the oversize line: stderr's record is rebuilt from
        // its first piece, the oversize line is not reported again.
        let mut d = Deframer::new(Framing::Cri, max, Resume::at(0));
        let cut = long_at as usize + max + FRAME_OVERHEAD + 5;
        assert_eq!(run(&mut d, &[&input[..cut]]), expected[..1].to_vec());
        let r = d.resume_point();
        assert_eq!((r.offset, r.mode), (0, ResumeMode::Normal));
        let mut d2 = Deframer::new(Framing::Cri, max, r);
        assert_eq!(run(&mut d2, &[&input[..]]), expected[1..].to_vec());
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
            let mut d = Deframer::new(framing, 1000, Resume::at(0));
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
                let r = d.resume_point();
                if restart_at[i % restart_at.len()] && r.replay_until > last_restart {
                    d = Deframer::new(framing, 1000, r);
                    pos = r.offset as usize;
                    last_restart = r.replay_until;
                }
                i += 1;
            }
            prop_assert_eq!(got, expected);
        }
    }
}
