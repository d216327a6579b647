//! The chain as the spool stores it: rows read back, the chain's bookkeeping, and the
//! purges of retention (engine-neutral; the SQLite engine reads and writes them).

use super::ledger::LEDGER_ACTION;
use crate::integrity::{chain_hash, Canonical, CHECKPOINT_ORG};

/// One stored row as the chain sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRow {
    pub seq: i64,
    pub ts_ms: i64,
    pub id: Vec<u8>,
    /// The organization key; [`CHECKPOINT_ORG`] for checkpoints.
    pub org: i64,
    /// The organization id behind `org` (empty for checkpoints, `None` when the key is
    /// not in the `orgs` table).
    pub organization_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub body: String,
    /// The stored chain hash (`None` when missing or not 32 bytes).
    pub hash: Option<[u8; 32]>,
}

impl ChainRow {
    /// The hash this row should carry after `prev`, if it sat at sequence `seq`.
    pub fn hash_at(&self, prev: &[u8; 32], seq: i64) -> [u8; 32] {
        chain_hash(
            prev,
            &Canonical {
                seq,
                ts_ms: self.ts_ms,
                id: &self.id,
                organization_id: self.organization_id.as_deref().unwrap_or(""),
                actor: &self.actor,
                action: &self.action,
                body: &self.body,
            },
        )
    }

    /// A checkpoint row: the spool's own (`org` 0), and not a forwarding-ledger row.
    pub fn is_checkpoint(&self) -> bool {
        self.org == CHECKPOINT_ORG && !self.is_ledger()
    }

    /// A forwarding-ledger row: a rejection recorded in the chain (see
    /// [`super::LedgerEntry`]).
    pub fn is_ledger(&self) -> bool {
        self.org == CHECKPOINT_ORG && self.action == LEDGER_ACTION
    }
}

/// What the spool recorded about its own chain, to check the rows against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainMeta {
    /// `meta.last_seq`: the newest sequence number the writer committed.
    pub last_seq: i64,
    /// `meta.chain_head`: the chain hash at `last_seq`.
    pub head: Option<[u8; 32]>,
    /// Everything up to this sequence number was purged by retention (0: nothing).
    pub purged_through: i64,
    /// The chain hash at `purged_through`, recorded by the purge.
    pub purge_anchor: Option<[u8; 32]>,
    /// The newest event time (`ts_ms`) retention has deleted (0: nothing).
    pub purged_max_ts: i64,
    /// The highest forwarding cursor.
    pub max_cursor: i64,
    /// When the writer last committed (ms since the epoch; 0: not recorded).
    pub last_commit_ms: i64,
    /// When the current (or last) writer opened the spool (ms; 0: not recorded).
    pub opened_ms: i64,
}

/// One retention purge, as recorded in the spool.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PurgeRecord {
    pub id: i64,
    /// RFC 3339.
    pub at: String,
    pub deleted: u64,
    /// Events up to this sequence number are gone.
    pub through_seq: i64,
    /// The chain hash at `through_seq`, where verification restarts.
    pub anchor_head: String,
}

/// What one purge step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeStep {
    /// The `purges` row of this run.
    pub run: i64,
    pub deleted: u64,
    /// Everything up to here is gone now.
    pub through: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::GENESIS;

    fn row(org: i64, action: &str) -> ChainRow {
        ChainRow {
            seq: 3,
            ts_ms: 1_000,
            id: vec![1; 16],
            org,
            organization_id: Some(if org == CHECKPOINT_ORG { "" } else { "o" }.into()),
            actor: "a".into(),
            action: action.into(),
            body: "{}".into(),
            hash: None,
        }
    }

    #[test]
    fn checkpoints_and_ledger_rows_are_told_apart_by_org_and_action() {
        assert!(row(CHECKPOINT_ORG, "checkpoint").is_checkpoint());
        assert!(!row(CHECKPOINT_ORG, "checkpoint").is_ledger());
        assert!(row(CHECKPOINT_ORG, LEDGER_ACTION).is_ledger());
        assert!(!row(CHECKPOINT_ORG, LEDGER_ACTION).is_checkpoint());
        // An event whose action happens to be "rejected" is an event.
        assert!(!row(5, LEDGER_ACTION).is_ledger());
        assert!(!row(5, "checkpoint").is_checkpoint());
    }

    #[test]
    fn the_hash_depends_on_position_predecessor_and_every_field() {
        let r = row(5, "startWorkspace");
        let h = r.hash_at(&GENESIS, 3);
        assert_eq!(h, r.hash_at(&GENESIS, 3), "deterministic");
        assert_ne!(h, r.hash_at(&GENESIS, 4), "a moved row hashes differently");
        assert_ne!(
            h,
            r.hash_at(&[1; 32], 3),
            "so does one after another predecessor"
        );
        let changed = [
            ChainRow {
                ts_ms: 1_001,
                ..r.clone()
            },
            ChainRow {
                id: vec![2; 16],
                ..r.clone()
            },
            ChainRow {
                organization_id: Some("p".into()),
                ..r.clone()
            },
            ChainRow {
                actor: "b".into(),
                ..r.clone()
            },
            ChainRow {
                action: "stopWorkspace".into(),
                ..r.clone()
            },
            ChainRow {
                body: "{ }".into(),
                ..r.clone()
            },
        ];
        for c in &changed {
            assert_ne!(c.hash_at(&GENESIS, 3), h, "{c:?}");
        }
        // `hash` (what is stored) is not part of what is hashed; `org` is only a key.
        let stored = ChainRow {
            hash: Some([9; 32]),
            org: 6,
            ..r.clone()
        };
        assert_eq!(stored.hash_at(&GENESIS, 3), h);
    }
}
