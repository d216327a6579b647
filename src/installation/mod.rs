//! The installation store: one PostgreSQL database that every relay of an installation
//! ships its spool to (`[postgres]`), so that any relay's query API can answer for all
//! of them (`api.store = "postgres"`).
//!
//! - [`schema`]: the tables, their versioned migrations, the day partitions.
//! - [`ship`]: the shipper, a second forwarder from the local spool into PostgreSQL,
//!   exactly once (its cursor moves in the transaction that inserts the rows).
//! - [`retention`]: dropping whole day partitions past `postgres.retention_days`.
//!
//! # Invariants
//!
//! - A relay's rows keep its `seq`, its chain `hash` and its checkpoint rows: each
//!   relay's chain can be verified in PostgreSQL as in its spool.
//! - `audit_relays.shipped_seq` is the relay's cursor: rows `first_seq..=shipped_seq` of its
//!   spool are in the store (in `audit_events`, or in `audit_duplicates` when another
//!   relay already stored the same `(timestamp, id)`), and it only moves in the commit
//!   that inserted them.
//! - One relay ships per `relay_id` (a session advisory lock).
//! - Rows leave only by retention dropping a whole day partition, recorded first in
//!   `audit_purges` with, for every relay, the runs of sequence numbers dropped and the
//!   chain hash at each run's end (where verification picks up again).

pub mod iam;
pub mod query;
pub mod retention;
pub mod schema;
pub mod ship;
pub mod verify;

use crate::config::cloudwatch::{expand_stream, StreamVars};
use crate::config::postgres::{PostgresConfig, SslMode};
use crate::forward::retry::{classify_postgres, PgClass};
use std::fmt;
use std::sync::Arc;

/// A failed operation on the installation store.
#[derive(Debug)]
pub struct PgError {
    pub class: PgClass,
    /// What was being done, e.g. "connecting to postgres.url".
    pub context: String,
    pub message: String,
}

impl PgError {
    pub fn new(class: PgClass, context: impl Into<String>, message: impl Into<String>) -> Self {
        PgError {
            class,
            context: context.into(),
            message: message.into(),
        }
    }

    /// Wraps a client error, classified.
    pub fn from_pg(context: impl Into<String>, e: &tokio_postgres::Error) -> Self {
        let message = match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => {
                // The client's own text and its cause (I/O, TLS) without the source chain's
                // repetition.
                let mut m = e.to_string();
                if let Some(src) = std::error::Error::source(e) {
                    let s = src.to_string();
                    if !m.contains(&s) {
                        m = format!("{m}: {s}");
                    }
                }
                m
            }
        };
        let class = if e.is_closed() {
            PgClass::Connection
        } else {
            classify_postgres(e.code().map(|c| c.code()), &message)
        };
        PgError::new(class, context, message)
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.message)?;
        if let Some(key) = self.class.key() {
            write!(f, " (check {key})")?;
        }
        Ok(())
    }
}

impl std::error::Error for PgError {}

/// The relay's identity in the store: `postgres.relay_id` with its templates expanded.
pub fn relay_id(cfg: &PostgresConfig) -> Result<String, String> {
    let id = expand_stream(&cfg.relay_id, &StreamVars::from_env())
        .map_err(|e| format!("postgres.relay_id: {e}"))?;
    if id.len() > 200 {
        return Err(format!(
            "postgres.relay_id: {id:?} is longer than 200 characters"
        ));
    }
    Ok(id)
}

/// The client configuration: the URL, the password from its file, the timeouts.
fn client_config(cfg: &PostgresConfig) -> Result<tokio_postgres::Config, PgError> {
    let mut pg: tokio_postgres::Config = cfg.url.parse().map_err(|e: tokio_postgres::Error| {
        PgError::new(PgClass::Config, "postgres.url", e.to_string())
    })?;
    if let Some(file) = &cfg.password_file {
        let text = std::fs::read_to_string(file).map_err(|e| {
            PgError::new(
                PgClass::Config,
                "postgres.password_file",
                format!("cannot read {}: {e}", file.display()),
            )
        })?;
        pg.password(text.trim_end_matches(['\n', '\r']));
    }
    pg.connect_timeout(cfg.connect_timeout.0);
    pg.keepalives(true);
    pg.application_name("audit-relay");
    pg.ssl_mode(match cfg.sslmode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    });
    Ok(pg)
}

/// rustls with exactly the CAs of `postgres.ca_file` (the host name is checked too).
fn tls(cfg: &PostgresConfig) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad = |m: String| PgError::new(PgClass::Tls, "postgres.ca_file", m);
    let file = cfg
        .ca_file
        .as_ref()
        .ok_or_else(|| bad("required with sslmode = \"verify-full\"".into()))?;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| bad(format!("cannot read {}: {e}", file.display())))?;
    for c in certs {
        let c = c.map_err(|e| bad(format!("{}: not PEM certificates: {e}", file.display())))?;
        roots
            .add(c)
            .map_err(|e| bad(format!("{}: {e}", file.display())))?;
    }
    if roots.is_empty() {
        return Err(bad(format!("{} holds no certificate", file.display())));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// One connection (the shipper's own, which holds its advisory lock). The connection's
/// task ends when it breaks; the client's calls then fail as [`PgClass::Connection`].
pub async fn connect(cfg: &PostgresConfig) -> Result<tokio_postgres::Client, PgError> {
    let mut pg = client_config(cfg)?;
    if cfg.iam_auth {
        pg.password(iam::token(cfg).await?);
    }
    let what = "connecting to postgres.url";
    macro_rules! spawn_conn {
        ($conn:expr) => {
            tokio::spawn(async move {
                if let Err(e) = $conn.await {
                    tracing::debug!(error = %e, "postgres connection ended");
                }
            })
        };
    }
    match cfg.sslmode {
        SslMode::Disable => {
            let (client, conn) = pg
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| login_failed(cfg, PgError::from_pg(what, &e)))?;
            spawn_conn!(conn);
            Ok(client)
        }
        SslMode::VerifyFull => {
            let (client, conn) = pg
                .connect(tls(cfg)?)
                .await
                .map_err(|e| login_failed(cfg, PgError::from_pg(what, &e)))?;
            spawn_conn!(conn);
            Ok(client)
        }
    }
}

/// A pool of connections for reads (the query API), `postgres.pool_size` at most.
pub fn pool(cfg: &PostgresConfig) -> Result<deadpool_postgres::Pool, PgError> {
    let mut pg = client_config(cfg)?;
    // The page query's generic plan (run-time pruning of the partitions, the API index)
    // from the first call: PostgreSQL otherwise plans the first five calls of each
    // connection for their values, over every partition (~1.6 ms each with 90 days),
    // and may pick a scan of the primary key that filters a whole day.
    pg.options("-c plan_cache_mode=force_generic_plan");
    let mc = deadpool_postgres::ManagerConfig {
        recycling_method: deadpool_postgres::RecyclingMethod::Fast,
    };
    let mgr = match (cfg.sslmode, cfg.iam_auth) {
        (SslMode::Disable, _) => {
            deadpool_postgres::Manager::from_config(pg, tokio_postgres::NoTls, mc)
        }
        (SslMode::VerifyFull, false) => deadpool_postgres::Manager::from_config(pg, tls(cfg)?, mc),
        (SslMode::VerifyFull, true) => {
            let connect = IamConnect {
                inner: deadpool_postgres::ConfigConnectImpl { tls: tls(cfg)? },
                cfg: cfg.clone(),
            };
            deadpool_postgres::Manager::from_connect(pg, connect, mc)
        }
    };
    deadpool_postgres::Pool::builder(mgr)
        .max_size(cfg.pool_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(cfg.connect_timeout.0))
        .create_timeout(Some(cfg.connect_timeout.0))
        .recycle_timeout(Some(cfg.connect_timeout.0))
        .build()
        .map_err(|e| PgError::new(PgClass::Config, "postgres", e.to_string()))
}

/// With `postgres.iam_auth`, a refused login says where the token came from.
fn login_failed(cfg: &PostgresConfig, mut e: PgError) -> PgError {
    if cfg.iam_auth && e.class == PgClass::Auth {
        e.message.push_str(
            "; the password was an RDS IAM token (postgres.iam_auth) signed with the relay's AWS credentials: their IAM policy must allow rds-db:connect for this database user, and the user must be granted rds_iam",
        );
    }
    e
}

/// The pool's connector with `postgres.iam_auth`: each new connection logs in with a
/// current token.
struct IamConnect {
    inner: deadpool_postgres::ConfigConnectImpl<tokio_postgres_rustls::MakeRustlsConnect>,
    cfg: PostgresConfig,
}

type Connected = (tokio_postgres::Client, tokio::task::JoinHandle<()>);

impl deadpool_postgres::Connect for IamConnect {
    fn connect(
        &self,
        pg: &tokio_postgres::Config,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Connected, tokio_postgres::Error>> + Send + '_>,
    > {
        let mut pg = pg.clone();
        Box::pin(async move {
            // A token that cannot be made was reported by `pooled` just before; without
            // one the server refuses the login.
            if let Ok(token) = iam::token(&self.cfg).await {
                pg.password(token);
            }
            self.inner.connect(&pg).await
        })
    }
}

/// A pooled connection, or the failure classified. With `postgres.iam_auth`, a token
/// that cannot be made (no credentials) is the failure.
pub async fn pooled(
    pool: &deadpool_postgres::Pool,
    cfg: &PostgresConfig,
) -> Result<deadpool_postgres::Object, PgError> {
    use deadpool_postgres::PoolError;
    if cfg.iam_auth {
        iam::token(cfg).await?;
    }
    let what = "connecting to postgres.url";
    pool.get().await.map_err(|e| match &e {
        PoolError::Backend(pg) => login_failed(cfg, PgError::from_pg(what, pg)),
        PoolError::Timeout(_) => PgError::new(
            PgClass::Connection,
            what,
            "timed out (postgres.connect_timeout)",
        ),
        other => PgError::new(PgClass::Connection, what, other.to_string()),
    })
}

/// What `check-config` finds wrong with `[postgres]` beyond its syntax: the relay_id's
/// templates, and with `connect` a real connection (address, password, TLS) and the
/// schema version. Each problem names its key.
pub fn check_blocking(cfg: &PostgresConfig, connect_too: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = relay_id(cfg) {
        problems.push(e);
    }
    if !connect_too {
        return problems;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return vec![format!("postgres: cannot start a runtime: {e}")],
    };
    let r: Result<(), PgError> = rt.block_on(async {
        let client = connect(cfg).await?;
        let found: Option<i32> = client
            .query_opt(
                "SELECT max(version) FROM audit_schema_version WHERE to_regclass('audit_schema_version') IS NOT NULL",
                &[],
            )
            .await
            .ok()
            .flatten()
            .and_then(|r| r.get(0));
        match found {
            Some(v) if v > schema::SCHEMA_VERSION => Err(PgError::new(
                PgClass::Schema,
                "postgres.url",
                format!("the database's schema is version {v}, newer than this build's {}: upgrade audit-relay", schema::SCHEMA_VERSION),
            )),
            _ => Ok(()),
        }
    });
    if let Err(e) = r {
        problems.push(e.to_string());
    }
    problems
}

/// Milliseconds in a day: partitions hold one UTC day of event time each.
pub const DAY_MS: i64 = 86_400_000;

/// The UTC day (as ms at its start) of an event time.
pub fn day_start(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(DAY_MS) * DAY_MS
}
