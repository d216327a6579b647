//! Model-based test of the file source (issue 9 item 4): random sequences of appends
//! (whole and partial lines, CRI `P`/`F` pieces on two streams), rename + create,
//! copytruncate, delete, restart, and a crash while a file renamed out of the glob was
//! not yet read to its end, run against the real synchronous [`FileSource`] on
//! real files, one pass after each step, and compared with an in-memory model of what
//! was written:
//!
//! - every record whose last line was written whole is stored exactly once;
//! - every record (or unterminated line) that a rotation cut off is quarantined exactly
//!   once, with reason `truncated_by_rotation`, at the offset where it began;
//! - nothing else is quarantined.
//!
//! The spool is modelled too: the checkpoints of each batch are applied as the spool
//! would commit them, and a restart builds a new source from them.

#[path = "common/gen.rs"]
mod gen;

use audit_relay::config::SourceConfig;
use audit_relay::source::checkpoint::{FileId, OffsetUpdate, SourceOffset};
use audit_relay::source::framing::TRUNCATED_BY_ROTATION;
use audit_relay::source::tail::FileSource;
use audit_relay::source::Collector;
use audit_relay::spool::AppendBatch;
use proptest::prelude::*;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
enum Op {
    /// The next piece of `stream`'s record (a new record when none is open); `last`
    /// ends it (plain framing: every line is a whole record). `len` picks the piece's
    /// length, `cut` (when set) writes only part of the line; the rest comes first in
    /// the next write, unless a rotation comes before it.
    Piece {
        stream: usize,
        last: bool,
        len: usize,
        cut: Option<usize>,
    },
    RenameCreate,
    CopyTruncate,
    Delete,
    Restart,
    /// The relay stops committing (as if SIGSTOPped); `before` is appended to a.log, a.log
    /// is renamed out of the glob (rename + create), `after` goes to the new a.log; then
    /// the relay is killed and restarted. The renamed file's unread tail must be read.
    CrashAfterRename {
        before: Vec<Piece>,
        after: Vec<Piece>,
    },
}

/// The arguments of [`Op::Piece`]: stream, last, len, cut.
type Piece = (usize, bool, usize, Option<usize>);

fn piece() -> impl Strategy<Value = Piece> {
    (
        0..2usize,
        any::<bool>(),
        1..400usize,
        proptest::option::weighted(0.3, 0..10_000usize),
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => piece().prop_map(|(stream, last, len, cut)| Op::Piece { stream, last, len, cut }),
        1 => Just(Op::RenameCreate),
        1 => Just(Op::CopyTruncate),
        1 => Just(Op::Delete),
        1 => Just(Op::Restart),
        1 => (proptest::collection::vec(piece(), 0..6), proptest::collection::vec(piece(), 0..4))
            .prop_map(|(before, after)| Op::CrashAfterRename { before, after }),
    ]
}

/// A record being written: its id, the text not yet written, and where it began.
struct Open {
    id: String,
    rest: Vec<u8>,
    first_offset: u64,
}

/// The record a line ends: for CRI the stream whose open record it closes, and the id.
type Ends = (Option<usize>, String);

/// The writer and what it expects.
struct Model {
    cri: bool,
    path: PathBuf,
    dir: PathBuf,
    g: gen::Gen,
    n: i64,
    rotations: u32,
    /// Bytes in the current file.
    size: u64,
    open: [Option<Open>; 2],
    /// The unwritten rest of a cut line, and the record it completes (the id; for CRI
    /// also the stream whose open record it ends).
    half: Option<(Vec<u8>, Option<Ends>)>,
    /// Start of the cut line (plain framing: it is a record of its own).
    half_start: u64,
    complete: Vec<String>,
    /// Offsets where cut-off records began.
    cut_off: Vec<u64>,
}

impl Model {
    fn file(&self) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .unwrap()
    }

    fn write(&mut self, bytes: &[u8]) {
        self.file().write_all(bytes).unwrap();
        self.size += bytes.len() as u64;
    }

    fn piece(&mut self, stream: usize, last: bool, len: usize, cut: Option<usize>) {
        if let Some((rest, done)) = self.half.take() {
            self.write(&rest);
            self.finished(done);
        }
        let start = self.size;
        let (line, prefix, done) = if self.cri {
            if self.open[stream].is_none() {
                let s = gen::event_json(&mut self.g, gen_ms(self.n));
                self.n += 1;
                self.open[stream] = Some(Open {
                    id: s.id,
                    rest: s.line.into_bytes(),
                    first_offset: start,
                });
            }
            let rec = self.open[stream].as_mut().unwrap();
            // A partial piece leaves at least one byte for the final one.
            let last = last || rec.rest.len() <= 1;
            let take = if last {
                rec.rest.len()
            } else {
                len.min(rec.rest.len() - 1)
            };
            let text: Vec<u8> = rec.rest.drain(..take).collect();
            let prefix = format!(
                "2024-06-24T13:29:36.{:09}Z {} {} ",
                self.n,
                ["stdout", "stderr"][stream],
                if last { "F" } else { "P" }
            );
            let mut line = prefix.clone().into_bytes();
            line.extend(&text);
            line.push(b'\n');
            let done = last.then(|| (Some(stream), rec.id.clone()));
            (line, prefix.len(), done)
        } else {
            let s = gen::event_json(&mut self.g, gen_ms(self.n));
            self.n += 1;
            let mut line = s.line.into_bytes();
            line.push(b'\n');
            (line, 1, Some((None, s.id)))
        };
        match cut {
            // Cut after the CRI prefix (so the piece names its stream) and before `\n`.
            Some(c) => {
                let k = prefix + c % (line.len() - prefix);
                self.write(&line[..k]);
                self.half = Some((line[k..].to_vec(), done));
                self.half_start = start;
            }
            None => {
                self.write(&line);
                self.finished(done);
            }
        }
    }

    /// A record's last line is written whole: it is complete.
    fn finished(&mut self, done: Option<Ends>) {
        if let Some((stream, id)) = done {
            if let Some(s) = stream {
                self.open[s] = None;
            }
            self.complete.push(id);
        }
    }

    /// The writer gives up what it has not finished (a rotation cut it off).
    fn abandon(&mut self) {
        if self.cri {
            for rec in self.open.iter_mut().filter_map(Option::take) {
                self.cut_off.push(rec.first_offset);
            }
        } else if self.half.is_some() {
            self.cut_off.push(self.half_start);
        }
        self.half = None;
        self.size = 0;
    }

    fn rotated_name(&mut self) -> PathBuf {
        self.rotations += 1;
        self.dir.join(format!("a.log.{}", self.rotations))
    }
}

fn gen_ms(n: i64) -> i64 {
    1_719_235_776_000 + n
}

/// The relay side: the source, its batches, and the spool's state.
struct Relay {
    cfg: SourceConfig,
    source: Option<FileSource>,
    rx: Receiver<AppendBatch>,
    tx: std::sync::mpsc::SyncSender<AppendBatch>,
    saved: HashMap<FileId, SourceOffset>,
    stored: HashMap<String, usize>,
    quarantined: Vec<(String, u64)>,
}

impl Relay {
    fn new(cfg: SourceConfig) -> Relay {
        let (tx, rx) = sync_channel(4096);
        let mut r = Relay {
            cfg,
            source: None,
            rx,
            tx,
            saved: HashMap::new(),
            stored: HashMap::new(),
            quarantined: Vec::new(),
        };
        r.start();
        r
    }

    fn start(&mut self) {
        let out = Collector::new(self.cfg.envelope, self.tx.clone());
        self.source = Some(FileSource::new(
            &self.cfg,
            self.saved.values().cloned().collect(),
            out,
            CancellationToken::new(),
            Arc::new(AtomicBool::new(false)),
        ));
    }

    /// One pass; everything it handed over is committed.
    fn pass(&mut self) {
        self.source
            .as_mut()
            .unwrap()
            .pass()
            .expect("writer is here");
        while let Ok(b) = self.rx.try_recv() {
            for ev in b.events {
                *self.stored.entry(ev.id.to_string()).or_default() += 1;
            }
            for q in b.quarantined {
                self.quarantined.push((q.reason, q.offset));
            }
            for c in b.checkpoints {
                match c {
                    OffsetUpdate::Save(cp) => {
                        self.saved.insert(cp.file, cp);
                    }
                    OffsetUpdate::Forget(id) => {
                        self.saved.remove(&id);
                    }
                }
            }
        }
    }

    fn restart(&mut self) {
        self.source = None;
        self.start();
    }
}

fn config(dir: &Path, cri: bool) -> SourceConfig {
    toml::from_str(&format!(
        "paths = [{:?}]\nformat = {:?}\nrotate_wait = \"0ms\"\nmax_line_bytes = \"1MiB\"\n",
        dir.join("*.log").display().to_string(),
        if cri { "cri" } else { "plain" },
    ))
    .expect("source config")
}

fn check(cri: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut m = Model {
        cri,
        path: dir.join("a.log"),
        dir: dir.clone(),
        g: gen::Gen::new(ops.len() as u64),
        n: 0,
        rotations: 0,
        size: 0,
        open: [None, None],
        half: None,
        half_start: 0,
        complete: Vec::new(),
        cut_off: Vec::new(),
    };
    let mut relay = Relay::new(config(&dir, cri));
    for op in ops {
        match op.clone() {
            Op::Piece {
                stream,
                last,
                len,
                cut,
            } => m.piece(stream, last, len, cut),
            Op::RenameCreate => {
                m.abandon();
                if m.path.exists() {
                    let to = m.rotated_name();
                    std::fs::rename(&m.path, to).unwrap();
                }
            }
            Op::CopyTruncate => {
                m.abandon();
                if m.path.exists() {
                    let to = m.rotated_name();
                    std::fs::copy(&m.path, to).unwrap();
                    OpenOptions::new()
                        .write(true)
                        .open(&m.path)
                        .unwrap()
                        .set_len(0)
                        .unwrap();
                }
            }
            Op::Delete => {
                m.abandon();
                let _ = std::fs::remove_file(&m.path);
            }
            Op::Restart => relay.restart(),
            Op::CrashAfterRename { before, after } => {
                if !m.path.exists() {
                    // A file the relay never saw has no checkpoint to find it by: let it
                    // see a.log before it stops.
                    m.write(b"");
                    relay.pass();
                }
                for (stream, last, len, cut) in before {
                    m.piece(stream, last, len, cut);
                }
                m.abandon();
                let to = m.rotated_name();
                std::fs::rename(&m.path, to).unwrap();
                for (stream, last, len, cut) in after {
                    m.piece(stream, last, len, cut);
                }
                // Nothing read since the stop was committed: a crash loses it all.
                relay.restart();
            }
        }
        relay.pass();
    }
    relay.pass();

    let twice: Vec<_> = relay.stored.iter().filter(|(_, n)| **n > 1).collect();
    prop_assert!(twice.is_empty(), "stored more than once: {:?}", twice);
    let mut stored: Vec<&String> = relay.stored.keys().collect();
    stored.sort();
    let mut complete: Vec<&String> = m.complete.iter().collect();
    complete.sort();
    prop_assert_eq!(stored, complete, "stored ≠ complete records");
    let mut cut: Vec<u64> = relay
        .quarantined
        .iter()
        .map(|(reason, offset)| {
            assert!(
                reason.starts_with(TRUNCATED_BY_ROTATION),
                "only cut-off records are quarantined, not: {reason} at {offset}"
            );
            *offset
        })
        .collect();
    cut.sort();
    m.cut_off.sort();
    prop_assert_eq!(cut, m.cut_off, "quarantined ≠ cut-off records (offsets)");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_record_stored_once_every_cut_one_quarantined_once(
        cri in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        check(cri, &ops)?;
    }
}
