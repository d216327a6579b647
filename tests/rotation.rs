//! Rotation while a writer keeps appending: rename + create, copytruncate, delete +
//! recreate. Every written event must end up in the spool exactly once, nothing is
//! quarantined, and nothing is even read twice (`duplicates` stays 0).

mod common;

use common::{assert_exactly_once, gen::Gen, server_lines, write_lines, Harness, DEADLINE};
use std::collections::HashSet;
use std::fs::OpenOptions;
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
enum Rotation {
    /// `a.log` → `a.log.N` (not matched by `*.log`), a new `a.log` is created.
    RenameCreate,
    /// `a.log` → `a.log.N` with paths `a.log*`: the renamed file is still matched and
    /// is recognized as the same file (same inode), not read again.
    RenameWithinGlob,
    /// `a.log` copied to `a.log.N`, then truncated to 0; the writer keeps its handle.
    CopyTruncate,
    /// `a.log` deleted, a new `a.log` created with the same name.
    DeleteRecreate,
}

const TOTAL: usize = 3000;
const PER_WRITE: usize = 20;
const ROTATE_EVERY: usize = 600;

/// Runs a relay while a writer thread appends `TOTAL` events to `a.log`, rotating it
/// every `ROTATE_EVERY` events; then checks the spool.
fn rotate_while_writing(how: Rotation) {
    let h = match how {
        Rotation::RenameWithinGlob => {
            let h = Harness::new();
            let pattern = format!("paths = [{:?}]", h.log("a.log*").display().to_string());
            h.write_config(&h.config_text(&[&pattern], &[]));
            h
        }
        _ => Harness::new(),
    };
    let mut relay = h.start();
    let path = h.log("a.log");

    let written: HashSet<String> = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut g = Gen::new(0x5EED ^ how as u64);
            let mut f = common::append_to(&path);
            let mut ids = HashSet::new();
            // Events written before the current file (generation) began.
            let mut before_file = 0u64;
            let mut rotations = 0;
            let mut next_rotation = ROTATE_EVERY;
            for chunk in 0..TOTAL / PER_WRITE {
                let n = chunk * PER_WRITE;
                if n == next_rotation {
                    next_rotation += ROTATE_EVERY;
                    rotations += 1;
                    let old = h.log(&format!("a.log.{rotations}"));
                    match how {
                        Rotation::RenameCreate
                        | Rotation::RenameWithinGlob
                        | Rotation::DeleteRecreate => {
                            // The relay must have found the current file before it
                            // leaves the glob; after that it follows its open handle.
                            h.wait_until(None, "the relay to open a.log", DEADLINE, || {
                                h.count() > before_file
                            });
                            if let Rotation::DeleteRecreate = how {
                                std::fs::remove_file(&path).unwrap();
                            } else {
                                std::fs::rename(&path, &old).unwrap();
                            }
                            f = common::append_to(&path);
                        }
                        Rotation::CopyTruncate => {
                            // Bytes not yet read when the file is truncated are lost by
                            // copytruncate itself (only the unmatched copy holds them), so
                            // the relay must have caught up; then copy and truncate with no
                            // write in between, as logrotate intends.
                            h.wait_until(None, "the relay to catch up", DEADLINE, || {
                                h.count() >= n as u64
                            });
                            std::fs::copy(&path, &old).unwrap();
                            OpenOptions::new()
                                .write(true)
                                .open(&path)
                                .unwrap()
                                .set_len(0)
                                .unwrap();
                        }
                    }
                    before_file = n as u64;
                }
                let (new_ids, lines) = server_lines(&mut g, n as i64, PER_WRITE);
                write_lines(&mut f, &lines);
                ids.extend(new_ids);
                std::thread::sleep(Duration::from_millis(3));
            }
            assert_eq!(rotations, TOTAL / ROTATE_EVERY - 1);
            ids
        });
        writer.join().expect("writer thread")
    });
    assert_eq!(written.len(), TOTAL);

    h.wait_events(&mut relay, TOTAL as u64);
    // Past rotate_wait: rotated files are closed; nothing more may arrive.
    std::thread::sleep(Duration::from_millis(600));
    relay.terminate();

    assert_exactly_once(&h, &written);
    assert_eq!(h.quarantine_rows(), vec![], "nothing is quarantined");
    assert_eq!(h.stat("duplicates"), 0, "no line was read twice");
    assert_eq!(h.stat("events"), TOTAL as u64);
    assert_eq!(h.stat("skipped"), 0);
}

#[test]
fn rename_and_create_while_writing() {
    rotate_while_writing(Rotation::RenameCreate);
}

#[test]
fn rename_within_the_glob_while_writing() {
    rotate_while_writing(Rotation::RenameWithinGlob);
}

#[test]
fn copytruncate_while_writing() {
    rotate_while_writing(Rotation::CopyTruncate);
}

#[test]
fn delete_and_recreate_while_writing() {
    rotate_while_writing(Rotation::DeleteRecreate);
}

/// A rotated-away file that is re-created with the same inode number (delete, then the
/// relay has closed it, then a new file) is read from its start, not from the old offset.
#[test]
fn recreated_file_after_close_is_read_from_its_start() {
    let h = Harness::new();
    let mut relay = h.start();
    let path = h.log("a.log");
    let mut g = Gen::new(7);
    let mut all = HashSet::new();
    for round in 0..3i64 {
        // Each generation is shorter than the last, so a stale offset would be past
        // its end, and a stale fingerprint would not match.
        let n = 300 - round as usize * 100;
        let (ids, lines) = server_lines(&mut g, round * 1000, n);
        let mut f = common::append_to(&path);
        write_lines(&mut f, &lines);
        drop(f);
        all.extend(ids);
        h.wait_events(&mut relay, all.len() as u64);
        std::fs::remove_file(&path).unwrap();
        // Let the relay close the deleted file (rotate_wait is 300ms).
        h.wait_until(
            Some(&mut relay),
            "the deleted file to be closed",
            DEADLINE,
            || relay_closed(&h, round as usize + 1),
        );
    }
    relay.terminate();
    assert_exactly_once(&h, &all);
    assert_eq!(h.quarantine_rows(), vec![]);
    assert_eq!(h.stat("duplicates"), 0);
}

/// Whether the relay has closed `n` rotated files (it logs each close).
fn relay_closed(h: &Harness, n: usize) -> bool {
    let log = std::fs::read_to_string(h.dir.path().join("relay-1.stderr")).unwrap_or_default();
    log.matches("closed rotated file").count() >= n
}

/// While the relay is stopped, a.log is truncated and rewritten in place (same inode,
/// other content, longer than before), and b.log is deleted and recreated (maybe with
/// its old inode number): after the restart both are read from their start.
#[test]
fn files_replaced_while_stopped_are_read_from_their_start() {
    let h = Harness::new();
    let mut g = Gen::new(77);
    let a = h.log("a.log");
    let b = h.log("b.log");
    let (ids_a, lines) = server_lines(&mut g, 0, 50);
    write_lines(&mut common::append_to(&a), &lines);
    let (ids_b, lines) = server_lines(&mut g, 1000, 50);
    write_lines(&mut common::append_to(&b), &lines);
    let mut relay = h.start();
    h.wait_events(&mut relay, 100);
    relay.terminate();

    let (new_a, lines) = server_lines(&mut g, 2000, 120);
    let mut f = OpenOptions::new().write(true).open(&a).unwrap();
    f.set_len(0).unwrap();
    write_lines(&mut f, &lines);
    drop(f);
    std::fs::remove_file(&b).unwrap();
    let (new_b, lines) = server_lines(&mut g, 3000, 30);
    write_lines(&mut common::append_to(&b), &lines);

    let mut relay = h.start();
    h.wait_events(&mut relay, 250);
    std::thread::sleep(Duration::from_millis(500));
    relay.terminate();
    let all: HashSet<String> = [ids_a, ids_b, new_a, new_b].into_iter().flatten().collect();
    assert_exactly_once(&h, &all);
    assert_eq!(
        h.quarantine_rows(),
        vec![],
        "no line read from a stale offset"
    );
    assert_eq!(h.stat("duplicates"), 0);
}

/// A rotated-away file whose writer stopped mid-record (a CRI stderr record with only its
/// `P` piece, a last stdout line without its newline): when the relay closes it, both are
/// quarantined as `truncated_by_rotation`, once, instead of vanishing; the records before
/// them and the new file's are stored.
#[test]
fn what_rotation_cuts_off_is_quarantined_as_truncated_by_rotation() {
    let h = Harness::with(&["format = \"cri\""], &[]);
    let path = h.log("a.log");
    let mut g = Gen::new(0xC07);
    let cri = |stream: &str, tag: &str, text: &str| {
        format!("2024-06-24T13:29:36.1Z {stream} {tag} {text}")
    };
    let (mut ids, lines) = server_lines(&mut g, 0, 20);
    let mut text: String = lines.iter().map(|l| cri("stdout", "F", l) + "\n").collect();
    let partial_at = text.len() as u64;
    let (_, cut) = server_lines(&mut g, 100, 2);
    text += &(cri("stderr", "P", &cut[0][..200]) + "\n");
    let (more, lines) = server_lines(&mut g, 200, 5);
    ids.extend(more);
    text += &lines
        .iter()
        .map(|l| cri("stdout", "F", l) + "\n")
        .collect::<String>();
    let unterminated_at = text.len() as u64;
    // The final piece of a stdout record, without its newline.
    text += &cri("stdout", "F", &cut[1]);
    std::fs::write(&path, &text).unwrap();

    let mut relay = h.start();
    h.wait_events(&mut relay, 25);
    std::fs::rename(&path, h.log("a.log.1")).unwrap();
    let (more, lines) = server_lines(&mut g, 300, 10);
    ids.extend(more);
    let text: String = lines.iter().map(|l| cri("stdout", "F", l) + "\n").collect();
    std::fs::write(&path, text).unwrap();
    h.wait_events(&mut relay, 35);
    h.wait_quarantined(&mut relay, 2);
    // Past rotate_wait once more: nothing is reported twice.
    std::thread::sleep(Duration::from_millis(800));
    relay.terminate();

    let ids: HashSet<String> = ids.into_iter().collect();
    assert_exactly_once(&h, &ids);
    let mut rows = h.quarantine_rows();
    rows.sort_by_key(|r| r.offset);
    let got: Vec<(bool, u64)> = rows
        .iter()
        .map(|r| (r.reason.starts_with("truncated_by_rotation"), r.offset))
        .collect();
    assert_eq!(
        got,
        vec![(true, partial_at), (true, unterminated_at)],
        "{rows:?}"
    );
    assert_eq!(rows[0].raw, cut[0].as_bytes()[..200].to_vec());
    assert!(cut[1].len() < 4096);
    assert_eq!(rows[1].raw, cut[1].as_bytes().to_vec());
}
