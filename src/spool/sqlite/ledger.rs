//! The forwarding ledger in SQLite (see [`crate::spool::LedgerEntry`]).

use super::super::{now_ms, LedgerEntry, SpoolError, LEDGER_ACTION};
use super::Spool;
use rusqlite::OptionalExtension;

impl Spool {
    /// Adds a forwarding-ledger row for `entry` to the open transaction (chained like any
    /// row; forwarders step over it, it is not sent).
    pub(super) fn write_ledger(
        &mut self,
        entry: &LedgerEntry,
        time_ms: i64,
    ) -> Result<(), SpoolError> {
        self.append_own_row(LEDGER_ACTION, &entry.to_json(), time_ms)
    }

    /// Records every row of `rejected` in the ledger, in one transaction (the upgrade to
    /// format 4: rejections made before it are vouched for from the upgrade on).
    pub(super) fn ledger_existing_rejections(&mut self) -> Result<u64, SpoolError> {
        let rows: Vec<(i64, String, String)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT seq, reason, detail FROM rejected ORDER BY seq")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        if rows.is_empty() {
            return Ok(0);
        }
        self.begin()?;
        let at = now_ms();
        for (seq, reason, detail) in &rows {
            let entry = LedgerEntry {
                kind: "rejection".into(),
                seq: *seq,
                cursor: String::new(),
                reason: reason.clone(),
                detail: detail.clone(),
            };
            self.write_ledger(&entry, at)?;
        }
        self.commit()?;
        Ok(rows.len() as u64)
    }

    /// The forwarding-ledger entry that records event `seq` as rejected, if the chain
    /// holds one (an index lookup: memory stays flat however many there are).
    pub fn chained_rejection(&self, seq: i64) -> Result<Option<LedgerEntry>, SpoolError> {
        // The literals match the partial index `events_ledger`.
        let body: Option<String> = self
            .conn
            .prepare_cached(
                "SELECT body FROM events WHERE org = 0 AND action = 'rejected' AND json_extract(body, '$.seq') = ?1 LIMIT 1",
            )?
            .query_row([seq], |r| r.get(0))
            .optional()?;
        match body {
            None => Ok(None),
            Some(b) => LedgerEntry::from_json(&b)
                .map(Some)
                .map_err(|reason| SpoolError::Corrupt { seq, reason }),
        }
    }

    /// Whether the `rejected` table (bookkeeping outside the chain) marks event `seq`.
    pub fn marked_rejected(&self, seq: i64) -> Result<bool, SpoolError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM rejected WHERE seq = ?1")?
            .query_row([seq], |_| Ok(()))
            .optional()?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Durability, Envelope};
    use crate::event::{decode, format_timestamp_ms, Decoded};
    use crate::spool::AppendBatch;

    #[test]
    fn the_upgrade_to_format_4_records_earlier_rejections_in_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        let events = (0..3u128).map(|i| {
            let line = serde_json::json!({
                "id": uuid::Uuid::from_u128(i + 1).to_string(),
                "timestamp": format_timestamp_ms(1000 + i as i64), "action": "startWorkspace",
                "organizationId": "o", "actorId": "a", "args": [],
            })
            .to_string();
            match decode(line.as_bytes(), Envelope::Event) {
                Decoded::Event(e) => e,
                other => panic!("{other:?}"),
            }
        });
        s.append(&AppendBatch {
            events: events.collect(),
            ..Default::default()
        })
        .unwrap();
        drop(s);
        // Format 3: a rejection only in the table, no ledger index.
        let c = rusqlite::Connection::open(dir.path().join("spool.db")).unwrap();
        c.execute_batch(
            "INSERT INTO rejected(seq, reason, detail, at_ms) VALUES (2, 'too_old', 'old', 0);
             DROP INDEX events_ledger; PRAGMA user_version = 3;",
        )
        .unwrap();
        drop(c);
        let s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        let e = s
            .chained_rejection(2)
            .unwrap()
            .expect("recorded by the upgrade");
        assert_eq!(
            (e.seq, e.reason.as_str(), e.cursor.as_str()),
            (2, "too_old", "")
        );
        assert!(s.chained_rejection(3).unwrap().is_none());
        assert_eq!(s.last_seq(), 4, "one ledger row after the three events");
        let r = crate::verify::verify_spool(&s, &Default::default()).unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!(r.ledger_rows, 1);
        // Opening again adds nothing.
        drop(s);
        let s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        assert_eq!(s.last_seq(), 4);
    }
}
