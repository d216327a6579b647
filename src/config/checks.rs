//! Checks that need more than one key, or the machine the relay runs on.
//!
//! [`log_level`] and [`ports`] are part of [`super::validate`]; [`Config::check_environment`]
//! looks at the file system and the environment, for `check-config` and `run`.

use super::cloudwatch::{expand_stream, StreamVars};
use super::{Config, FileConfig, Problem};
use std::net::SocketAddr;

/// Levels a directive without `=` may name.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// `log.level`: a tracing filter whose every directive is `LEVEL` or `TARGET=LEVEL`.
///
/// The filter parser itself takes a bare word as a target to log at every level, so a
/// misspelt level (`"verbose"`, `"inof"`) would silence every other log line; bare words
/// must therefore be levels.
pub(super) fn log_level(filter: &str) -> Result<(), String> {
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(filter) {
        return Err(format!("not a valid filter {filter:?}: {e}"));
    }
    if filter.trim().is_empty() {
        return Err(format!(
            "must not be empty; use one of {}",
            LEVELS.join(", ")
        ));
    }
    for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let target_or_span = d.contains('=') || d.contains('[') || d.contains("::");
        if !target_or_span && !LEVELS.contains(&d.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{d:?} is not a level: use one of {} (or TARGET=LEVEL, e.g. \"audit_relay=debug,info\")",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// Two listeners that cannot both bind: the same port on the same (or an unspecified)
/// address.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// `[admin]` and `[api]` must listen on different ports.
pub(super) fn ports(c: &FileConfig, problems: &mut Vec<Problem>) {
    if let (Some(admin), Some(api)) = (&c.admin, &c.api) {
        if clash(admin.listen, api.listen) {
            problems.push(Problem {
                key: "api.listen".into(),
                message: format!(
                    "{} is the port of admin.listen ({}): give the query API and the admin endpoints different ports",
                    api.listen, admin.listen
                ),
            });
        }
    }
}

impl Config {
    /// What the config needs of this machine: `spool.dir` a directory (or absent, to be
    /// created), and the environment variables the stream name's placeholders read.
    /// `check-config` and `run` refuse to go on without them.
    pub fn check_environment(&self) -> Vec<Problem> {
        self.check_environment_with(&StreamVars::from_env())
    }

    fn check_environment_with(&self, vars: &StreamVars) -> Vec<Problem> {
        let mut problems = Vec::new();
        let dir = &self.spool.dir;
        match std::fs::metadata(dir) {
            Ok(m) if !m.is_dir() => problems.push(Problem {
                key: "spool.dir".into(),
                message: format!(
                    "{} is a file, not a directory (the spool is a directory holding spool.db)",
                    dir.display()
                ),
            }),
            _ => {}
        }
        if let Some(cw) = self.cloudwatch.as_ref().filter(|c| c.enabled) {
            if let Err(e) = expand_stream(&cw.log_stream, vars) {
                let hint = if e.contains("POD_NAME") || e.contains("POD_NAMESPACE") {
                    " (in Kubernetes, set it from the downward API: fieldRef metadata.name / metadata.namespace)"
                } else {
                    ""
                };
                problems.push(Problem {
                    key: "cloudwatch.log_stream".into(),
                    message: format!("{e}{hint}"),
                });
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_targets() {
        for ok in [
            "info",
            "debug",
            "WARN",
            "audit_relay=debug,info",
            "off",
            "a::b",
        ] {
            assert_eq!(log_level(ok), Ok(()), "{ok}");
        }
        for bad in ["verbose", "inof", "info,verbose", ""] {
            assert!(log_level(bad).is_err(), "{bad}");
        }
        assert!(log_level("verbose").unwrap_err().contains("is not a level"));
    }

    #[test]
    fn listeners_clash_on_one_port() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(clash(a("0.0.0.0:9090"), a("127.0.0.1:9090")));
        assert!(clash(a("127.0.0.1:9090"), a("127.0.0.1:9090")));
        assert!(!clash(a("127.0.0.1:9090"), a("127.0.0.2:9090")));
        assert!(!clash(a("127.0.0.1:0"), a("127.0.0.1:0")));
        assert!(!clash(a("0.0.0.0:9090"), a("0.0.0.0:8080")));
    }

    #[test]
    fn stream_placeholders_need_their_variables() {
        let c = Config::from_toml(
            "[source]\npaths = [\"-\"]\n[spool]\ndir = \"/nonexistent/x\"\n[cloudwatch]\nlog_group = \"g\"\nlog_stream = \"{namespace}/{pod}\"\n",
        )
        .unwrap();
        let none = StreamVars {
            hostname: Some("h".into()),
            pod: None,
            namespace: Some("ns".into()),
        };
        let p = c.check_environment_with(&none);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0]
            .to_string()
            .starts_with("cloudwatch.log_stream: {pod} needs the POD_NAME environment variable"));
        let all = StreamVars {
            pod: Some("p".into()),
            ..none
        };
        assert!(c.check_environment_with(&all).is_empty());
    }
}
