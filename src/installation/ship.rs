//! The shipper: a second forwarder, from the local spool into the installation store.
//!
//! Exactly once: each transaction inserts the next rows of the spool in sequence order
//! (events, checkpoints and forwarding-ledger rows alike: the whole chain), locks the
//! relay's registry row, checks that its cursor (`shipped_seq`) is where these rows
//! start, and moves it to the last of them. A crash or a lost answer before the commit
//! leaves the cursor where it was; after it, the rows are there. Either way the next
//! session reads the cursor from the store and goes on from it.
//!
//! Two transactions run at once, on two connections (PostgreSQL gives each its own
//! backend): while one batch's rows go in, so do the next batch's, which commits only
//! after the first, the cursor it follows. Should the first fail, the second does not
//! commit: the session ends and closing its connection rolls it back.
//!
//! The local spool learns the cursor afterwards (the `postgres` cursor, through the
//! writer's inbox), so that retention never purges a row the store has not got.

use super::{connect, day_start, schema, PgError, DAY_MS};
use crate::config::postgres::PostgresConfig;
use crate::forward::retry::PgClass;
use crate::integrity::GENESIS;
use crate::spool::{ChainRow, ForwardProgress, ProgressInbox, Spool};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The local spool's name for the shipper's cursor (a copy of the store's, which rules).
pub const PG_CURSOR: &str = "postgres";

/// How often an idle shipper looks for new rows, and checks its connection.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a relay runs the store's retention (one relay at a time does the work), and
/// how long after connecting it first does.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
const RETENTION_FIRST: Duration = Duration::from_secs(60);
/// How often the shipper refreshes the peers its relay's checkpoints witness.
const PEERS_EVERY: Duration = Duration::from_secs(5);
/// At most this many peers per checkpoint (the most recently seen).
const MAX_PEERS: i64 = 200;
/// Upper bounds (ms) of the transaction-time histogram buckets.
pub const TXN_BUCKETS_MS: [f64; 10] = [
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, 5000.0,
];

/// What the shipper reports, for `/readyz` and `/metrics`.
#[derive(Debug, Default)]
pub struct ShipHealth {
    /// Connected, migrated, holding the relay's lock: shipping.
    pub connected: AtomicBool,
    /// Unix ms since when it has not been connected (0 when it is, or never tried).
    pub down_since_ms: AtomicI64,
    /// The store's cursor for this relay, as last committed.
    pub cursor: AtomicI64,
    /// The spool's newest sequence number seen by the shipper.
    pub spool_seq: AtomicI64,
    /// Event time (ms) of the oldest row not shipped yet; 0 when caught up.
    pub oldest_unshipped_ms: AtomicI64,
    pub shipped_rows: AtomicU64,
    /// Rows whose `(timestamp, id)` another relay's row already held.
    pub duplicates: AtomicU64,
    /// Failures by [`PgClass`] (index = position in [`PgClass::ALL`]).
    pub errors: [AtomicU64; PgClass::COUNT],
    /// Shipping transactions by duration bucket ([`TXN_BUCKETS_MS`], and one beyond).
    pub txn_buckets: [AtomicU64; TXN_BUCKETS_MS.len() + 1],
    pub txn_micros_sum: AtomicU64,
    /// Why it is not shipping, for `/readyz` (None while it ships).
    pub problem: Mutex<Option<String>>,
    /// Partitions this relay's retention dropped.
    pub partitions_dropped: AtomicU64,
}

impl ShipHealth {
    fn failed(&self, e: &PgError) {
        let i = PgClass::ALL.iter().position(|c| *c == e.class).unwrap_or(0);
        self.errors[i].fetch_add(1, Ordering::Relaxed);
        self.connected.store(false, Ordering::Relaxed);
        let _ = self.down_since_ms.compare_exchange(
            0,
            crate::spool::now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        *self.problem.lock().expect("ship health") = Some(e.to_string());
    }

    fn up(&self) {
        self.connected.store(true, Ordering::Relaxed);
        self.down_since_ms.store(0, Ordering::Relaxed);
        *self.problem.lock().expect("ship health") = None;
    }

    fn txn_took(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        let i = TXN_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(TXN_BUCKETS_MS.len());
        self.txn_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.txn_micros_sum
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Why readiness fails because of the store, if it does: not shipping for longer
    /// than `grace_ms`.
    pub fn not_ready(&self, grace_ms: i64) -> Option<String> {
        let since = self.down_since_ms.load(Ordering::Relaxed);
        if since == 0 || crate::spool::now_ms() - since <= grace_ms {
            return None;
        }
        let why = self.problem.lock().expect("ship health").clone();
        Some(format!(
            "not shipping to PostgreSQL: {}",
            why.unwrap_or_else(|| "not connected".into())
        ))
    }
}

/// The shipper of one relay.
pub struct Shipper {
    cfg: PostgresConfig,
    relay_id: String,
    spool_dir: PathBuf,
    inbox: ProgressInbox,
    cancel: CancellationToken,
    health: Arc<ShipHealth>,
    /// Id of the key that signs this relay's checkpoints (recorded in the registry).
    key_id: Option<String>,
}

/// Where a session starts: the registry row.
struct Registered {
    cursor: i64,
}

impl Shipper {
    pub fn new(
        cfg: PostgresConfig,
        relay_id: String,
        spool_dir: PathBuf,
        inbox: ProgressInbox,
        cancel: CancellationToken,
        health: Arc<ShipHealth>,
        key_id: Option<String>,
    ) -> Self {
        Shipper {
            cfg,
            relay_id,
            spool_dir,
            inbox,
            cancel,
            health,
            key_id,
        }
    }

    /// Runs [`Shipper::run`], started again if it panics (a bug; nothing is lost: the
    /// next run starts from the store's cursor).
    pub async fn supervised(self) {
        let me = Arc::new(self);
        loop {
            let run = me.clone();
            let ended = tokio::spawn(async move { run.run().await }).await;
            match ended {
                Ok(()) => return,
                Err(_) if me.cancel.is_cancelled() => return,
                Err(e) => {
                    tracing::error!(error = %e, "the installation store's shipper died; restarting it");
                    me.health.connected.store(false, Ordering::Relaxed);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = me.cancel.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Ships until shutdown, reconnecting after every failure (sooner for one that may
    /// pass by itself). Nothing is skipped: every session starts from the store's cursor.
    pub async fn run(&self) {
        let mut delay = Duration::from_millis(250);
        let mut last_logged: Option<(PgClass, Instant)> = None;
        while !self.cancel.is_cancelled() {
            let started = Instant::now();
            match self.session().await {
                Ok(()) => return,
                Err(e) => {
                    self.health.failed(&e);
                    // Once per class, then once a minute while it lasts.
                    let log = match last_logged {
                        Some((c, t)) => c != e.class || t.elapsed() >= Duration::from_secs(60),
                        None => true,
                    };
                    if log {
                        last_logged = Some((e.class, Instant::now()));
                        if e.class.is_transient() {
                            tracing::warn!(error = %e, class = e.class.label(), relay_id = %self.relay_id, "installation store unavailable; shipping resumes when it is back (events stay in the spool)");
                        } else {
                            tracing::error!(error = %e, class = e.class.label(), relay_id = %self.relay_id, "cannot ship to the installation store until this is fixed (events stay in the spool)");
                        }
                    }
                    if started.elapsed() > Duration::from_secs(10) {
                        delay = Duration::from_millis(250);
                    }
                    let wait = if e.class.is_transient() {
                        delay
                    } else {
                        MAX_BACKOFF
                    };
                    delay = (delay * 2).min(MAX_BACKOFF);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.cancel.cancelled() => return,
                    }
                }
            }
        }
    }

    /// One connection's life: connect, migrate, lock, register, ship until it breaks.
    async fn session(&self) -> Result<(), PgError> {
        let mut client = tokio::select! {
            c = connect(&self.cfg) => c?,
            _ = self.cancel.cancelled() => return Ok(()),
        };
        schema::migrate(&mut client, &self.relay_id).await?;
        let locked: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended('audit-relay/relay/' || $1, 0))",
                &[&self.relay_id],
            )
            .await
            .map_err(|e| PgError::from_pg("locking postgres.relay_id", &e))?
            .get(0);
        if !locked {
            return Err(PgError::new(
                PgClass::Config,
                "postgres.relay_id",
                format!("another running relay ships as relay_id {:?}: each relay needs its own (set postgres.relay_id, e.g. \"{{pod}}\")", self.relay_id),
            ));
        }
        let spool = open_spool(&self.spool_dir).await?;
        let Registered { mut cursor } = self.register(&client, &spool).await?;
        self.health.cursor.store(cursor, Ordering::Relaxed);
        let today = day_start(crate::spool::now_ms());
        let mut known = schema::partitions(&client).await?;
        let ahead: BTreeSet<i64> = (0..3).map(|d| today + d * DAY_MS).collect();
        if !ahead.is_subset(&known) {
            schema::ensure_partitions(&mut client, &ahead).await?;
            known.extend(ahead);
        }
        self.health.up();
        tracing::info!(relay_id = %self.relay_id, cursor, "shipping to the installation store");
        // A second connection: two batches go in at once, each in its own transaction
        // (PostgreSQL runs one backend per connection), and commit in order.
        // [0] also runs the DDL, retention and the registry reads.
        let second = tokio::select! {
            c = connect(&self.cfg) => c?,
            _ = self.cancel.cancelled() => return Ok(()),
        };
        let mut conns = [client, second];
        let step = self.cfg.batch_rows.max(1);
        let mut end = read_last_seq(&spool).await?;
        let mut last_day_check = Instant::now();
        let mut peers_at: Option<Instant> = None;
        let mut prefetched: Option<(i64, Vec<ChainRow>)> = None;
        let mut retention_at = Instant::now() + RETENTION_FIRST;
        while !self.cancel.is_cancelled() {
            if peers_at.is_none_or(|t| t.elapsed() >= PEERS_EVERY) {
                peers_at = Some(Instant::now());
                self.refresh_peers(&conns[0]).await?;
            }
            if Instant::now() >= retention_at {
                retention_at = Instant::now() + RETENTION_EVERY;
                let pass = match super::retention::run_once(
                    &mut conns[0],
                    &self.relay_id,
                    self.cfg.retention_days,
                    crate::spool::now_ms(),
                )
                .await
                {
                    Ok(pass) => pass,
                    Err(e) if e.class == PgClass::Connection => return Err(e),
                    Err(e) => {
                        // Shipping goes on; retention tries again at its next pass.
                        tracing::warn!(error = %e, "installation store retention did not run; trying again in an hour");
                        super::retention::Pass::default()
                    }
                };
                self.health
                    .partitions_dropped
                    .fetch_add(pass.dropped.len() as u64, Ordering::Relaxed);
                if !pass.dropped.is_empty() {
                    known = schema::partitions(&conns[0]).await?;
                }
            }
            end = end.max(self.inbox.committed_seq());
            self.health.spool_seq.store(end, Ordering::Relaxed);
            if end <= cursor {
                self.health.oldest_unshipped_ms.store(0, Ordering::Relaxed);
                if conns.iter().any(|c| c.is_closed()) {
                    return Err(PgError::new(
                        PgClass::Connection,
                        "shipping",
                        "the connection was closed",
                    ));
                }
                if last_day_check.elapsed() > Duration::from_secs(600) {
                    // Partitions ahead for the next days, while idle.
                    last_day_check = Instant::now();
                    let today = day_start(crate::spool::now_ms());
                    let ahead: BTreeSet<i64> = (0..3).map(|d| today + d * DAY_MS).collect();
                    if !ahead.is_subset(&known) {
                        schema::ensure_partitions(&mut conns[0], &ahead).await?;
                        known = schema::partitions(&conns[0]).await?;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = self.cancel.cancelled() => return Ok(()),
                }
                continue;
            }
            let to = end.min(cursor + (conns.len() * step) as i64);
            // The rows read while the last transactions ran, when they are these.
            let rows = match prefetched.take() {
                Some((from, rows)) if from == cursor + 1 && !rows.is_empty() => rows,
                _ => read_rows(&spool, cursor + 1, to).await?,
            };
            let Some(first) = rows.first() else {
                return Err(PgError::new(
                    PgClass::Other,
                    "reading the spool",
                    format!("no rows after seq {cursor} although the spool holds seq {end}"),
                ));
            };
            if first.seq != cursor + 1 {
                return Err(PgError::new(
                    PgClass::Other,
                    "reading the spool",
                    format!(
                        "the store holds this relay's rows up to seq {cursor}, but the spool's next row is seq {}: seq {}..{} were purged locally before they were shipped (see docs/operations.md, \"The store is behind the spool\")",
                        first.seq,
                        cursor + 1,
                        first.seq - 1
                    ),
                ));
            }
            self.health
                .oldest_unshipped_ms
                .store(first.ts_ms, Ordering::Relaxed);
            let days: BTreeSet<i64> = rows.iter().map(|r| day_start(r.ts_ms)).collect();
            if !days.is_subset(&known) {
                schema::ensure_partitions(&mut conns[0], &days).await?;
                known = schema::partitions(&conns[0]).await?;
            }
            let batches: Vec<&[ChainRow]> = rows.chunks(step).collect();
            let last_seq = rows.last().expect("not empty").seq;
            let next_to = end.min(last_seq + (conns.len() * step) as i64);
            // Two batches go in at once (one transaction each) while the next rows are
            // read from the spool; the second commits after the first, whose cursor it
            // follows. So that the first never waits for the second (PostgreSQL cannot
            // see a wait inside this process), the second starts only once the first
            // holds its lock on the table: DDL queued between them (another relay
            // creating a partition) then waits for the first, which goes on and commits.
            let (locked_tx, locked_rx) = tokio::sync::oneshot::channel::<()>();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            let (c0, c1) = (&conns[0], &conns[1]);
            let first = batches[0];
            // Each transaction is timed from its BEGIN to its COMMIT (the second's time
            // includes its wait for the first's commit: its rows stay uncommitted so long).
            let first_lane = async move {
                let began = Instant::now();
                begin_batch(c0).await?;
                let _ = locked_tx.send(());
                self.insert_batch(c0, first).await?;
                self.commit_batch(c0, cursor, first).await?;
                self.health.txn_took(began.elapsed());
                let _ = done_tx.send(());
                Ok::<_, PgError>(())
            };
            let second = batches.get(1).copied();
            let second_lane = async move {
                let Some(rows) = second else {
                    return Ok(false);
                };
                // The first lane failed: its error ends the session, and closing the
                // connections rolls this one back.
                if locked_rx.await.is_err() {
                    return Ok(false);
                }
                let began = Instant::now();
                begin_batch(c1).await?;
                self.insert_batch(c1, rows).await?;
                if done_rx.await.is_err() {
                    return Ok(false);
                }
                let after = first.last().expect("not empty").seq;
                self.commit_batch(c1, after, rows).await?;
                self.health.txn_took(began.elapsed());
                Ok::<_, PgError>(true)
            };
            let (first_done, second_done, next) = tokio::join!(first_lane, second_lane, async {
                if next_to > last_seq {
                    Some(read_rows(&spool, last_seq + 1, next_to).await)
                } else {
                    None
                }
            });
            if let Some(Ok(next)) = next {
                prefetched = Some((last_seq + 1, next));
            }
            let committed: &[&[ChainRow]] = match (&first_done, &second_done) {
                (Ok(()), Ok(true)) => &batches[..2],
                (Ok(()), _) => &batches[..1],
                _ => &[],
            };
            for batch in committed {
                cursor = batch.last().expect("not empty").seq;
                self.health.cursor.store(cursor, Ordering::Relaxed);
                self.health
                    .shipped_rows
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.inbox.push(ForwardProgress {
                    cursor_name: PG_CURSOR.into(),
                    cursor,
                    forwarded: 0,
                    rejected: Vec::new(),
                });
            }
            if let Err(e) = first_done.and(second_done) {
                // A partition dropped by retention meanwhile: look again next time.
                known.clear();
                return Err(e);
            }
        }
        Ok(())
    }

    /// The other relays' registry heads (seen in the last 7 days, newest first), for the
    /// next checkpoints to witness: a chain deleted with its registry row stays visible.
    async fn refresh_peers(&self, client: &tokio_postgres::Client) -> Result<(), PgError> {
        let rows = client
            .query(
                "SELECT relay_id, shipped_seq, chain_head FROM audit_relays
                 WHERE relay_id <> $1 AND shipped_seq >= first_seq
                   AND last_seen > now() - interval '7 days'
                 ORDER BY last_seen DESC, relay_id LIMIT $2",
                &[&self.relay_id, &MAX_PEERS],
            )
            .await
            .map_err(|e| PgError::from_pg("reading the registry", &e))?;
        let mut peers: Vec<crate::integrity::Peer> = rows
            .iter()
            .map(|r| crate::integrity::Peer {
                relay_id: r.get(0),
                seq: r.get(1),
                chain_head: crate::integrity::to_hex(r.get::<_, &[u8]>(2)),
            })
            .collect();
        peers.sort_by(|a, b| a.relay_id.cmp(&b.relay_id));
        self.inbox.set_peers(peers);
        Ok(())
    }

    /// Reads (or makes) the relay's registry row; checks that it belongs to this spool.
    async fn register(
        &self,
        client: &tokio_postgres::Client,
        spool: &Arc<Mutex<Spool>>,
    ) -> Result<Registered, PgError> {
        let meta = {
            let spool = spool.clone();
            tokio::task::spawn_blocking(move || spool.lock().expect("spool").chain_meta())
                .await
                .map_err(|e| PgError::new(PgClass::Other, "reading the spool", e.to_string()))?
                .map_err(|e| PgError::new(PgClass::Other, "reading the spool", e.to_string()))?
        };
        // A spool already cut by retention starts shipping after its cut, anchored at
        // the chain hash the cut recorded.
        let (first_seq, anchor) = if meta.purged_through > 0 {
            (
                meta.purged_through + 1,
                meta.purge_anchor.unwrap_or(GENESIS).to_vec(),
            )
        } else {
            (1, GENESIS.to_vec())
        };
        let pg = |e: tokio_postgres::Error| PgError::from_pg("registering the relay", &e);
        client
            .execute(
                "INSERT INTO audit_relays(relay_id, first_seq, anchor, shipped_seq, chain_head, key_id)
                 VALUES ($1, $2, $3, $5, $3, $4) ON CONFLICT (relay_id) DO NOTHING",
                &[&self.relay_id, &first_seq, &anchor, &self.key_id, &(first_seq - 1)],
            )
            .await
            .map_err(pg)?;
        let row = client
            .query_one(
                "UPDATE audit_relays SET last_seen = now(), key_id = coalesce($2, key_id)
                 WHERE relay_id = $1 RETURNING shipped_seq, first_seq",
                &[&self.relay_id, &self.key_id],
            )
            .await
            .map_err(pg)?;
        let cursor: i64 = row.get(0);
        let first: i64 = row.get(1);
        if cursor >= first && cursor <= meta.last_seq && cursor > meta.purged_through {
            // The store's head must be this spool's hash at the cursor: the same chain.
            let head: Vec<u8> = client
                .query_one(
                    "SELECT chain_head FROM audit_relays WHERE relay_id = $1",
                    &[&self.relay_id],
                )
                .await
                .map_err(pg)?
                .get(0);
            let local = read_rows(spool, cursor, cursor).await?;
            let same = local
                .first()
                .is_some_and(|r| r.hash.map(|h| h.to_vec()) == Some(head.clone()));
            if !same {
                return Err(PgError::new(
                    PgClass::Config,
                    "postgres.relay_id",
                    format!(
                        "the store's chain of relay_id {:?} at seq {cursor} is not this spool's: another spool ships (or shipped) under this relay_id; give each spool its own relay_id (see docs/operations.md, \"A relay's spool was lost\")",
                        self.relay_id
                    ),
                ));
            }
        }
        if cursor > meta.last_seq {
            return Err(PgError::new(
                PgClass::Config,
                "postgres.relay_id",
                format!(
                    "the store holds rows of relay_id {:?} up to seq {cursor}, but this spool ends at seq {}: this is another (or a new) spool under an old relay_id; give it a relay_id of its own (see docs/operations.md, \"A relay's spool was lost\")",
                    self.relay_id, meta.last_seq
                ),
            ));
        }
        Ok(Registered { cursor })
    }

    /// One transaction: rows `cursor+1..` in, the cursor to their last.
    /// Inserts a batch's rows in the transaction [`begin_batch`] opened.
    /// Rows of one relay are almost never another relay's too: a binary COPY first
    /// (PostgreSQL's cheapest path per row, several rows per heap WAL record; no
    /// speculative insertion as ON CONFLICT needs), in a savepoint that a unique
    /// violation rolls back to, and only then the insert that sorts the duplicates out.
    async fn insert_batch(
        &self,
        client: &tokio_postgres::Client,
        rows: &[ChainRow],
    ) -> Result<(), PgError> {
        let pg = |e: tokio_postgres::Error| PgError::from_pg("shipping", &e);
        match copy_rows(client, &self.relay_id, rows).await {
            Ok(_) => {
                return client
                    .batch_execute("RELEASE SAVEPOINT plain")
                    .await
                    .map_err(pg);
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                client
                    .batch_execute("ROLLBACK TO SAVEPOINT plain")
                    .await
                    .map_err(pg)?;
            }
            Err(e) => return Err(pg(e)),
        }
        let cols = Columns::of(rows);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
            &cols.ts,
            &cols.id,
            &cols.seq,
            &cols.org,
            &cols.actor,
            &cols.action,
            &cols.body,
            &cols.hash,
            &self.relay_id,
        ];
        let inserted = client
            .query(
                &format!(
                    "{INSERT_EVENTS} {FROM_COLUMNS} ON CONFLICT (ts_ms, id) DO NOTHING RETURNING seq"
                ),
                &params,
            )
            .await
            .map_err(pg)?;
        // Another relay stored the same (timestamp, id) first: keep this relay's row
        // whole beside it, so its chain still verifies.
        let got: BTreeSet<i64> = inserted.iter().map(|r| r.get(0)).collect();
        let dup: Vec<ChainRow> = rows
            .iter()
            .filter(|r| !got.contains(&r.seq))
            .cloned()
            .collect();
        let d = Columns::of(&dup);
        client
            .execute(
                &format!(
                    "INSERT INTO audit_duplicates(ts_ms, id, relay_id, seq, organization_id, actor, action, body, hash) {FROM_COLUMNS}"
                ),
                &[&d.ts, &d.id, &d.seq, &d.org, &d.actor, &d.action, &d.body, &d.hash, &self.relay_id],
            )
            .await
            .map_err(pg)?;
        self.health
            .duplicates
            .fetch_add(dup.len() as u64, Ordering::Relaxed);
        tracing::warn!(relay_id = %self.relay_id, rows = dup.len(), "events already in the installation store from another relay (same timestamp and id): kept in audit_duplicates");
        Ok(())
    }

    /// The second half, after the batch before committed: locks the relay's registry
    /// row, checks that the store's cursor is `after` (where this batch starts), moves
    /// it to the batch's end and commits rows and cursor together.
    async fn commit_batch(
        &self,
        client: &tokio_postgres::Client,
        after: i64,
        rows: &[ChainRow],
    ) -> Result<(), PgError> {
        let pg = |e: tokio_postgres::Error| PgError::from_pg("shipping", &e);
        let last = rows.last().expect("not empty");
        let head = last.hash.map(|h| h.to_vec()).unwrap_or_default();
        let shipped: i64 = client
            .query_one(
                "SELECT shipped_seq FROM audit_relays WHERE relay_id = $1 FOR UPDATE",
                &[&self.relay_id],
            )
            .await
            .map_err(pg)?
            .get(0);
        if shipped != after {
            return Err(PgError::new(
                PgClass::Other,
                "shipping",
                format!("the store's cursor for relay_id {:?} is {shipped}, not {after}: another writer moved it; starting over from the store's", self.relay_id),
            ));
        }
        client
            .execute(
                "UPDATE audit_relays SET shipped_seq = $2, chain_head = $3, last_seen = now() WHERE relay_id = $1",
                &[&self.relay_id, &last.seq, &head],
            )
            .await
            .map_err(pg)?;
        client.batch_execute("COMMIT").await.map_err(pg)
    }
}

/// Opens a batch's transaction, holding the table's insert lock (the one DDL waits for),
/// and the savepoint the COPY rolls back to.
async fn begin_batch(client: &tokio_postgres::Client) -> Result<(), PgError> {
    client
        .batch_execute("BEGIN; LOCK TABLE ONLY audit_events IN ROW EXCLUSIVE MODE; SAVEPOINT plain")
        .await
        .map_err(|e| PgError::from_pg("shipping", &e))
}

/// Copies rows of relay `relay_id` into `audit_events` (binary COPY; a row whose
/// `(ts_ms, id)` is already there fails the whole copy with a unique violation).
async fn copy_rows(
    tx: &tokio_postgres::Client,
    relay_id: &str,
    rows: &[ChainRow],
) -> Result<u64, tokio_postgres::Error> {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::{ToSql, Type};
    let sink = tx
        .copy_in("COPY audit_events(ts_ms, id, relay_id, seq, organization_id, actor, action, body, hash) FROM STDIN (FORMAT binary)")
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT8,
            Type::UUID,
            Type::TEXT,
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::BYTEA,
        ],
    );
    tokio::pin!(writer);
    for r in rows {
        let (id, org, hash) = store_values(r);
        let row: [&(dyn ToSql + Sync); 9] = [
            &r.ts_ms, &id, &relay_id, &r.seq, &org, &r.actor, &r.action, &r.body, &hash,
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await
}

const INSERT_EVENTS: &str = "INSERT INTO audit_events(ts_ms, id, relay_id, seq, organization_id, actor, action, body, hash)";
/// The rows of [`Columns`] ($1..$8) of relay $9, as the insert's source.
const FROM_COLUMNS: &str = "SELECT t, i, $9, s, o, a, c, b, h
     FROM unnest($1::int8[], $2::uuid[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bytea[])
          AS u(t, i, s, o, a, c, b, h)";

/// The rows of a transaction as column arrays (for `unnest`).
struct Columns<'a> {
    ts: Vec<i64>,
    id: Vec<uuid::Uuid>,
    seq: Vec<i64>,
    org: Vec<&'a str>,
    actor: Vec<&'a str>,
    action: Vec<&'a str>,
    body: Vec<&'a str>,
    hash: Vec<&'a [u8]>,
}

impl<'a> Columns<'a> {
    fn of(rows: &'a [ChainRow]) -> Self {
        Columns {
            ts: rows.iter().map(|r| r.ts_ms).collect(),
            id: rows.iter().map(|r| store_values(r).0).collect(),
            seq: rows.iter().map(|r| r.seq).collect(),
            org: rows.iter().map(|r| store_values(r).1).collect(),
            actor: rows.iter().map(|r| r.actor.as_str()).collect(),
            action: rows.iter().map(|r| r.action.as_str()).collect(),
            body: rows.iter().map(|r| r.body.as_str()).collect(),
            hash: rows.iter().map(|r| store_values(r).2).collect(),
        }
    }
}

/// A row's id, organization and hash as the store keeps them: the id as a UUID, a
/// missing organization as `""`, a missing hash as no bytes.
fn store_values(r: &ChainRow) -> (uuid::Uuid, &str, &[u8]) {
    (
        uuid::Uuid::from_slice(&r.id).unwrap_or_default(),
        r.organization_id.as_deref().unwrap_or(""),
        r.hash.as_ref().map(|h| h.as_slice()).unwrap_or(&[]),
    )
}

fn spool_err(e: impl std::fmt::Display) -> PgError {
    PgError::new(PgClass::Other, "reading the spool", e.to_string())
}

async fn open_spool(dir: &std::path::Path) -> Result<Arc<Mutex<Spool>>, PgError> {
    let dir = dir.to_path_buf();
    let s = tokio::task::spawn_blocking(move || Spool::open_read_only(&dir))
        .await
        .map_err(spool_err)?
        .map_err(spool_err)?;
    Ok(Arc::new(Mutex::new(s)))
}

async fn read_last_seq(spool: &Arc<Mutex<Spool>>) -> Result<i64, PgError> {
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || spool.lock().expect("spool").chain_meta())
        .await
        .map_err(spool_err)?
        .map_err(spool_err)
        .map(|m| m.last_seq)
}

async fn read_rows(
    spool: &Arc<Mutex<Spool>>,
    from: i64,
    to: i64,
) -> Result<Vec<ChainRow>, PgError> {
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || {
        let mut rows = Vec::with_capacity((to - from + 1).clamp(0, 50_000) as usize);
        spool.lock().expect("spool").chain_each(from, to, |r| {
            rows.push(r);
            std::ops::ControlFlow::Continue(())
        })?;
        Ok::<_, crate::spool::SpoolError>(rows)
    })
    .await
    .map_err(spool_err)?
    .map_err(spool_err)
}
