//! Follows files matched by glob patterns, across rotation and restarts.
//!
//! One synchronous loop owns every open file. Each pass it re-globs (new files are
//! picked up), reads every open file to its end, closes files that were rotated away
//! and stayed idle, and hands the batch (with the checkpoints of every file it read) to
//! the spool writer. Between passes with nothing to read it waits for a file system
//! event (`notify`) or the poll interval, whichever first; where the file system sends
//! no events, polling alone still finds everything.
//!
//! Rotation:
//! - rename + create: the old file stays open and is read to its end, then closed after
//!   `rotate_wait` without growth; the new file (new inode) is read from its start.
//!   What is still incomplete in the old file when it is closed (an unterminated last
//!   line, a `cri`/`docker` record without its final piece) is quarantined with reason
//!   `truncated_by_rotation`, never dropped silently.
//! - copytruncate: the size falls below the read offset, or the first bytes no longer
//!   match the fingerprint: what was incomplete is quarantined as above, and reading
//!   restarts at 0.
//! - delete + recreate: like rename; a reused inode is told apart by its fingerprint.
//! - a crash while a rotated file is still being read: at the next start nothing matches
//!   it, but its checkpoint remains. Each saved checkpoint whose file no pattern matches
//!   is looked for by identity (device + inode, confirmed by the fingerprint) in the
//!   directory it was last seen in and the watched directories ([`super::rotated`]);
//!   found, it is read from the checkpoint to its end and retired as above. Not found
//!   (deleted, or moved elsewhere), its unread tail is lost: that is logged once at warn
//!   with the path and offset, counted (`audit_relay_source_files_lost_total`), and the
//!   checkpoint is forgotten.

use super::checkpoint::{FileId, Fingerprint, OffsetUpdate, SourceOffset};
use super::framing::{Deframer, Resume, ResumeMode};
use super::rotated::{self, Found};
use super::watch::{static_prefix_dir, watch_dirs};
use super::{Collector, WriterGone};
use crate::config::{SourceConfig, StartAt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const CHUNK_BYTES: usize = 256 << 10;

/// How often a waiting source looks at the stop signal: each look wakes the thread,
/// which is most of what an idle relay costs (docs/benchmarks.md, session 13).
const STOP_CHECK: Duration = Duration::from_millis(250);

/// One open file.
struct Tailed {
    path: PathBuf,
    name: String,
    id: FileId,
    fp: Fingerprint,
    file: File,
    de: Deframer,
    /// Still matched by a pattern in the last scan.
    matched: bool,
    last_growth: Instant,
    /// Read since its checkpoint was last handed over.
    dirty: bool,
    /// What `fstat` said at the last pass; the content is looked at only when it changes.
    stamp: Option<Stamp>,
    /// Other names the file was matched under (logged once each, at most
    /// [`MAX_ALIASES`] kept).
    aliases: HashSet<PathBuf>,
}

/// Other names of one file remembered (and logged) at most; a directory loop under `**`
/// can give a file very many.
const MAX_ALIASES: usize = 16;

/// The parts of a file's status that change whenever its content does. `ctime` cannot
/// be set back by a user, so an in-place rewrite (copytruncate, `cp` over it) always
/// shows here, even one that keeps the size and restores the mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl Tailed {
    /// `alias` names this file too: logged the first time, then followed only once.
    fn note_alias(&mut self, alias: &Path) {
        if self.aliases.len() < MAX_ALIASES && self.aliases.insert(alias.to_path_buf()) {
            tracing::info!(
                path = %self.name,
                alias = %alias.display(),
                "file also matched under another name (symlink or hard link); it is read once, under its first name"
            );
        }
    }

    fn checkpoint(&self) -> SourceOffset {
        SourceOffset {
            file: self.id,
            fingerprint: self.fp,
            path: self.name.clone(),
            resume: self.de.resume_point(),
        }
    }
}

/// The file source.
pub struct FileSource {
    cfg: SourceConfig,
    patterns: Vec<String>,
    files: Vec<Tailed>,
    saved: HashMap<FileId, SourceOffset>,
    first_scan: bool,
    out: Collector,
    cancel: CancellationToken,
    wake: Receiver<()>,
    _watcher: Option<notify::RecommendedWatcher>,
    chunk: Vec<u8>,
    /// Set while the spool is full: read nothing, keep every offset.
    paused: Arc<AtomicBool>,
    unreadable: Unreadable,
    /// Checkpointed files found neither by the patterns nor by identity at start.
    lost: Arc<AtomicU64>,
}

/// How often a matched file that cannot be opened is logged again.
const UNREADABLE_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Matched names that could not be opened (or looked at) in the last pass: each is
/// logged when it starts failing and then at most once a minute, with the number of
/// passes that failed in between; their number is published for `/metrics` and
/// `/readyz`.
#[derive(Default)]
struct Unreadable {
    /// Name → when it was last logged, and the failed passes since.
    failing: HashMap<PathBuf, (Instant, u64)>,
    gauge: Arc<AtomicU64>,
}

impl Unreadable {
    /// Takes the failures of one pass; a name not among them is readable again (or gone).
    fn pass(&mut self, failed: Vec<(PathBuf, std::io::Error)>) {
        let mut now_failing = HashMap::with_capacity(failed.len());
        for (path, e) in failed {
            let (last, unlogged) = match self.failing.remove(&path) {
                Some((last, n)) if last.elapsed() < UNREADABLE_WARNING_EVERY => (last, n + 1),
                previous => {
                    tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        failed_passes_since_last_warning = previous.map_or(0, |(_, n)| n),
                        "cannot open file (logged again at most once a minute while it lasts)"
                    );
                    (Instant::now(), 0)
                }
            };
            now_failing.insert(path, (last, unlogged));
        }
        for path in self.failing.keys() {
            tracing::info!(path = %path.display(), "file no longer unreadable (opened, or gone)");
        }
        self.failing = now_failing;
        self.gauge
            .store(self.failing.len() as u64, Ordering::Relaxed);
    }
}

impl FileSource {
    /// A source over the file patterns of `cfg`, resuming from `saved` checkpoints.
    pub fn new(
        cfg: &SourceConfig,
        saved: Vec<SourceOffset>,
        out: Collector,
        cancel: CancellationToken,
        paused: Arc<AtomicBool>,
    ) -> FileSource {
        let patterns: Vec<String> = cfg.paths.iter().filter(|p| *p != "-").cloned().collect();
        let (wake_tx, wake) = sync_channel(1);
        let watcher = watch_dirs(&patterns, move || {
            let _ = wake_tx.try_send(());
        });
        FileSource {
            cfg: cfg.clone(),
            patterns,
            files: Vec::new(),
            saved: saved.into_iter().map(|c| (c.file, c)).collect(),
            first_scan: true,
            out,
            cancel,
            wake,
            _watcher: watcher,
            chunk: vec![0u8; CHUNK_BYTES],
            paused,
            unreadable: Unreadable::default(),
            lost: Arc::default(),
        }
    }

    /// Adds the checkpointed files that could not be found at start to `counter`.
    pub fn report_lost_to(mut self, counter: Arc<AtomicU64>) -> FileSource {
        self.lost = counter;
        self
    }

    /// Publishes the number of matched files that cannot be opened to `gauge`.
    pub fn report_unreadable_to(mut self, gauge: Arc<AtomicU64>) -> FileSource {
        self.unreadable.gauge = gauge;
        self
    }

    /// Runs until cancelled (or the writer is gone), then hands over the last batch.
    pub fn run(mut self) -> Result<(), WriterGone> {
        while !self.cancel.is_cancelled() {
            if self.paused.load(Ordering::Relaxed) {
                self.flush()?;
                self.wait();
                continue;
            }
            if !self.pass()? {
                self.wait();
            }
        }
        self.flush()?;
        tracing::info!(files = self.files.len(), "file source stopped");
        Ok(())
    }

    /// One pass: finds files, reads every open one to its end, closes rotated files that
    /// stayed quiet, and hands over the batch. Returns whether anything was read.
    /// [`FileSource::run`] repeats it; tests drive it directly.
    pub fn pass(&mut self) -> Result<bool, WriterGone> {
        self.scan();
        let progressed = self.read_all()?;
        self.retire();
        self.flush()?;
        Ok(progressed)
    }

    /// Waits for the watch's hint or `source.poll_interval`, looking at the stop signal
    /// every [`STOP_CHECK`].
    fn wait(&self) {
        let until = Instant::now() + self.cfg.poll_interval.0;
        loop {
            let now = Instant::now();
            if now >= until || self.cancel.is_cancelled() {
                return;
            }
            match self.wake.recv_timeout((until - now).min(STOP_CHECK)) {
                Ok(()) => return,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep((until - now).min(STOP_CHECK))
                }
            }
        }
    }

    /// Finds files matching the patterns; opens the ones not yet followed.
    ///
    /// A file is one tail whatever number of names it has (a symlink or hard link to it,
    /// a directory loop under `**`): names are grouped by device + inode, a followed
    /// file keeps its name while that name still matches, and each other name is logged
    /// once. A matched name that cannot be opened is logged at most once a minute and
    /// counted (`unreadable`), not retried noisily on every pass.
    fn scan(&mut self) {
        for t in &mut self.files {
            t.matched = false;
        }
        let mut paths = Vec::new();
        for p in &self.patterns {
            match glob::glob(p) {
                Ok(it) => paths.extend(it.filter_map(|r| r.ok())),
                Err(e) => tracing::warn!(pattern = %p, error = %e, "bad glob pattern"),
            }
        }
        paths.sort();
        paths.dedup();
        let mut names: BTreeMap<FileId, Vec<PathBuf>> = BTreeMap::new();
        let first_scan = self.first_scan;
        let mut failed: Vec<(PathBuf, std::io::Error)> = Vec::new();
        for path in paths {
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    names.entry(FileId::of(&meta)).or_default().push(path)
                }
                Ok(_) => {}
                // Gone since the glob, or a dangling symlink: nothing to read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => failed.push((path, e)),
            }
        }
        let matched: HashSet<FileId> = names.keys().copied().collect();
        for (id, names) in names {
            let Some(k) = self.files.iter().position(|t| t.id == id) else {
                // The first name (in sorted order) is the one followed.
                match self.open(&names[0]) {
                    Ok(()) => {
                        let t = self.files.last_mut().expect("just opened");
                        for alias in &names[1..] {
                            t.note_alias(alias);
                        }
                    }
                    Err(e) => failed.push((names[0].clone(), e)),
                }
                continue;
            };
            let t = &mut self.files[k];
            t.matched = true;
            if !names.contains(&t.path) {
                tracing::info!(from = %t.name, to = %names[0].display(), "file renamed");
                t.name = names[0].display().to_string();
                t.path = names[0].clone();
                t.aliases.remove(&t.path);
            }
            let followed = t.path.clone();
            for alias in names.iter().filter(|n| **n != followed) {
                t.note_alias(alias);
            }
        }
        self.unreadable.pass(failed);
        if first_scan {
            self.open_rotated(&matched);
        }
        self.first_scan = false;
    }

    /// At start: opens the files of saved checkpoints that no pattern matched, found by
    /// identity (see the module doc), to be read to their end and retired; forgets the
    /// checkpoints of those that are gone.
    fn open_rotated(&mut self, matched: &HashSet<FileId>) {
        let watched: Vec<PathBuf> = self.patterns.iter().map(|p| static_prefix_dir(p)).collect();
        let mut unmatched: Vec<SourceOffset> = self
            .saved
            .values()
            .filter(|cp| !matched.contains(&cp.file))
            .cloned()
            .collect();
        unmatched.sort_by(|a, b| a.path.cmp(&b.path));
        for cp in unmatched {
            match rotated::find(&cp, &rotated::search_dirs(&cp.path, &watched)) {
                Found::At(path, file) => {
                    self.saved.remove(&cp.file);
                    let how = "checkpoint (renamed out of source.paths)";
                    match self.follow(&path, file, cp.resume, how) {
                        Ok(()) => self.files.last_mut().expect("just opened").matched = false,
                        Err(e) => tracing::warn!(
                            path = %path.display(),
                            error = %e,
                            "cannot read a rotated file found by its checkpoint; it is looked for again at the next start"
                        ),
                    }
                }
                Found::Gone => {
                    self.saved.remove(&cp.file);
                    tracing::warn!(
                        path = %cp.path,
                        offset = cp.resume.offset,
                        "checkpointed file not found (deleted, or moved out of its directory and source.paths, while the relay was down): what it held after this offset was not read, and how many bytes that was cannot be known once the file is gone; its checkpoint is forgotten"
                    );
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    let batch = self.out.batch_mut();
                    batch.checkpoints.push(OffsetUpdate::Forget(cp.file));
                }
                // Kept in `saved`: should the file come back into the patterns, it resumes.
                Found::Unsearchable(dir, e) => tracing::warn!(
                    path = %cp.path,
                    offset = cp.resume.offset,
                    dir = %dir.display(),
                    error = %e,
                    "cannot search a directory for a checkpointed file that no pattern matches; its checkpoint is kept"
                ),
            }
        }
    }

    fn open(&mut self, path: &Path) -> std::io::Result<()> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        let id = FileId::of(&meta);
        let size = meta.len();
        let (resume, how) = match self.saved.remove(&id) {
            Some(cp) if cp.fingerprint.matches(&file)? && cp.resume.replay_until <= size => {
                (cp.resume, "checkpoint")
            }
            Some(_) => (Resume::at(0), "replaced since its checkpoint"),
            None if self.first_scan && self.cfg.start_at == StartAt::End => {
                let mut last = [0u8; 1];
                let mid_line =
                    size > 0 && file.read_at(&mut last, size - 1)? == 1 && last[0] != b'\n';
                let mode = if mid_line {
                    ResumeMode::SkipLine
                } else {
                    ResumeMode::Normal
                };
                (
                    Resume {
                        mode,
                        ..Resume::at(size)
                    },
                    "end",
                )
            }
            None => (Resume::at(0), "beginning"),
        };
        self.follow(path, file, resume, how)
    }

    /// Starts following the open `file` at `resume`.
    fn follow(
        &mut self,
        path: &Path,
        file: File,
        resume: Resume,
        how: &str,
    ) -> std::io::Result<()> {
        let id = FileId::of(&file.metadata()?);
        let fp = Fingerprint::read(&file)?;
        let name = path.display().to_string();
        tracing::info!(path = %name, offset = resume.offset, from = how, "following file");
        let max = self.cfg.max_line_bytes.0 as usize;
        self.files.push(Tailed {
            path: path.to_path_buf(),
            name,
            id,
            fp,
            file,
            de: Deframer::new(self.cfg.format, max, resume),
            matched: true,
            last_growth: Instant::now(),
            dirty: true,
            stamp: None,
            aliases: HashSet::new(),
        });
        Ok(())
    }

    /// Reads every open file to its end. Returns whether anything was read.
    fn read_all(&mut self) -> Result<bool, WriterGone> {
        let mut progressed = false;
        for i in 0..self.files.len() {
            if self.cancel.is_cancelled() {
                break;
            }
            progressed |= self.read_file(i)?;
        }
        Ok(progressed)
    }

    fn read_file(&mut self, i: usize) -> Result<bool, WriterGone> {
        let max = self.cfg.max_line_bytes.0 as usize;
        let t = &mut self.files[i];
        let stamp = match t.file.metadata() {
            Ok(m) => Stamp::of(&m),
            Err(e) => {
                tracing::warn!(path = %t.name, error = %e, "cannot stat file");
                return Ok(false);
            }
        };
        // Unchanged since the last pass: nothing new to read, and the first bytes are
        // the ones fingerprinted then. This keeps the idle pass at one `fstat`.
        if t.stamp == Some(stamp) {
            return Ok(false);
        }
        t.stamp = Some(stamp);
        let size = stamp.size;
        let replaced = !t.fp.matches(&t.file).unwrap_or(true);
        if size < t.de.read_offset() || replaced {
            tracing::warn!(
                path = %t.name,
                size,
                offset = t.de.read_offset(),
                "file truncated or its content replaced (copytruncate); reading it again from its start"
            );
            // What was still incomplete went with the old content: quarantined, not lost.
            let out = &mut self.out;
            let name = &t.name;
            t.de.finish_rotated(&mut |f| out.frame(f, name));
            t.de = Deframer::new(self.cfg.format, max, Resume::at(0));
            t.fp = Fingerprint::read(&t.file).unwrap_or(Fingerprint { len: 0, hash: 0 });
            t.dirty = true;
        }
        if !t.fp.is_complete() && size > t.fp.len as u64 {
            if let Ok(fp) = Fingerprint::read(&t.file) {
                t.fp = fp;
                t.dirty = true;
            }
        }
        let mut progressed = false;
        loop {
            let t = &mut self.files[i];
            let off = t.de.read_offset();
            let n = match t.file.read_at(&mut self.chunk, off) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(path = %t.name, error = %e, "cannot read file");
                    t.stamp = None;
                    break;
                }
            };
            progressed = true;
            t.last_growth = Instant::now();
            t.dirty = true;
            let out = &mut self.out;
            let name = &t.name;
            t.de.push(&self.chunk[..n], &mut |f| out.frame(f, name));
            if self.out.is_full() {
                self.flush()?;
            }
            if self.cancel.is_cancelled() || self.paused.load(Ordering::Relaxed) {
                // Not at the end: the next pass must read on even if nothing changes.
                self.files[i].stamp = None;
                break;
            }
        }
        Ok(progressed)
    }

    /// Closes files that are no longer matched, fully read and idle for `rotate_wait`.
    fn retire(&mut self) {
        let wait = self.cfg.rotate_wait.0;
        let mut k = 0;
        while k < self.files.len() {
            let t = &self.files[k];
            let gone = !t.matched || t.file.metadata().map(|m| m.nlink() == 0).unwrap_or(true);
            let at_end = t.file.metadata().map(|m| m.len()).unwrap_or(0) <= t.de.read_offset();
            if gone && at_end && t.last_growth.elapsed() >= wait {
                let mut t = self.files.remove(k);
                tracing::info!(path = %t.name, offset = t.de.read_offset(), "closed rotated file");
                // It will not grow any more: what is incomplete now stays incomplete. It is
                // quarantined in the same batch that forgets the file's checkpoint.
                let out = &mut self.out;
                t.de.finish_rotated(&mut |f| out.frame(f, &t.name));
                let batch = self.out.batch_mut();
                batch.checkpoints.push(OffsetUpdate::Forget(t.id));
            } else {
                k += 1;
            }
        }
    }

    /// Hands over the batch with the checkpoints of every file read since the last one.
    fn flush(&mut self) -> Result<(), WriterGone> {
        for t in &mut self.files {
            if t.dirty {
                let cp = t.checkpoint();
                self.out
                    .batch_mut()
                    .checkpoints
                    .push(OffsetUpdate::Save(cp));
                t.dirty = false;
            }
        }
        self.out.send()
    }
}
