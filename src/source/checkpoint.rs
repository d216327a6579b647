//! File identity and checkpoints.
//!
//! A file is identified by device + inode, confirmed by a fingerprint of its first
//! bytes: an inode number reused by a new file after the old one was deleted is not
//! taken for the old file. A [`SourceOffset`] says where reading resumes; it is stored in
//! the spool in the same transaction as the events read up to it.

use super::framing::Resume;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

/// Bytes at the start of a file that make its fingerprint.
pub const FINGERPRINT_BYTES: usize = 256;

/// Device and inode of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// SHA-256 (first 8 bytes) of the first `len` bytes of a file; `len` grows with the
/// file up to [`FINGERPRINT_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub len: u32,
    pub hash: i64,
}

impl Fingerprint {
    fn of_bytes(b: &[u8]) -> Fingerprint {
        let d = Sha256::digest(b);
        Fingerprint {
            len: b.len() as u32,
            hash: i64::from_be_bytes(d[..8].try_into().expect("8 bytes")),
        }
    }

    /// The fingerprint of a file's first bytes as they are now.
    pub fn read(file: &File) -> io::Result<Fingerprint> {
        let mut buf = [0u8; FINGERPRINT_BYTES];
        let n = read_prefix(file, &mut buf)?;
        Ok(Fingerprint::of_bytes(&buf[..n]))
    }

    /// Whether the file still starts with the bytes this fingerprint was taken of.
    pub fn matches(&self, file: &File) -> io::Result<bool> {
        if self.len == 0 {
            return Ok(true);
        }
        let mut buf = vec![0u8; self.len as usize];
        let n = read_prefix(file, &mut buf)?;
        Ok(n == buf.len() && Fingerprint::of_bytes(&buf) == *self)
    }

    pub fn is_complete(&self) -> bool {
        self.len as usize >= FINGERPRINT_BYTES
    }
}

fn read_prefix(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Where reading of one file resumes: a source's checkpoint, stored in the spool's
/// `checkpoints` table in the commit of the events read up to it. (Not to be confused
/// with [`crate::integrity::ChainCheckpoint`], the signed head of the hash chain.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceOffset {
    pub file: FileId,
    pub fingerprint: Fingerprint,
    /// The path the file was last seen at (for operators; identity is `file`).
    pub path: String,
    pub resume: Resume,
}

/// A change to the stored source offsets, committed with the events before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetUpdate {
    Save(SourceOffset),
    /// The file is gone and fully read.
    Forget(FileId),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn fingerprint_grows_and_detects_other_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.write_all(b"hello").unwrap();
        let r = File::open(&path).unwrap();
        let fp = Fingerprint::read(&r).unwrap();
        assert_eq!(fp.len, 5);
        f.write_all(&[b'x'; 400]).unwrap();
        assert!(fp.matches(&r).unwrap());
        let full = Fingerprint::read(&r).unwrap();
        assert!(full.is_complete());
        std::fs::write(&path, b"jello and more").unwrap();
        assert!(!fp.matches(&r).unwrap());
        std::fs::write(&path, b"he").unwrap();
        assert!(!fp.matches(&r).unwrap(), "shorter than the fingerprint");
    }
}
