//! At start: finding the files that saved checkpoints point to but no pattern matches
//! any more.
//!
//! A file renamed out of `source.paths` by rotation (`server.log` → `server.log.1` with
//! `*.log`) is read only through the handle the relay has open. If the relay crashes
//! before the batch that reads it to its end is committed, the next start finds nothing
//! matching it, yet its checkpoint still says which file it is (device + inode, the
//! fingerprint of its first bytes) and where it was last seen. [`find`] looks for that
//! file among the entries of the directory of its last path, then of the watched
//! directories: an entry whose inode number matches is opened and kept only if device,
//! inode and fingerprint all match (an inode number reused by another file is not the
//! file) and the file is still as long as the checkpoint says. The file source then
//! reads it from the checkpoint to its end and retires it like any rotated file.
//!
//! Listing a directory costs one `getdents64` per entry block and a `stat` only for an
//! entry with the right inode number, once per checkpoint at start: nothing on the
//! idle path.

use super::checkpoint::{FileId, SourceOffset};
use std::fs::File;
use std::io;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};

/// What became of a checkpointed file that no pattern matches.
#[derive(Debug)]
pub enum Found {
    /// The same file (identity and fingerprint), at this path now.
    At(PathBuf, File),
    /// Not in any searched directory: deleted, or moved where the relay does not look.
    Gone,
    /// A directory that may hold it cannot be listed (e.g. permission denied): the file
    /// may still be there, so its checkpoint is kept.
    Unsearchable(PathBuf, io::Error),
}

/// The directories to search for a file last seen at `last_path`: its own directory
/// first (rotation renames within it), then the `watched` ones, each once.
pub fn search_dirs(last_path: &str, watched: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = Vec::with_capacity(watched.len() + 1);
    if let Some(parent) = Path::new(last_path).parent() {
        let parent = if parent.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            parent.to_path_buf()
        };
        dirs.push(parent);
    }
    for d in watched {
        if !dirs.contains(d) {
            dirs.push(d.clone());
        }
    }
    dirs
}

/// Looks for the file of `cp` in `dirs` (see the module doc).
pub fn find(cp: &SourceOffset, dirs: &[PathBuf]) -> Found {
    let mut unsearchable = None;
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(it) => it,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                unsearchable.get_or_insert((dir.clone(), e));
                continue;
            }
        };
        for entry in entries.filter_map(Result::ok) {
            if entry.ino() != cp.file.ino {
                continue;
            }
            if let Some(file) = same_file(cp, &entry.path()) {
                return Found::At(entry.path(), file);
            }
        }
    }
    match unsearchable {
        Some((dir, e)) => Found::Unsearchable(dir, e),
        None => Found::Gone,
    }
}

/// The file at `path`, opened, if it is the checkpoint's file and can resume there.
fn same_file(cp: &SourceOffset, path: &Path) -> Option<File> {
    let file = File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    let same = meta.is_file()
        && FileId::of(&meta) == cp.file
        && cp.fingerprint.matches(&file).unwrap_or(false)
        && cp.resume.replay_until <= meta.len();
    same.then_some(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::checkpoint::Fingerprint;
    use crate::source::framing::Resume;
    use std::io::Write;

    fn checkpoint_of(path: &Path, offset: u64) -> SourceOffset {
        let f = File::open(path).unwrap();
        SourceOffset {
            file: FileId::of(&f.metadata().unwrap()),
            fingerprint: Fingerprint::read(&f).unwrap(),
            path: path.display().to_string(),
            resume: Resume::at(offset),
        }
    }

    #[test]
    fn own_directory_first_then_watched_ones_once_each() {
        let w = [PathBuf::from("/var/log/b"), PathBuf::from("/var/log/a")];
        assert_eq!(
            search_dirs("/var/log/a/server.log", &w),
            vec![PathBuf::from("/var/log/a"), PathBuf::from("/var/log/b")]
        );
        assert_eq!(search_dirs("server.log", &[]), vec![PathBuf::from(".")]);
    }

    #[test]
    fn a_renamed_file_is_found_a_replaced_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        std::fs::write(&a, b"first line\nsecond line\n").unwrap();
        let cp = checkpoint_of(&a, 11);
        let dirs = search_dirs(&cp.path, &[]);
        std::fs::write(dir.path().join("other.log"), b"x\n").unwrap();
        std::fs::rename(&a, dir.path().join("a.log.1")).unwrap();
        match find(&cp, &dirs) {
            Found::At(p, _) => assert_eq!(p, dir.path().join("a.log.1")),
            other => panic!("not found: {other:?}"),
        }

        // Same inode, other first bytes: another file, not this one.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("a.log.1"))
            .unwrap();
        f.write_all(b"FIRST").unwrap();
        assert!(matches!(find(&cp, &dirs), Found::Gone));

        // Shorter than where reading resumes: not the file the checkpoint was taken of.
        let b = dir.path().join("b.log");
        std::fs::write(&b, b"0123456789\n").unwrap();
        let mut cp = checkpoint_of(&b, 11);
        cp.resume.replay_until = 12;
        assert!(matches!(find(&cp, &dirs), Found::Gone));

        std::fs::remove_file(&b).unwrap();
        let cp = checkpoint_of(&dir.path().join("other.log"), 0);
        std::fs::remove_file(dir.path().join("other.log")).unwrap();
        assert!(matches!(find(&cp, &dirs), Found::Gone), "deleted");
    }
}
