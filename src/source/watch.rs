//! When the file source looks again: the directories it watches, and which file system
//! events are worth a pass.
//!
//! The watch is only a hint that shortens the wait; `source.poll_interval` stays the
//! fallback where no events come (some network or overlay file systems, directories
//! below a glob character).

use notify::Watcher;
use std::path::{Path, PathBuf};

/// Watches the directories the patterns live in; `wake` is called on any change there.
/// Returns `None` (polling only) where the file system gives no events.
pub fn watch_dirs(
    patterns: &[String],
    wake: impl Fn() + Send + 'static,
) -> Option<notify::RecommendedWatcher> {
    let on_event = move |res: notify::Result<notify::Event>| {
        // An error may mean lost events (e.g. a queue overflow): look.
        if res.as_ref().map_or(true, |ev| wakes_the_source(&ev.kind)) {
            wake()
        }
    };
    let mut watcher = match notify::recommended_watcher(on_event) {
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

/// Whether a file system event may mean new data, or a file created, renamed or removed:
/// the events worth a pass. Opens, reads and read-only closes are not: the relay's own
/// glob (opening and listing the directory) and reads cause them, so waking on them
/// would make every pass schedule the next one and spin a core while idle. Metadata
/// changes (other than access times) wake, since a `chmod` may make a file readable.
/// Unknown kinds wake: a spare pass is cheap, a missed one delays data to the next poll.
pub fn wakes_the_source(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, MetadataKind, ModifyKind};
    match kind {
        // A writer closing its handle may follow its last write.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Any | EventKind::Other => true,
    }
}

/// The deepest directory of a pattern that has no glob characters in it.
pub fn static_prefix_dir(pattern: &str) -> PathBuf {
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
    use super::{static_prefix_dir, wakes_the_source};
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, MetadataKind, ModifyKind,
        RemoveKind, RenameMode,
    };
    use std::path::PathBuf;

    #[test]
    fn only_changes_wake_the_source() {
        // What the relay's own glob and reads cause (inotify on the directory).
        for own in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Any),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
        ] {
            assert!(!wakes_the_source(&own), "{own:?} must not wake");
        }
        for change in [
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Data(DataChange::Size)),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Permissions)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Create(CreateKind::File),
            EventKind::Create(CreateKind::Any),
            EventKind::Remove(RemoveKind::File),
            EventKind::Remove(RemoveKind::Any),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Other,
            EventKind::Any,
        ] {
            assert!(wakes_the_source(&change), "{change:?} must wake");
        }
    }

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
