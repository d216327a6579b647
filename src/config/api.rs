//! `[api]`: the query API (ListAuditLogs over Connect, and its REST form) and who may call it.

use super::{ByteSize, HumanDuration, Problem};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `[api]`: the query API; absent: not served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on, e.g. `"0.0.0.0:8080"`, or `"127.0.0.1:0"` for any free port
    /// (the bound address is logged). Required.
    pub listen: SocketAddr,
    /// Largest request body accepted, after gzip decompression. Default `"64KiB"`, between
    /// 1KiB and 16MiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: ByteSize,
    /// How long one request may take (an export stream: until its first byte). Default
    /// `"10s"`, between 100ms and 10m.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// How long an NDJSON export may wait for its client to take the next piece of the
    /// stream; a client that reads nothing for this long has its export cut (the stream
    /// ends without its final chunk, so it is never mistaken for a complete one).
    /// Default `"2m"`, between 1s and 1h. The socket buffers between the relay and a
    /// client hold megabytes, so a client reading a trickle can look stalled: keep this
    /// well above a minute.
    #[serde(default = "default_export_stall_timeout")]
    pub export_stall_timeout: HumanDuration,
    /// NDJSON exports running at once, over all callers; one more is answered 429
    /// `resource_exhausted`. Exports take spool read permits only while reading a chunk,
    /// so page reads are never starved by them. Default 8, between 1 and 256.
    #[serde(default = "default_max_exports")]
    pub max_exports: usize,
    /// NDJSON exports one caller (a user, or an operator token) may run at once.
    /// Default 2, between 1 and `max_exports`.
    #[serde(default = "default_max_exports_per_caller")]
    pub max_exports_per_caller: usize,
    /// Connections open at once; more wait in the listen backlog until one closes, so a
    /// flood cannot take every file descriptor. Default 256, between 1 and 65536.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a client may take to send a request's head (request line and headers),
    /// from its first byte; then the connection is closed. Default `"10s"`, between
    /// 100ms and 10m.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: HumanDuration,
    /// How long a connection may wait for a request (a new connection, or keep-alive
    /// after a response) before it is closed. Default `"60s"`, between 100ms and 1h.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Where reads are answered from: `spool` (this relay's local spool, the default) or
    /// `postgres` (the installation store of `[postgres]`: every relay's events).
    #[serde(default)]
    pub store: Store,
    /// PEM file with the server certificate chain (leaf first), to serve the API over
    /// TLS. Give both `tls_cert` and `tls_key`, or neither (plain HTTP).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Serve the read-only audit log viewer at `/ui/` (docs/ui.md): static pages built into
    /// the binary that call this API's ListAuditLogs and export endpoints with the
    /// caller's own token, under the same authorization. Default `false` (`/ui/` is 404).
    #[serde(default)]
    pub ui: bool,
    /// With `ui = true`: name of a cookie that holds the caller's bearer token (the
    /// platform's JWT), for a viewer mounted under the platform's domain. It is accepted
    /// only on requests that also carry the viewer's `X-Audit-Relay-UI: 1` header (which a
    /// cross-site page cannot send), and only when no `Authorization` header is given.
    /// Default none: the viewer asks for a token, kept in the tab's `sessionStorage`.
    #[serde(default)]
    pub ui_token_cookie: Option<String>,
    /// `[api.auth]`: JWTs signed by the platform; absent: only operator tokens are accepted.
    #[serde(default)]
    pub auth: Option<ApiAuthConfig>,
    /// `[[api.tokens]]`: static operator tokens. Default none.
    #[serde(default)]
    pub tokens: Vec<OperatorTokenConfig>,
}

/// `api.store`: where the query API reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    #[default]
    Spool,
    Postgres,
}

/// `[api.auth]`: how the platform's JWTs are checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiAuthConfig {
    /// File holding the HS256 shared secret (its bytes, a trailing newline removed).
    /// Give this, `jwt_jwks_file`, or both.
    #[serde(default)]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// JWKS file (`{"keys":[…]}`) with the RS256 / ES256 public keys; a token's `kid`
    /// picks the key.
    #[serde(default)]
    pub jwt_jwks_file: Option<PathBuf>,
    /// Required `iss` of every token. Required.
    pub jwt_issuer: String,
    /// Required `aud` of every token. Required.
    pub jwt_audience: String,
    /// Claim holding the caller's user id (the actor of the read's own audit event).
    /// Default `"sub"`.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Claim holding `{organizationId: role}`; role `"owner"` may read that organization.
    /// Default `"orgs"`.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
}

/// `[[api.tokens]]`: one operator token, stored only as the SHA-256 of the token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorTokenConfig {
    /// Who holds it; the actor of its reads is `operator:<name>`. Required, unique.
    pub name: String,
    /// SHA-256 of the token, 64 hex characters (`printf %s TOKEN | sha256sum`). Required.
    pub sha256: String,
    /// Organization ids it may read, or `["*"]` for every organization (installation
    /// admins). Required, not empty.
    pub organizations: Vec<String>,
}

fn default_max_body_bytes() -> ByteSize {
    ByteSize(64 << 10)
}

fn default_request_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

fn default_export_stall_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(120))
}

fn default_max_exports() -> usize {
    8
}

fn default_max_exports_per_caller() -> usize {
    2
}

pub(super) fn default_max_connections() -> usize {
    256
}

pub(super) fn default_header_read_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

pub(super) fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

/// Adds the problems of a port's connection limits (`[api]` or `[admin]`) to `problems`.
pub(super) fn validate_limits(
    section: &str,
    max_connections: usize,
    header_read_timeout: HumanDuration,
    idle_timeout: HumanDuration,
    problems: &mut Vec<Problem>,
) {
    let mut bad = |key: &str, message: String| {
        problems.push(Problem {
            key: format!("{section}.{key}"),
            message,
        })
    };
    if !(1..=65536).contains(&max_connections) {
        bad(
            "max_connections",
            format!("must be between 1 and 65536, got {max_connections}"),
        );
    }
    let t = header_read_timeout.0;
    if t < Duration::from_millis(100) || t > Duration::from_secs(600) {
        bad(
            "header_read_timeout",
            format!("must be between 100ms and 10m, got {header_read_timeout}"),
        );
    }
    let t = idle_timeout.0;
    if t < Duration::from_millis(100) || t > Duration::from_secs(3600) {
        bad(
            "idle_timeout",
            format!("must be between 100ms and 1h, got {idle_timeout}"),
        );
    }
}

fn default_user_claim() -> String {
    "sub".to_string()
}

fn default_roles_claim() -> String {
    "orgs".to_string()
}

/// Adds every problem of `[api]` to `problems`, each naming its key.
pub fn validate(c: &ApiConfig, problems: &mut Vec<Problem>) {
    validate_limits(
        "api",
        c.max_connections,
        c.header_read_timeout,
        c.idle_timeout,
        problems,
    );
    let mut bad = |key: String, message: String| problems.push(Problem { key, message });
    let b = c.max_body_bytes.0;
    if !(1 << 10..=16 << 20).contains(&b) {
        bad(
            "api.max_body_bytes".into(),
            format!("must be between 1024 and 16777216 bytes, got {b}"),
        );
    }
    let t = c.request_timeout.0;
    if t < Duration::from_millis(100) || t > Duration::from_secs(600) {
        bad(
            "api.request_timeout".into(),
            format!("must be between 100ms and 10m, got {}", c.request_timeout),
        );
    }
    let t = c.export_stall_timeout.0;
    if t < Duration::from_secs(1) || t > Duration::from_secs(3600) {
        bad(
            "api.export_stall_timeout".into(),
            format!("must be between 1s and 1h, got {}", c.export_stall_timeout),
        );
    }
    if !(1..=256).contains(&c.max_exports) {
        bad(
            "api.max_exports".into(),
            format!("must be between 1 and 256, got {}", c.max_exports),
        );
    }
    if c.max_exports_per_caller < 1 || c.max_exports_per_caller > c.max_exports.max(1) {
        bad(
            "api.max_exports_per_caller".into(),
            format!(
                "must be between 1 and api.max_exports ({}), got {}",
                c.max_exports, c.max_exports_per_caller
            ),
        );
    }
    match (&c.tls_cert, &c.tls_key) {
        (Some(_), None) => bad(
            "api.tls_key".into(),
            "required when api.tls_cert is given (give both, or neither for plain HTTP)".into(),
        ),
        (None, Some(_)) => bad(
            "api.tls_cert".into(),
            "required when api.tls_key is given (give both, or neither for plain HTTP)".into(),
        ),
        _ => {}
    }
    if let Some(name) = &c.ui_token_cookie {
        // A cookie name is an RFC 6265 token: visible ASCII without separators.
        let token = |b: u8| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            bad(
                "api.ui_token_cookie".into(),
                format!("not a cookie name (letters, digits and !#$%&'*+-.^_`|~ only): {name:?}"),
            );
        } else if !c.ui {
            bad(
                "api.ui_token_cookie".into(),
                "is used only by the viewer: set api.ui = true, or remove this key".into(),
            );
        }
    }
    if let Some(a) = &c.auth {
        if a.jwt_hs256_secret_file.is_none() && a.jwt_jwks_file.is_none() {
            bad(
                "api.auth".into(),
                "give jwt_hs256_secret_file, jwt_jwks_file, or both".into(),
            );
        }
        for (key, v) in [
            ("api.auth.jwt_issuer", &a.jwt_issuer),
            ("api.auth.jwt_audience", &a.jwt_audience),
            ("api.auth.user_claim", &a.user_claim),
            ("api.auth.roles_claim", &a.roles_claim),
        ] {
            if v.trim().is_empty() {
                bad(key.into(), "must not be empty".into());
            }
        }
    }
    for (i, t) in c.tokens.iter().enumerate() {
        let key = |k: &str| format!("api.tokens[{i}].{k}");
        if t.name.trim().is_empty() {
            bad(key("name"), "must not be empty".into());
        } else if c.tokens[..i].iter().any(|o| o.name == t.name) {
            bad(
                key("name"),
                format!("{:?} is used by an earlier token", t.name),
            );
        }
        if t.sha256.len() != 64 || !t.sha256.bytes().all(|c| c.is_ascii_hexdigit()) {
            bad(key("sha256"), "must be 64 hex characters".into());
        } else if t.sha256.bytes().all(|c| c == b'0') {
            bad(
                key("sha256"),
                "is the all-zero placeholder, which no token matches: put the hash of a real token here (TOKEN=$(openssl rand -hex 32); printf %s \"$TOKEN\" | sha256sum), or remove this [[api.tokens]] entry".into(),
            );
        }
        if t.organizations.is_empty() {
            bad(
                key("organizations"),
                "must list organization ids, or \"*\" for all".into(),
            );
        }
        for (j, o) in t.organizations.iter().enumerate() {
            if o != "*" && uuid::Uuid::try_parse(o).is_err() {
                bad(
                    format!("api.tokens[{i}].organizations[{j}]"),
                    format!("not an organization id (a UUID) or \"*\": {o:?}"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn problems(api: &str) -> Vec<String> {
        let text = format!("[source]\npaths = [\"/tmp/*.log\"]\n\n{api}");
        match Config::from_toml(&text) {
            Ok(_) => vec![],
            Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn defaults_and_a_full_section() {
        let text = "[source]\npaths = [\"-\"]\n[api]\nlisten = \"127.0.0.1:0\"\n";
        let c = Config::from_toml(text).unwrap();
        let api = c.api.as_ref().unwrap();
        assert_eq!(api.max_body_bytes.0, 64 << 10);
        assert_eq!(api.request_timeout.0.as_secs(), 10);
        assert!(api.auth.is_none() && api.tokens.is_empty());
        assert!(api.tls_cert.is_none() && api.tls_key.is_none());
        assert_eq!(api.export_stall_timeout.0.as_secs(), 120);
        assert_eq!((api.max_exports, api.max_exports_per_caller), (8, 2));
        assert_eq!(api.max_connections, 256);
        assert_eq!(api.header_read_timeout.0.as_secs(), 10);
        assert_eq!(api.idle_timeout.0.as_secs(), 60);
        assert!(!api.ui && api.ui_token_cookie.is_none());
        let full = r#"
[api]
listen = "127.0.0.1:8080"
tls_cert = "/etc/audit-relay/tls.crt"
tls_key = "/etc/audit-relay/tls.key"
[api.auth]
jwt_hs256_secret_file = "/etc/secret"
jwt_issuer = "https://gitpod.example.com"
jwt_audience = "audit-relay"
[[api.tokens]]
name = "ops"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
organizations = ["*"]
"#;
        assert_eq!(problems(full), Vec::<String>::new());
    }

    #[test]
    fn every_problem_names_its_key() {
        let text = r#"
[api]
listen = "127.0.0.1:8080"
max_body_bytes = "10"
request_timeout = "1h"
export_stall_timeout = "0s"
max_connections = 0
header_read_timeout = "20m"
idle_timeout = "2h"
max_exports = 4
max_exports_per_caller = 5
[api.auth]
jwt_issuer = ""
jwt_audience = "a"
[[api.tokens]]
name = "ops"
sha256 = "abc"
organizations = []
[[api.tokens]]
name = "ops"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
organizations = ["not-a-uuid"]
"#;
        let p = problems(text);
        for want in [
            "api.max_body_bytes: must be between",
            "api.request_timeout: must be between",
            "api.export_stall_timeout: must be between 1s and 1h",
            "api.max_connections: must be between 1 and 65536, got 0",
            "api.header_read_timeout: must be between 100ms and 10m",
            "api.idle_timeout: must be between 100ms and 1h",
            "api.max_exports_per_caller: must be between 1 and api.max_exports (4), got 5",
            "api.auth: give jwt_hs256_secret_file",
            "api.auth.jwt_issuer: must not be empty",
            "api.tokens[0].sha256: must be 64 hex characters",
            "api.tokens[0].organizations: must list",
            "api.tokens[1].name: \"ops\" is used by an earlier token",
            "api.tokens[1].organizations[0]: not an organization id",
        ] {
            assert!(p.iter().any(|x| x.starts_with(want)), "{want} in {p:#?}");
        }
        assert_eq!(p.len(), 13, "{p:#?}");
        assert!(problems("[api]\nlisten = \"x\"\n")[0].starts_with("api.listen"));
        let half = "[api]\nlisten = \"127.0.0.1:1\"\ntls_cert = \"/c.pem\"\n";
        assert_eq!(
            problems(half),
            vec!["api.tls_key: required when api.tls_cert is given (give both, or neither for plain HTTP)"]
        );
        let half = "[api]\nlisten = \"127.0.0.1:1\"\ntls_key = \"/k.pem\"\n";
        assert!(problems(half)[0].starts_with("api.tls_cert: required when api.tls_key"));
        assert!(problems("[api]\nlisten = \"127.0.0.1:1\"\nport = 3\n")[0].contains("port"));
        let ui = |extra: &str| problems(&format!("[api]\nlisten = \"127.0.0.1:1\"\n{extra}"));
        assert_eq!(
            ui("ui = true\nui_token_cookie = \"_platform_jwt\"\n"),
            Vec::<String>::new()
        );
        assert_eq!(
            ui("ui = true\nui_token_cookie = \"a b;\"\n"),
            vec!["api.ui_token_cookie: not a cookie name (letters, digits and !#$%&'*+-.^_`|~ only): \"a b;\""]
        );
        assert!(ui("ui = true\nui_token_cookie = \"\"\n")[0]
            .starts_with("api.ui_token_cookie: not a cookie name"));
        assert_eq!(
            ui("ui_token_cookie = \"jwt\"\n"),
            vec!["api.ui_token_cookie: is used only by the viewer: set api.ui = true, or remove this key"]
        );
        assert!(
            ui("ui = \"yes\"\n")[0].starts_with("api.ui"),
            "{:?}",
            ui("ui = \"yes\"\n")
        );
    }
}
