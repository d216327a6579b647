//! `[postgres]`: the installation store, one PostgreSQL database that every relay of an
//! installation ships its spool to, and that every relay's query API can answer from.

use super::cloudwatch::CloudWatchConfig;
use super::{HumanDuration, Problem};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `[postgres]`. Without this section nothing is shipped and the API answers from the
/// local spool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL without a password, e.g.
    /// `postgres://audit_relay@db.internal:5432/audit`. Required.
    pub url: String,
    /// A file holding the password (one line; trailing newline ignored). Optional.
    pub password_file: Option<PathBuf>,
    /// `verify-full` (TLS; the server's certificate is checked against `ca_file` and its
    /// host name) or `disable` (no TLS: only on a trusted network). Default `verify-full`.
    /// libpq's `require` (TLS without checking the certificate) is not offered: it does
    /// not stop a man in the middle.
    #[serde(default)]
    pub sslmode: SslMode,
    /// CA certificates (PEM) for `verify-full`. Default: the system's roots are not read;
    /// required with `verify-full`.
    pub ca_file: Option<PathBuf>,
    /// This relay's identity in the store; `{hostname}`, `{pod}`, `{namespace}` are
    /// replaced as in `cloudwatch.log_stream`. Default `"{hostname}"`. Must be stable for
    /// the life of the spool (one per spool) and unique in the installation.
    #[serde(default = "default_relay_id")]
    pub relay_id: String,
    /// Days of events the store keeps; older day partitions are dropped. Default 90.
    #[serde(default = "default_retention_days")]
    pub retention_days: i64,
    /// Rows shipped per transaction at most. Default 2500, between 1 and 50000. The
    /// shipper holds up to four batches: two in flight, two read ahead.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// How long connecting may take. Default `"10s"`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Connections of the query API's pool. Default 8.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// RDS IAM authentication: each new connection's password is a 15-minute token
    /// signed with the relay's AWS credentials (those of CloudWatch, with its
    /// `assume_role_arn`) for the user of `url`. Needs `sslmode = "verify-full"` and no
    /// `password_file`. Default false.
    #[serde(default)]
    pub iam_auth: bool,
    /// The region the tokens are signed for (the database's); unused without
    /// `iam_auth`. Default: `cloudwatch.region`, else the environment's (`AWS_REGION`).
    pub iam_region: Option<String>,
    /// The `[cloudwatch]` section, whose credentials sign IAM tokens (set when the
    /// config is loaded; not a key of `[postgres]`).
    #[serde(skip)]
    pub aws: Option<CloudWatchConfig>,
}

/// How the connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    #[default]
    VerifyFull,
}

fn default_relay_id() -> String {
    "{hostname}".into()
}
fn default_retention_days() -> i64 {
    90
}
fn default_batch_rows() -> usize {
    2500
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_pool_size() -> usize {
    8
}

impl PostgresConfig {
    /// Problems of this section, keys prefixed `postgres.`.
    pub fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        match url_password(&self.url) {
            Err(e) => bad("postgres.url", e),
            Ok(true) => bad(
                "postgres.url",
                "holds a password; put it in the file named by postgres.password_file instead (the URL is logged)".into(),
            ),
            Ok(false) => {}
        }
        if let Some(f) = &self.password_file {
            if let Err(e) = std::fs::metadata(f) {
                bad(
                    "postgres.password_file",
                    format!("cannot read {}: {e}", f.display()),
                );
            }
        }
        if self.sslmode == SslMode::VerifyFull {
            match &self.ca_file {
                None => bad(
                    "postgres.ca_file",
                    "required with sslmode = \"verify-full\" (the CA that signed the server's certificate, e.g. the RDS bundle); or set sslmode".into(),
                ),
                Some(f) => {
                    if let Err(e) = std::fs::metadata(f) {
                        bad("postgres.ca_file", format!("cannot read {}: {e}", f.display()));
                    }
                }
            }
        }
        if self.iam_auth {
            if self.password_file.is_some() {
                bad(
                    "postgres.iam_auth",
                    "the password is a token signed with AWS credentials: remove postgres.password_file".into(),
                );
            }
            if self.sslmode == SslMode::Disable {
                bad(
                    "postgres.iam_auth",
                    "RDS accepts IAM tokens over TLS only: set sslmode = \"verify-full\" (and ca_file)".into(),
                );
            }
            // A URL that does not parse is reported above.
            let names_no_user = self
                .url
                .parse::<tokio_postgres::Config>()
                .is_ok_and(|c| c.get_user().is_none());
            if names_no_user {
                bad(
                    "postgres.url",
                    "names no user (postgres://USER@host/db); with iam_auth the token is signed for it".into(),
                );
            }
        }
        if self.relay_id.trim().is_empty() {
            bad("postgres.relay_id", "must not be empty".into());
        }
        if !(1..=36_500).contains(&self.retention_days) {
            bad(
                "postgres.retention_days",
                format!("{} is not between 1 and 36500", self.retention_days),
            );
        }
        if !(1..=50_000).contains(&self.batch_rows) {
            bad(
                "postgres.batch_rows",
                format!("{} is not between 1 and 50000", self.batch_rows),
            );
        }
        if !(1..=256).contains(&self.pool_size) {
            bad(
                "postgres.pool_size",
                format!("{} is not between 1 and 256", self.pool_size),
            );
        }
        if self.connect_timeout.0.is_zero() {
            bad("postgres.connect_timeout", "must be more than 0".into());
        }
    }
}

/// Whether a `postgres://` URL carries a password; an error when it is no such URL.
fn url_password(url: &str) -> Result<bool, String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| {
            format!("{url:?} is not a postgres:// URL (e.g. postgres://audit_relay@db:5432/audit)")
        })?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if host.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    Ok(userinfo.is_some_and(|u| u.contains(':')))
}

/// Validation entry for the whole section (called by the config's validate).
pub(super) fn check(p: &PostgresConfig, problems: &mut Vec<Problem>) {
    p.validate(&mut |key, message| {
        problems.push(Problem {
            key: key.to_string(),
            message,
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(toml_text: &str) -> Vec<(String, String)> {
        let cfg: PostgresConfig = toml::from_str(toml_text).unwrap();
        let mut out = Vec::new();
        cfg.validate(&mut |k, m| out.push((k.to_string(), m)));
        out
    }

    #[test]
    fn iam_auth_needs_tls_a_user_and_no_password_file() {
        let ok = "url = \"postgres://relay@db:5432/audit\"\nsslmode = \"disable\"\n";
        assert_eq!(problems(ok), vec![]);
        let iam = |extra: &str| problems(&format!("{ok}iam_auth = true\n{extra}"));
        let p = iam("");
        assert!(
            p.len() == 1 && p[0].0 == "postgres.iam_auth" && p[0].1.contains("TLS"),
            "{p:?}"
        );
        let p = problems(
            "url = \"postgres://db/audit\"\niam_auth = true\npassword_file = \"/dev/null\"\nca_file = \"/dev/null\"\n",
        );
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["postgres.iam_auth", "postgres.url"], "{p:?}");
        assert!(p[0].1.contains("password_file") && p[1].1.contains("no user"));
        let p = problems("url = \"postgres://db/audit?user=relay\"\niam_auth = true\nca_file = \"/dev/null\"\niam_region = \"eu-west-1\"\n");
        assert_eq!(p, vec![]);
    }

    #[test]
    fn a_password_in_the_url_is_refused_and_a_bad_url_named() {
        assert_eq!(url_password("postgres://u@h:5432/d"), Ok(false));
        assert_eq!(url_password("postgresql://h/d?sslmode=disable"), Ok(false));
        assert_eq!(url_password("postgres://u:secret@h/d"), Ok(true));
        assert!(url_password("mysql://h/d")
            .unwrap_err()
            .contains("not a postgres://"));
        assert!(url_password("postgres:///d")
            .unwrap_err()
            .contains("no host"));
    }
}
