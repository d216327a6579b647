//! The single-writer lock of a spool directory.
//!
//! Every process that writes the spool (`audit-relay run`) holds an exclusive `flock` on
//! `spool.lock` in `spool.dir` for as long as it runs; the file holds the holder's pid, so
//! a second writer can say who is in the way. Readers (`query`, `spool stats`, `verify`,
//! `quarantine list`) never take it: SQLite's WAL lets them read beside the writer.
//!
//! The file is never deleted: removing a lock file while another process waits to lock
//! it would let two processes each hold a lock on a different file of the same name.
//! The kernel drops the lock when the holder exits, however it exits (SIGKILL too).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// File name of the lock inside `spool.dir`.
pub const LOCK_FILE: &str = "spool.lock";

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("spool {dir} is in use by another writer ({holder}; lock file {lock}): stop it first, or give this relay its own spool.dir")]
    Held {
        dir: PathBuf,
        lock: PathBuf,
        /// `pid N`, or why it is not known.
        holder: String,
    },
    #[error("spool {0}: cannot take the writer lock: {1}")]
    Io(PathBuf, std::io::Error),
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct SpoolLock {
    _file: File,
    path: PathBuf,
}

impl SpoolLock {
    /// Takes the writer lock of the spool in `dir` (creating `dir` if needed), without
    /// waiting: fails with [`LockError::Held`] naming the holder's pid when another
    /// process has it.
    pub fn acquire(dir: &Path) -> Result<SpoolLock, LockError> {
        let io = |e| LockError::Io(dir.to_path_buf(), e);
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(LOCK_FILE);
        // Not truncated on open: the holder's pid must stay readable to a loser.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("pid {pid}"),
                    // The holder took the lock a moment ago and has not written its pid yet.
                    Err(_) => "pid not recorded yet".to_string(),
                };
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    lock: path,
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(SpoolLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_naming_the_holder_until_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let first = SpoolLock::acquire(&spool).unwrap();
        let text = std::fs::read_to_string(first.path()).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        // A second open file description conflicts even within one process.
        let e = SpoolLock::acquire(&spool).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, LockError::Held { .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        let again = SpoolLock::acquire(&spool).unwrap();
        assert!(again.path().ends_with(LOCK_FILE));
    }
}
