//! audit-relay: tails the platform's audit events into a durable local spool.
//!
//! # Layout
//!
//! - [`config`]: the TOML config tree, its validation, human units.
//! - [`event`]: the audit event model; decoding and validating a record (pure).
//! - [`json`]: writing text as a JSON string, eight bytes at a time (pure).
//! - [`source`]: where records come from: framing (pure), file identity and
//!   checkpoints, the file tailer, standard input.
//! - [`spool`]: the durable store (SQLite): append with checkpoints, query, stats.
//! - [`scan`]: finding a byte eight at a time (pure).
//! - [`query`]: query planning (pure), shared by the CLI and the API.
//! - [`forward`]: CloudWatch batches and retry classification (the forwarder itself
//!   comes with its own issue).
//! - [`pipeline`]: `audit-relay run`: wires sources to the spool writer, shutdown.
//! - [`api`]: the query API (Connect ListAuditLogs, REST, export) for organization
//!   owners: auth, page tokens, the audit of each read.
//! - [`cloudwatch_admin`]: `audit-relay cloudwatch install-queries` (saved queries).
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` on their own listener.
//! - [`integrity`]: the hash chain's encoding, signed checkpoints, keys.
//! - [`verify`]: `audit-relay verify`, against the spool and against CloudWatch.
//! - [`telemetry`]: the relay's own logs.
//! - [`timestamp`]: RFC 3339 text and UTC milliseconds (pure).
//!
//! Data flows `source → event → spool`; the spool is the write-ahead log: a source
//! offset moves only in the commit that stores the events read up to it.

#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod cloudwatch_admin;
pub mod config;
pub mod event;
pub mod forward;
pub mod installation;
pub mod integrity;
pub mod json;
pub mod pipeline;
pub mod query;
pub mod scan;
pub mod source;
pub mod spool;
pub mod telemetry;
pub mod timestamp;
pub mod verify;
