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
//! - copytruncate: the size falls below the read offset, or the first bytes no longer
//!   match the fingerprint: reading restarts at 0.
//! - delete + recreate: like rename; a reused inode is told apart by its fingerprint.

use super::checkpoint::{Checkpoint, CheckpointUpdate, FileId, Fingerprint};
use super::framing::{Deframer, Resume, ResumeMode};
use super::{Collector, WriterGone};
use crate::config::{SourceConfig, StartAt};
use notify::Watcher;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const CHUNK_BYTES: usize = 256 << 10;

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
}

impl Tailed {
    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
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
    saved: HashMap<FileId, Checkpoint>,
    first_scan: bool,
    out: Collector,
    cancel: CancellationToken,
    wake: Receiver<()>,
    _watcher: Option<notify::RecommendedWatcher>,
    chunk: Vec<u8>,
    /// Set while the spool is full: read nothing, keep every offset.
    paused: Arc<AtomicBool>,
}

impl FileSource {
    /// A source over the file patterns of `cfg`, resuming from `saved` checkpoints.
    pub fn new(
        cfg: &SourceConfig,
        saved: Vec<Checkpoint>,
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
        }
    }

    /// Runs until cancelled (or the writer is gone), then hands over the last batch.
    pub fn run(mut self) -> Result<(), WriterGone> {
        while !self.cancel.is_cancelled() {
            if self.paused.load(Ordering::Relaxed) {
                self.flush()?;
                self.wait();
                continue;
            }
            self.scan();
            let progressed = self.read_all()?;
            self.retire();
            self.flush()?;
            if !progressed {
                self.wait();
            }
        }
        self.flush()?;
        tracing::info!(files = self.files.len(), "file source stopped");
        Ok(())
    }

    fn wait(&self) {
        let until = Instant::now() + self.cfg.poll_interval.0;
        loop {
            let now = Instant::now();
            if now >= until || self.cancel.is_cancelled() {
                return;
            }
            match self
                .wake
                .recv_timeout((until - now).min(Duration::from_millis(100)))
            {
                Ok(()) => return,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep((until - now).min(Duration::from_millis(100)))
                }
            }
        }
    }

    /// Finds files matching the patterns; opens the ones not yet followed.
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
        for path in paths {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let id = FileId::of(&meta);
            if let Some(t) = self.files.iter_mut().find(|t| t.id == id) {
                t.matched = true;
                if t.path != path {
                    tracing::info!(from = %t.name, to = %path.display(), "file renamed");
                    t.name = path.display().to_string();
                    t.path = path;
                }
                continue;
            }
            if let Err(e) = self.open(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot open file");
            }
        }
        self.first_scan = false;
    }

    fn open(&mut self, path: &Path) -> std::io::Result<()> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        let id = FileId::of(&meta);
        let size = meta.len();
        let fp = Fingerprint::read(&file)?;
        let name = path.display().to_string();
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
        let size = match t.file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                tracing::warn!(path = %t.name, error = %e, "cannot stat file");
                return Ok(false);
            }
        };
        let replaced = !t.fp.matches(&t.file).unwrap_or(true);
        if size < t.de.read_offset() || replaced {
            tracing::warn!(
                path = %t.name,
                size,
                offset = t.de.read_offset(),
                "file truncated or its content replaced (copytruncate); reading it again from its start"
            );
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
                let t = self.files.remove(k);
                tracing::info!(path = %t.name, offset = t.de.read_offset(), "closed rotated file");
                let batch = self.out.batch_mut();
                batch.checkpoints.push(CheckpointUpdate::Forget(t.id));
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
                    .push(CheckpointUpdate::Save(cp));
                t.dirty = false;
            }
        }
        self.out.send()
    }
}

/// Watches the directories the patterns live in; `wake` is called on any change there.
/// Returns `None` (polling only) where the file system gives no events.
fn watch_dirs(
    patterns: &[String],
    wake: impl Fn() + Send + 'static,
) -> Option<notify::RecommendedWatcher> {
    let mut watcher =
        match notify::recommended_watcher(move |_res: notify::Result<notify::Event>| wake()) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "no file system events; polling only");
                return None;
            }
        };
    for p in patterns {
        let dir = static_prefix_dir(p);
        if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; polling it");
        }
    }
    Some(watcher)
}

/// The deepest directory of a pattern that has no glob characters in it.
fn static_prefix_dir(pattern: &str) -> PathBuf {
    let mut dir = PathBuf::new();
    let path = Path::new(pattern);
    let comps: Vec<_> = path.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let s = c.as_os_str().to_string_lossy();
        if s.contains(['*', '?', '[']) || i + 1 == comps.len() {
            break;
        }
        dir.push(c);
    }
    if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::static_prefix_dir;
    use std::path::PathBuf;

    #[test]
    fn watch_dir_is_the_static_prefix() {
        assert_eq!(
            static_prefix_dir("/var/log/gitpod/server/*.log"),
            PathBuf::from("/var/log/gitpod/server")
        );
        assert_eq!(
            static_prefix_dir("/var/log/*/x.log"),
            PathBuf::from("/var/log")
        );
        assert_eq!(
            static_prefix_dir("/var/log/a.log"),
            PathBuf::from("/var/log")
        );
        assert_eq!(static_prefix_dir("a.log"), PathBuf::from("."));
    }
}
