//! Retention in the installation store: whole day partitions older than
//! `postgres.retention_days` are dropped, one relay at a time, each recorded first in
//! `audit_purges` with the runs of every relay's sequence numbers it held and the chain
//! hash at each run's end, so that `verify --postgres` can tell a purge from a deletion
//! and pick each chain up again after it.

use super::{schema, PgError, DAY_MS};
use crate::forward::retry::PgClass;
use serde::{Deserialize, Serialize};

/// One relay's run of consecutive sequence numbers in a dropped partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub relay_id: String,
    pub from_seq: i64,
    pub to_seq: i64,
    /// Hex of the chain hash at `to_seq`: where the chain goes on after the run.
    pub head: String,
}

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// Partitions dropped, by name.
    pub dropped: Vec<String>,
    pub rows: u64,
    /// Another relay was running retention: this one did nothing.
    pub skipped: bool,
}

/// Folds `(relay_id, seq, hash)` rows, sorted by relay then seq, into runs.
pub fn runs_of(rows: impl IntoIterator<Item = (String, i64, Vec<u8>)>) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for (relay, seq, hash) in rows {
        match out.last_mut() {
            Some(r) if r.relay_id == relay && r.to_seq + 1 == seq => {
                r.to_seq = seq;
                r.head = crate::integrity::to_hex(&hash);
            }
            _ => out.push(Run {
                relay_id: relay,
                from_seq: seq,
                to_seq: seq,
                head: crate::integrity::to_hex(&hash),
            }),
        }
    }
    out
}

/// Drops every day partition that ends at or before `now_ms - retention_days`, unless
/// another relay holds the retention lock (then it does nothing: that one does it).
pub async fn run_once(
    client: &mut tokio_postgres::Client,
    relay_id: &str,
    retention_days: i64,
    now_ms: i64,
) -> Result<Pass, PgError> {
    let pg = |e: tokio_postgres::Error| PgError::from_pg("retention", &e);
    let cut = super::day_start(now_ms - retention_days * DAY_MS);
    let tx = client.transaction().await.map_err(pg)?;
    let locked: bool = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock($1)",
            &[&schema::RETENTION_LOCK],
        )
        .await
        .map_err(pg)?
        .get(0);
    if !locked {
        return Ok(Pass {
            skipped: true,
            ..Default::default()
        });
    }
    // DROP TABLE needs an exclusive lock: behind a long reader (verify --postgres) it
    // would queue every insert behind it. Give up after a while; the next pass retries.
    tx.batch_execute("SET LOCAL lock_timeout = '5s'")
        .await
        .map_err(pg)?;
    let mut pass = Pass::default();
    let days = schema::partitions(&tx).await?;
    for day in days.into_iter().filter(|d| d + DAY_MS <= cut) {
        let name = schema::partition_name(day);
        let rows = tx
            .query(
                &format!("SELECT relay_id, seq, hash FROM {name} ORDER BY relay_id, seq"),
                &[],
            )
            .await
            .map_err(pg)?;
        let dups = tx
            .query(
                "DELETE FROM audit_duplicates WHERE ts_ms >= $1 AND ts_ms < $2 RETURNING relay_id, seq, hash",
                &[&day, &(day + DAY_MS)],
            )
            .await
            .map_err(pg)?;
        let mut all: Vec<(String, i64, Vec<u8>)> = rows
            .iter()
            .chain(dups.iter())
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        all.sort();
        let n = all.len() as i64;
        let runs = serde_json::to_value(runs_of(all))
            .map_err(|e| PgError::new(PgClass::Other, "retention", e.to_string()))?;
        tx.execute(
            "INSERT INTO audit_purges(partition, from_ms, to_ms, rows, by_relay, runs) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&name, &day, &(day + DAY_MS), &n, &relay_id, &runs],
        )
        .await
        .map_err(pg)?;
        tx.batch_execute(&format!("DROP TABLE {name}"))
            .await
            .map_err(pg)?;
        tracing::info!(partition = %name, rows = n, relay_id, "installation store retention: day partition dropped (recorded in audit_purges)");
        pass.rows += n as u64;
        pass.dropped.push(name);
    }
    tx.commit().await.map_err(pg)?;
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_break_at_gaps_and_relays_and_end_at_the_last_hash() {
        let r = |relay: &str, seq, h: u8| (relay.to_string(), seq, vec![h; 2]);
        let runs = runs_of(vec![
            r("a", 1, 1),
            r("a", 2, 2),
            r("a", 4, 4),
            r("b", 5, 5),
            r("b", 6, 6),
        ]);
        let got: Vec<_> = runs
            .iter()
            .map(|x| (x.relay_id.as_str(), x.from_seq, x.to_seq, x.head.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", 1, 2, "0202"),
                ("a", 4, 4, "0404"),
                ("b", 5, 6, "0606")
            ]
        );
        assert!(runs_of(Vec::new()).is_empty());
    }
}
