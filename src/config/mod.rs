//! Configuration: one serde struct tree read from TOML, unknown keys refused, then
//! validated into [`Config`], which can only be built by [`Config::load`] or
//! [`Config::from_toml`]. Validation returns every problem, each naming its key path.
//!
//! The doc comment on each field is its reference documentation; `config/audit-relay.toml`
//! repeats it for operators.

pub mod api;
mod checks;
pub mod cloudwatch;
mod parse;
pub mod postgres;
pub mod units;

pub use api::ApiConfig;
pub use cloudwatch::CloudWatchConfig;
use serde::Deserialize;
use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;
pub use units::{ByteSize, HumanDuration};

/// The whole configuration file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where events come from.
    pub source: SourceConfig,
    /// The durable local store.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// Forwarding to CloudWatch Logs; absent: events stay in the spool only.
    #[serde(default)]
    pub cloudwatch: Option<CloudWatchConfig>,
    /// `[admin]`: health and metrics endpoints; absent: not served.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// `[api]`: the query API; absent: not served.
    #[serde(default)]
    pub api: Option<ApiConfig>,
    /// `[postgres]`: the installation store every relay ships to; absent: not shipped.
    #[serde(default)]
    pub postgres: Option<postgres::PostgresConfig>,
    /// `[integrity]`: the hash chain's signed checkpoints.
    #[serde(default)]
    pub integrity: IntegrityConfig,
    /// The relay's own logging.
    #[serde(default)]
    pub log: LogConfig,
    /// How long SIGTERM/SIGINT may take to stop reading, commit and exit. Default `"10s"`.
    #[serde(default = "defaults::shutdown_grace")]
    pub shutdown_grace: HumanDuration,
}

/// `[source]`: which files (or stdin) to tail, and how to read them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Glob patterns of files to tail, or `"-"` for standard input. Required.
    pub paths: Vec<String>,
    /// How records are framed in the file: `plain` (one JSON object a line), `cri`
    /// (Kubernetes container log format) or `docker` (json-file driver). Default `plain`.
    #[serde(default)]
    pub format: Framing,
    /// What a record holds: `event` (bare audit events), `server-log` (the server's log
    /// lines; only `message == "audit"` carries an event), or `auto` (decided per line).
    /// Default `auto`.
    #[serde(default)]
    pub envelope: Envelope,
    /// Where to start in files never seen before that exist at startup: `beginning` or
    /// `end`. Files that appear while running are always read from their beginning.
    /// Default `beginning`.
    #[serde(default)]
    pub start_at: StartAt,
    /// A record longer than this is quarantined (first KiB kept) and the rest skipped.
    /// Default `"1MiB"`, between 1KiB and 64MiB.
    #[serde(default = "defaults::max_line_bytes")]
    pub max_line_bytes: ByteSize,
    /// How often files are checked when the file system sends no change events.
    /// Default `"1s"`, between 10ms and 60s.
    #[serde(default = "defaults::poll_interval")]
    pub poll_interval: HumanDuration,
    /// How long a file that no longer matches `paths` (renamed or deleted by rotation)
    /// is still followed after its last growth before it is closed; what is incomplete
    /// then is quarantined as `truncated_by_rotation`. Default `"5s"`.
    #[serde(default = "defaults::rotate_wait")]
    pub rotate_wait: HumanDuration,
}

/// Record framing of a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Framing {
    #[default]
    Plain,
    Cri,
    Docker,
}

/// What a decoded record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Envelope {
    #[default]
    Auto,
    Event,
    ServerLog,
}

/// Where new files found at startup are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartAt {
    #[default]
    Beginning,
    End,
}

/// `[spool]`: the durable local store (SQLite).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory holding `spool.db` (created if missing). Default `/var/lib/audit-relay`.
    #[serde(default = "defaults::spool_dir")]
    pub dir: PathBuf,
    /// Days events are kept, 1 to 3653. Default 90. Retention deletes events whose next
    /// checkpoint is older than this, once forwarded (or when `cloudwatch` is absent or
    /// disabled); see `docs/operations.md`.
    #[serde(default = "defaults::retention_days")]
    pub retention_days: i64,
    /// Disk cap of the spool (database + WAL, less the free pages retention left). At the
    /// cap, sources pause (offsets kept, nothing lost) and `/readyz` fails; reading resumes
    /// below 95 % of it, as retention frees space or when the cap is raised. Default
    /// `"20GiB"`, at least `"1MiB"`.
    #[serde(default = "defaults::max_bytes")]
    pub max_bytes: ByteSize,
    /// `fsync` (each commit reaches the disk; survives power loss) or `os` (survives a
    /// crash of the relay, not of the machine). Default `fsync`.
    #[serde(default)]
    pub durability: Durability,
    /// A commit happens when this many events wait, 1 to 1,000,000. Default 20000.
    #[serde(default = "defaults::commit_max_events")]
    pub commit_max_events: usize,
    /// ... or when the oldest waiting event has waited this long. Default `"200ms"`,
    /// between 1ms and 10s.
    #[serde(default = "defaults::commit_interval")]
    pub commit_interval: HumanDuration,
    /// SQLite page cache of the writer. Default `"16MiB"`, between 1MiB and 4GiB.
    #[serde(default = "defaults::cache_size")]
    pub cache_size: ByteSize,
}

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    #[default]
    Fsync,
    Os,
}

/// `[admin]`: `/healthz`, `/readyz`, `/metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on, e.g. `"0.0.0.0:9090"` for Kubernetes probes, or
    /// `"127.0.0.1:0"` for any free port (the bound address is logged). Required.
    pub listen: std::net::SocketAddr,
    /// Connections open at once; more wait in the listen backlog. Default 32, between 1
    /// and 65536 (probes and a scraper need few).
    #[serde(default = "defaults::admin_max_connections")]
    pub max_connections: usize,
    /// How long a client may take to send a request's head, from its first byte.
    /// Default `"5s"`, between 100ms and 10m.
    #[serde(default = "defaults::admin_header_read_timeout")]
    pub header_read_timeout: HumanDuration,
    /// How long a connection may wait for a request before it is closed. Default
    /// `"30s"`, between 100ms and 1h.
    #[serde(default = "defaults::admin_idle_timeout")]
    pub idle_timeout: HumanDuration,
}

/// `[integrity]`: checkpoints of the spool's hash chain (see `docs/operations.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrityConfig {
    /// Ed25519 private key, PKCS#8 PEM, as written by `openssl genpkey -algorithm ed25519`.
    /// Absent: checkpoints are written unsigned (the chain still shows damage, but not a
    /// deliberate rewrite).
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    /// A checkpoint after this many events. Default 10000.
    #[serde(default = "defaults::checkpoint_every")]
    pub checkpoint_every: u64,
    /// And at least this often, idle or not, and at shutdown. Default `"5m"`.
    #[serde(default = "defaults::checkpoint_interval")]
    pub checkpoint_interval: HumanDuration,
}

impl Default for IntegrityConfig {
    fn default() -> Self {
        IntegrityConfig {
            signing_key_file: None,
            checkpoint_every: defaults::checkpoint_every(),
            checkpoint_interval: defaults::checkpoint_interval(),
        }
    }
}

/// `[log]`: the relay's own logs, on standard error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`. Default `text`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `audit_relay=debug,info`, ... Default `info`.
    /// The environment variable `RUST_LOG` overrides it.
    #[serde(default = "defaults::log_level")]
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

mod defaults {
    use super::*;
    pub fn admin_max_connections() -> usize {
        32
    }
    pub fn admin_header_read_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(5))
    }
    pub fn admin_idle_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub fn shutdown_grace() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    pub fn max_line_bytes() -> ByteSize {
        ByteSize(1 << 20)
    }
    pub fn poll_interval() -> HumanDuration {
        HumanDuration(Duration::from_secs(1))
    }
    pub fn rotate_wait() -> HumanDuration {
        HumanDuration(Duration::from_secs(5))
    }
    pub fn spool_dir() -> PathBuf {
        PathBuf::from("/var/lib/audit-relay")
    }
    pub fn retention_days() -> i64 {
        90
    }
    pub fn max_bytes() -> ByteSize {
        ByteSize(20 << 30)
    }
    pub fn commit_max_events() -> usize {
        20_000
    }
    pub fn commit_interval() -> HumanDuration {
        HumanDuration(Duration::from_millis(200))
    }
    pub fn cache_size() -> ByteSize {
        ByteSize(16 << 20)
    }
    pub fn checkpoint_every() -> u64 {
        10_000
    }
    pub fn checkpoint_interval() -> HumanDuration {
        HumanDuration(Duration::from_secs(300))
    }
    pub fn log_level() -> String {
        "info".to_string()
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: defaults::spool_dir(),
            retention_days: defaults::retention_days(),
            max_bytes: defaults::max_bytes(),
            durability: Durability::default(),
            commit_max_events: defaults::commit_max_events(),
            commit_interval: defaults::commit_interval(),
            cache_size: defaults::cache_size(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            level: defaults::log_level(),
        }
    }
}

/// One thing wrong with a config file, naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `spool.retention_days`; empty for a file-level problem.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![Problem {
                key: key.to_string(),
                message: message.into(),
            }],
        }
    }
}

/// A configuration that passed validation.
#[derive(Debug, Clone)]
pub struct Config(FileConfig);

impl Deref for Config {
    type Target = FileConfig;
    fn deref(&self) -> &FileConfig {
        &self.0
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one("", format!("cannot read {}: {e}", path.display())))?;
        Config::from_toml(&text)
    }

    /// Parses and validates config text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut raw = parse::parse(text).map_err(|problems| ConfigError { problems })?;
        if let Some(pg) = raw.postgres.as_mut() {
            pg.aws = raw.cloudwatch.clone();
        }
        let problems = validate(&raw);
        if problems.is_empty() {
            Ok(Config(raw))
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The one-line summary `check-config` prints.
    pub fn summary(&self) -> String {
        let forwarding = match self.cloudwatch.as_ref().filter(|c| c.enabled) {
            Some(c) => format!(
                "forwarding to CloudWatch group {} stream {} ({} stream(s))",
                c.log_group, c.log_stream, c.streams
            ),
            None => "no forwarding".to_string(),
        };
        let s = format!(
            "config ok: source {} path(s) ({:?} framing, {:?} envelope), spool {} ({:?} durability, retention {} days)",
            self.source.paths.len(),
            self.source.format,
            self.source.envelope,
            self.spool.dir.display(),
            self.spool.durability,
            self.spool.retention_days,
        );
        let integrity = match &self.integrity.signing_key_file {
            Some(k) => format!("checkpoints signed with {}", k.display()),
            None => "checkpoints NOT signed (to sign them, create a key with `openssl genpkey -algorithm ed25519 -out /etc/audit-relay/signing.pem` and set integrity.signing_key_file)".to_string(),
        };
        format!("{s}, {forwarding}, {integrity}")
    }
}

fn validate(c: &FileConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut bad = |key: &str, message: String| {
        problems.push(Problem {
            key: key.to_string(),
            message,
        })
    };
    let s = &c.source;
    if s.paths.is_empty() {
        bad(
            "source.paths",
            "must list at least one glob pattern, or \"-\" for standard input".into(),
        );
    }
    for (i, p) in s.paths.iter().enumerate() {
        if p.trim().is_empty() {
            bad(&format!("source.paths[{i}]"), "must not be empty".into());
        } else if p != "-" {
            if let Err(e) = glob::Pattern::new(p) {
                bad(
                    &format!("source.paths[{i}]"),
                    format!("not a valid glob pattern {p:?}: {e}"),
                );
            }
        }
    }
    if s.paths.iter().filter(|p| *p == "-").count() > 1 {
        bad(
            "source.paths",
            "\"-\" (standard input) may appear only once".into(),
        );
    }
    range(
        &mut bad,
        "source.max_line_bytes",
        s.max_line_bytes.0,
        1 << 10,
        64 << 20,
        "bytes",
    );
    range_dur(
        &mut bad,
        "source.poll_interval",
        s.poll_interval,
        10,
        60_000,
    );
    range_dur(&mut bad, "source.rotate_wait", s.rotate_wait, 0, 3_600_000);

    let sp = &c.spool;
    if sp.dir.as_os_str().is_empty() {
        bad("spool.dir", "must not be empty".into());
    }
    if !(1..=3653).contains(&sp.retention_days) {
        bad(
            "spool.retention_days",
            format!("must be between 1 and 3653, got {}", sp.retention_days),
        );
    }
    range(
        &mut bad,
        "spool.max_bytes",
        sp.max_bytes.0,
        1 << 20,
        u64::MAX,
        "bytes",
    );
    range(
        &mut bad,
        "spool.commit_max_events",
        sp.commit_max_events as u64,
        1,
        1_000_000,
        "events",
    );
    range_dur(
        &mut bad,
        "spool.commit_interval",
        sp.commit_interval,
        1,
        10_000,
    );
    range(
        &mut bad,
        "spool.cache_size",
        sp.cache_size.0,
        1 << 20,
        4 << 30,
        "bytes",
    );

    range(
        &mut bad,
        "integrity.checkpoint_every",
        c.integrity.checkpoint_every,
        1,
        10_000_000,
        "events",
    );
    range_dur(
        &mut bad,
        "integrity.checkpoint_interval",
        c.integrity.checkpoint_interval,
        1_000,
        86_400_000,
    );
    if let Err(e) = checks::log_level(&c.log.level) {
        bad("log.level", e);
    }
    range_dur(&mut bad, "shutdown_grace", c.shutdown_grace, 100, 3_600_000);
    if let Some(cw) = &c.cloudwatch {
        cloudwatch::validate(cw, &mut problems);
    }
    if let Some(api) = &c.api {
        api::validate(api, &mut problems);
        if api.store == api::Store::Postgres && c.postgres.is_none() {
            problems.push(Problem {
                key: "api.store".into(),
                message: "\"postgres\" needs a [postgres] section (the installation store to answer from)".into(),
            });
        }
    }
    if let Some(pg) = &c.postgres {
        postgres::check(pg, &mut problems);
    }
    checks::ports(c, &mut problems);
    if let Some(a) = &c.admin {
        api::validate_limits(
            "admin",
            a.max_connections,
            a.header_read_timeout,
            a.idle_timeout,
            &mut problems,
        );
    }
    problems
}

fn range(bad: &mut impl FnMut(&str, String), key: &str, v: u64, lo: u64, hi: u64, unit: &str) {
    if v < lo || v > hi {
        let hi = if hi == u64::MAX {
            "no limit".to_string()
        } else {
            hi.to_string()
        };
        bad(
            key,
            format!("must be between {lo} and {hi} {unit}, got {v}"),
        );
    }
}

fn range_dur(
    bad: &mut impl FnMut(&str, String),
    key: &str,
    v: HumanDuration,
    lo_ms: u64,
    hi_ms: u64,
) {
    let ms = v.0.as_millis() as u64;
    if ms < lo_ms || ms > hi_ms {
        bad(
            key,
            format!(
                "must be between {} and {}, got {v}",
                HumanDuration(Duration::from_millis(lo_ms)),
                HumanDuration(Duration::from_millis(hi_ms))
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match Config::from_toml(text) {
            Ok(_) => vec![],
            Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn minimal_config_has_defaults() {
        let c = Config::from_toml("[source]\npaths = [\"/tmp/*.log\"]\n").unwrap();
        assert_eq!(c.source.format, Framing::Plain);
        assert_eq!(c.source.envelope, Envelope::Auto);
        assert_eq!(c.spool.retention_days, 90);
        assert_eq!(c.spool.max_bytes.0, 20 << 30);
        assert_eq!(c.spool.durability, Durability::Fsync);
        assert_eq!(c.shutdown_grace.0, Duration::from_secs(10));
    }

    #[test]
    fn every_semantic_problem_is_listed_with_its_key() {
        let p = problems(
            "[source]\npaths = []\nmax_line_bytes = 10\n[spool]\nretention_days = 0\ndir = \"\"\n[log]\nlevel = \"=[\"\n",
        );
        let keys: Vec<&str> = p.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "source.paths",
                "source.max_line_bytes",
                "spool.dir",
                "spool.retention_days",
                "log.level"
            ],
            "{p:?}"
        );
        assert!(p.contains(&"spool.retention_days: must be between 1 and 3653, got 0".to_string()));
    }

    #[test]
    fn unknown_and_mistyped_keys_name_their_path() {
        let p = problems("[source]\npaths = [\"a\"]\nformt = \"cri\"\n");
        assert!(
            p[0].starts_with("source.formt: unknown field `formt`"),
            "{p:?}"
        );
        let p = problems("[source]\npaths = [\"a\"]\nformat = \"xml\"\n");
        assert!(
            p[0].starts_with("source.format: unknown variant `xml`"),
            "{p:?}"
        );
        let p = problems("[source]\npaths = [\"a\"]\n[spool]\nretention_days = \"ninety\"\n");
        assert!(
            p[0].starts_with("spool.retention_days: invalid type"),
            "{p:?}"
        );
        let p = problems("[source]\npaths = [\"a\"]\n[spool]\ncommit_interval = \"soon\"\n");
        assert!(
            p[0].starts_with("spool.commit_interval: invalid duration"),
            "{p:?}"
        );
        let p = problems("[source]\npaths = [\"a\"]\n[spool]\nmax_bytes = \"lots\"\n");
        assert!(p[0].starts_with("spool.max_bytes: invalid size"), "{p:?}");
        let p = problems("[spool]\ndir = \"/x\"\n");
        assert!(p[0].starts_with("missing field `source`"), "{p:?}");
        let p = problems("this is = not toml [");
        assert!(
            p[0].starts_with("line 1, column 6: not valid TOML"),
            "{p:?}"
        );
    }
}
