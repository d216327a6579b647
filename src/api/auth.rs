//! Who is calling, and what they may read.
//!
//! A caller shows `Authorization: Bearer <token>`: either a static operator token (its
//! SHA-256 is in `[[api.tokens]]`) or a JWT signed by the platform (HS256 with the shared
//! secret, RS256/ES256 with a key of the JWKS file picked by `kid`), with issuer, audience
//! and expiry checked. A JWT's user may read an organization only where its roles claim
//! says `owner`. Anything else is unauthenticated.

use super::error::ApiError;
use crate::config::api::ApiConfig;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Role that may read an organization's audit logs.
pub const OWNER_ROLE: &str = "owner";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A platform user, with their role per organization.
    User {
        user_id: String,
        roles: HashMap<String, String>,
    },
    /// An operator token from config.
    Operator { name: String, scope: Scope },
}

/// Organizations an operator token may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Only(Vec<String>),
}

impl Caller {
    /// May this caller read `organization_id`?
    pub fn may_read(&self, organization_id: &str) -> bool {
        match self {
            Caller::User { roles, .. } => {
                roles.get(organization_id).map(String::as_str) == Some(OWNER_ROLE)
            }
            Caller::Operator { scope, .. } => match scope {
                Scope::All => true,
                // Both sides are canonical UUIDs (see `request::canonical_uuid`).
                Scope::Only(orgs) => orgs.iter().any(|o| o == organization_id),
            },
        }
    }

    /// The actor of this caller's reads in the audit log.
    pub fn actor_id(&self) -> String {
        match self {
            Caller::User { user_id, .. } => user_id.clone(),
            Caller::Operator { name, .. } => format!("operator:{name}"),
        }
    }
}

/// An organization id in its canonical form (lowercase, hyphenated), if it is a UUID.
fn canonical_uuid(s: &str) -> Option<String> {
    uuid::Uuid::try_parse(s)
        .ok()
        .map(|u| u.hyphenated().to_string())
}

struct OperatorToken {
    name: String,
    sha256: [u8; 32],
    scope: Scope,
}

struct JwtKeys {
    hs256: Option<DecodingKey>,
    /// `kid` → key and the one algorithm it may verify.
    jwks: HashMap<String, (DecodingKey, Algorithm)>,
    issuer: String,
    audience: String,
    user_claim: String,
    roles_claim: String,
}

/// Checks bearer tokens; built once from `[api]`.
pub struct Authenticator {
    operators: Vec<OperatorToken>,
    jwt: Option<JwtKeys>,
}

/// The authenticator in use, replaced whole when the keys and tokens are reloaded
/// (SIGHUP): a request checks its token against the one it found when it started.
#[derive(Clone)]
pub struct SharedAuthenticator(Arc<RwLock<Arc<Authenticator>>>);

impl SharedAuthenticator {
    pub fn new(a: Authenticator) -> SharedAuthenticator {
        SharedAuthenticator(Arc::new(RwLock::new(Arc::new(a))))
    }

    /// The authenticator now in use.
    pub fn current(&self) -> Arc<Authenticator> {
        self.0.read().expect("authenticator").clone()
    }

    /// Puts `a` in use for every request from now on.
    pub fn replace(&self, a: Authenticator) {
        *self.0.write().expect("authenticator") = Arc::new(a);
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Reads the keys named in config. Each error names its key.
impl Authenticator {
    pub fn from_config(c: &ApiConfig) -> Result<Authenticator, String> {
        let mut operators = Vec::new();
        for (i, t) in c.tokens.iter().enumerate() {
            let sha256 = hex32(&t.sha256)
                .ok_or(format!("api.tokens[{i}].sha256: must be 64 hex characters"))?;
            let scope = if t.organizations.iter().any(|o| o == "*") {
                Scope::All
            } else {
                let mut orgs = Vec::with_capacity(t.organizations.len());
                for (j, o) in t.organizations.iter().enumerate() {
                    orgs.push(canonical_uuid(o).ok_or(format!(
                        "api.tokens[{i}].organizations[{j}]: not an organization id (a UUID) or \"*\": {o:?}"
                    ))?);
                }
                Scope::Only(orgs)
            };
            operators.push(OperatorToken {
                name: t.name.clone(),
                sha256,
                scope,
            });
        }
        let jwt = match &c.auth {
            None => None,
            Some(a) => {
                let hs256 = match &a.jwt_hs256_secret_file {
                    None => None,
                    Some(p) => {
                        let mut secret = std::fs::read(p).map_err(|e| {
                            format!(
                                "api.auth.jwt_hs256_secret_file: cannot read {}: {e}",
                                p.display()
                            )
                        })?;
                        while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                            secret.pop();
                        }
                        if secret.len() < 16 {
                            return Err(format!(
                                "api.auth.jwt_hs256_secret_file: {} holds {} bytes; an HS256 secret needs at least 16",
                                p.display(),
                                secret.len()
                            ));
                        }
                        Some(DecodingKey::from_secret(&secret))
                    }
                };
                let jwks = match &a.jwt_jwks_file {
                    None => HashMap::new(),
                    Some(p) => {
                        let text = std::fs::read_to_string(p).map_err(|e| {
                            format!("api.auth.jwt_jwks_file: cannot read {}: {e}", p.display())
                        })?;
                        jwks_keys(&text)
                            .map_err(|e| format!("api.auth.jwt_jwks_file: {}: {e}", p.display()))?
                    }
                };
                Some(JwtKeys {
                    hs256,
                    jwks,
                    issuer: a.jwt_issuer.clone(),
                    audience: a.jwt_audience.clone(),
                    user_claim: a.user_claim.clone(),
                    roles_claim: a.roles_claim.clone(),
                })
            }
        };
        Ok(Authenticator { operators, jwt })
    }

    /// What it holds, for the log (names and counts, never a secret):
    /// `2 operator token(s) (ops, admin), JWKS 1 key(s) (ec-1), HS256 secret`.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.operators.iter().map(|o| o.name.as_str()).collect();
        let mut s = format!("{} operator token(s) ({})", names.len(), names.join(", "));
        if let Some(j) = &self.jwt {
            let mut kids: Vec<&str> = j.jwks.keys().map(String::as_str).collect();
            kids.sort_unstable();
            s.push_str(&format!(
                ", JWKS {} key(s) ({})",
                kids.len(),
                kids.join(", ")
            ));
            if j.hs256.is_some() {
                s.push_str(", HS256 secret");
            }
        }
        s
    }

    /// Checks the `Authorization` header's value.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        now_s: u64,
    ) -> Result<Caller, ApiError> {
        let token = authorization
            .and_then(|h| {
                let (scheme, rest) = h.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthenticated("a bearer token is required"))?;
        if let Some(caller) = self.operator(token) {
            return Ok(caller);
        }
        match &self.jwt {
            Some(keys) if token.split('.').count() == 3 => keys.verify(token, now_s),
            _ => Err(ApiError::unauthenticated("invalid token")),
        }
    }

    /// The operator whose hash matches; every hash is compared in constant time.
    fn operator(&self, token: &str) -> Option<Caller> {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for op in &self.operators {
            let diff = op
                .sha256
                .iter()
                .zip(h.iter())
                .fold(0u8, |d, (a, b)| d | (a ^ b));
            if diff == 0 && found.is_none() {
                found = Some(Caller::Operator {
                    name: op.name.clone(),
                    scope: op.scope.clone(),
                });
            }
        }
        found
    }
}

/// The RS256 / ES256 keys of a JWKS document, by `kid`.
fn jwks_keys(text: &str) -> Result<HashMap<String, (DecodingKey, Algorithm)>, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    if set.keys.is_empty() {
        // Every JWT would be refused: a placeholder left in place, or a file cut short.
        return Err("holds no keys ({\"keys\":[]}), so every JWT would be refused: put the platform's public keys there, or remove jwt_jwks_file (and [api.auth] if no JWT is to be accepted)".into());
    }
    let mut out = HashMap::new();
    for (i, k) in set.keys.iter().enumerate() {
        let kid = k
            .common
            .key_id
            .clone()
            .ok_or(format!("keys[{i}]: has no kid"))?;
        let alg = match &k.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            _ => {
                return Err(format!(
                    "keys[{i}] ({kid}): only RSA (RS256) and EC P-256 (ES256) keys are supported"
                ))
            }
        };
        let key = DecodingKey::from_jwk(k).map_err(|e| format!("keys[{i}] ({kid}): {e}"))?;
        out.insert(kid, (key, alg));
    }
    Ok(out)
}

impl JwtKeys {
    fn verify(&self, token: &str, now_s: u64) -> Result<Caller, ApiError> {
        let invalid = || ApiError::unauthenticated("invalid token");
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref().ok_or_else(invalid)?,
            Algorithm::RS256 | Algorithm::ES256 => {
                let kid = header.kid.as_deref().ok_or_else(invalid)?;
                match self.jwks.get(kid) {
                    // The key decides the algorithm, never the token alone.
                    Some((key, alg)) if *alg == header.alg => key,
                    _ => return Err(invalid()),
                }
            }
            _ => return Err(invalid()),
        };
        // The library checks the signature and the algorithm only: its claim checks
        // accept a malformed `nbf` or an `iss` array and round a fractional `exp`, so
        // every registered claim is checked here, failing closed.
        let mut v = Validation::new(header.alg);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, &v)
                .map_err(|e| {
                    tracing::debug!(error = %e, "query API: JWT refused");
                    // A JSON error comes only after the signature was verified: the
                    // library's own claim parser choked on a claim of the wrong shape
                    // (an `exp` array, say), so name it as the check below would.
                    match e.kind() {
                        jsonwebtoken::errors::ErrorKind::Json(_) => signed_claims(token)
                            .and_then(|c| {
                                check_registered_claims(&c, &self.issuer, &self.audience, now_s)
                                    .err()
                            })
                            .map_or_else(invalid, |e| ApiError::unauthenticated(e.to_string())),
                        _ => invalid(),
                    }
                })?;
        check_registered_claims(&data.claims, &self.issuer, &self.audience, now_s)
            .map_err(|e| ApiError::unauthenticated(e.to_string()))?;
        claims_caller(&data.claims, &self.user_claim, &self.roles_claim).ok_or_else(invalid)
    }
}

/// The claims of a token whose signature has been verified, parsed as plain JSON.
fn signed_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Seconds of clock skew allowed on `exp` and `nbf`.
const LEEWAY_S: f64 = 30.0;

/// Why a token's registered claims are refused; each names the claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("token claim {0}: required")]
    Missing(&'static str),
    #[error("token claim {0}: must be a NumericDate (seconds since 1970, a non-negative number)")]
    NotNumericDate(&'static str),
    #[error("token claim iss: must be a string")]
    IssuerNotString,
    #[error("token claim iss: not the configured issuer")]
    WrongIssuer,
    #[error("token claim aud: must be a string or an array of strings")]
    AudienceMalformed,
    #[error("token claim aud: does not name this relay's audience")]
    WrongAudience,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
}

/// A NumericDate (RFC 7519 §2): a JSON number of seconds, fractions allowed.
fn numeric_date(
    claims: &serde_json::Map<String, serde_json::Value>,
    name: &'static str,
) -> Result<Option<f64>, ClaimError> {
    match claims.get(name) {
        None => Ok(None),
        Some(serde_json::Value::Number(n)) => match n.as_f64() {
            Some(s) if s.is_finite() && s >= 0.0 => Ok(Some(s)),
            _ => Err(ClaimError::NotNumericDate(name)),
        },
        Some(_) => Err(ClaimError::NotNumericDate(name)),
    }
}

/// Checks `exp` (required), `nbf` (if given), `iss` (one string, equal) and `aud` (a
/// string or an array of strings, naming `audience`) at `now_s`. Pure; any claim of
/// the wrong type is refused rather than ignored.
pub fn check_registered_claims(
    claims: &serde_json::Map<String, serde_json::Value>,
    issuer: &str,
    audience: &str,
    now_s: u64,
) -> Result<(), ClaimError> {
    let now = now_s as f64;
    let exp = numeric_date(claims, "exp")?.ok_or(ClaimError::Missing("exp"))?;
    let nbf = numeric_date(claims, "nbf")?;
    match claims.get("iss") {
        None => return Err(ClaimError::Missing("iss")),
        Some(serde_json::Value::String(s)) if s == issuer => {}
        Some(serde_json::Value::String(_)) => return Err(ClaimError::WrongIssuer),
        Some(_) => return Err(ClaimError::IssuerNotString),
    }
    let named = match claims.get("aud") {
        None => return Err(ClaimError::Missing("aud")),
        Some(serde_json::Value::String(s)) => s == audience,
        Some(serde_json::Value::Array(a)) => {
            let mut named = false;
            for v in a {
                named |= v.as_str().ok_or(ClaimError::AudienceMalformed)? == audience;
            }
            named
        }
        Some(_) => return Err(ClaimError::AudienceMalformed),
    };
    if !named {
        return Err(ClaimError::WrongAudience);
    }
    if exp + LEEWAY_S < now {
        return Err(ClaimError::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now + LEEWAY_S) {
        return Err(ClaimError::NotYetValid);
    }
    Ok(())
}

/// The caller described by verified claims: a non-empty user id, and roles as a map
/// (absent: no roles).
fn claims_caller(
    claims: &serde_json::Map<String, serde_json::Value>,
    user_claim: &str,
    roles_claim: &str,
) -> Option<Caller> {
    let user_id = claims.get(user_claim)?.as_str().filter(|s| !s.is_empty())?;
    let roles = match claims.get(roles_claim) {
        None | Some(serde_json::Value::Null) => HashMap::new(),
        // Keys that are not UUIDs can name no organization a request may ask for.
        Some(serde_json::Value::Object(m)) => m
            .iter()
            .filter_map(|(org, role)| Some((canonical_uuid(org)?, role.as_str()?.to_string())))
            .collect(),
        Some(_) => return None,
    };
    Some(Caller::User {
        user_id: user_id.to_string(),
        roles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const A: &str = "3d5e4ee2-7e5f-468f-b027-276a65518784";
    const B: &str = "e2eb4315-1ce5-4c5b-b1a1-d6a891c08a56";
    const SECRET: &str = "a shared secret of some length";
    const NOW: u64 = 4_000_000_000;

    fn authenticator(dir: &std::path::Path) -> Authenticator {
        std::fs::write(dir.join("secret"), format!("{SECRET}\n")).unwrap();
        let text = format!(
            r#"[source]
paths = ["-"]
[api]
listen = "127.0.0.1:0"
[api.auth]
jwt_hs256_secret_file = "{}"
jwt_issuer = "https://gitpod.example.com"
jwt_audience = "audit-relay"
[[api.tokens]]
name = "ops-a"
sha256 = "{}"
organizations = ["{}"]
[[api.tokens]]
name = "admin"
sha256 = "{}"
organizations = ["*"]
"#,
            dir.join("secret").display(),
            hex(&Sha256::digest(b"token-a")),
            // Spelled in uppercase: the scope compares the canonical form.
            A.to_uppercase(),
            hex(&Sha256::digest(b"token-admin")),
        );
        let c = Config::from_toml(&text).unwrap();
        Authenticator::from_config(c.api.as_ref().unwrap()).unwrap()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn jwt(claims: serde_json::Value, secret: &str) -> String {
        let t = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        format!("Bearer {t}")
    }

    fn claims(exp: u64, aud: &str) -> serde_json::Value {
        serde_json::json!({"sub": "u1", "iss": "https://gitpod.example.com", "aud": aud,
            "exp": exp, "orgs": {A.to_uppercase(): "owner", B: "member", "not-a-uuid": "owner"}})
    }

    #[test]
    fn operator_tokens_and_their_scope() {
        let d = tempfile::tempdir().unwrap();
        let a = authenticator(d.path());
        let c = a.authenticate(Some("Bearer token-a"), NOW).unwrap();
        assert_eq!(c.actor_id(), "operator:ops-a");
        assert!(c.may_read(A) && !c.may_read(B));
        let c = a.authenticate(Some("bearer token-admin"), NOW).unwrap();
        assert!(c.may_read(A) && c.may_read(B));
        for bad in [
            None,
            Some(""),
            Some("Bearer "),
            Some("Basic token-a"),
            Some("Bearer token-b"),
        ] {
            let e = a.authenticate(bad, NOW).unwrap_err();
            assert_eq!(
                e.code,
                super::super::error::Code::Unauthenticated,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn jwt_owner_member_and_every_refusal() {
        let d = tempfile::tempdir().unwrap();
        let a = authenticator(d.path());
        let ok = jwt(claims(NOW + 600, "audit-relay"), SECRET);
        let c = a.authenticate(Some(&ok), NOW).unwrap();
        assert_eq!(c.actor_id(), "u1");
        assert!(c.may_read(A), "owner of A");
        assert!(!c.may_read(B), "member of B");
        let refused = [
            jwt(claims(NOW - 3600, "audit-relay"), SECRET),
            jwt(claims(NOW + 600, "someone-else"), SECRET),
            jwt(claims(NOW + 600, "audit-relay"), "another secret entirely"),
            jwt(
                serde_json::json!({"iss": "https://gitpod.example.com", "aud": "audit-relay", "exp": NOW + 600}),
                SECRET,
            ),
            jwt(
                serde_json::json!({"sub": "u", "aud": "audit-relay", "exp": NOW + 600}),
                SECRET,
            ),
            jwt(
                serde_json::json!({"sub": "u", "iss": "https://gitpod.example.com", "aud": "audit-relay", "exp": NOW + 600, "orgs": ["x"]}),
                SECRET,
            ),
            // Not valid before an hour from now.
            jwt(
                serde_json::json!({"sub": "u1", "iss": "https://gitpod.example.com", "aud": "audit-relay", "exp": NOW + 7200, "nbf": NOW + 3600, "orgs": {A: "owner"}}),
                SECRET,
            ),
        ];
        for (i, t) in refused.iter().enumerate() {
            let e = a.authenticate(Some(t), NOW).unwrap_err();
            assert_eq!(
                e.code,
                super::super::error::Code::Unauthenticated,
                "case {i}"
            );
        }
        // No roles claim: authenticated, may read nothing.
        let t = jwt(
            serde_json::json!({"sub": "u", "iss": "https://gitpod.example.com", "aud": "audit-relay", "exp": NOW + 600}),
            SECRET,
        );
        assert!(!a.authenticate(Some(&t), NOW).unwrap().may_read(A));
    }

    #[test]
    fn registered_claims_fail_closed_and_name_the_claim() {
        let d = tempfile::tempdir().unwrap();
        let a = authenticator(d.path());
        let base = || {
            serde_json::json!({"sub": "u1", "iss": "https://gitpod.example.com",
                "aud": "audit-relay", "exp": NOW + 600, "orgs": {A: "owner"}})
        };
        let with = |k: &str, v: serde_json::Value| {
            let mut c = base();
            c[k] = v;
            jwt(c, SECRET)
        };
        let refused = [
            (with("nbf", serde_json::json!("0")), "token claim nbf:"),
            (with("nbf", serde_json::json!(null)), "token claim nbf:"),
            (
                with("exp", serde_json::json!("4000000600")),
                "token claim exp:",
            ),
            (with("exp", serde_json::json!(-1)), "token claim exp:"),
            (
                with("exp", serde_json::json!([NOW + 600])),
                "token claim exp:",
            ),
            (
                with("iss", serde_json::json!(["https://gitpod.example.com"])),
                "token claim iss:",
            ),
            (
                with("iss", serde_json::json!("https://evil.example.com")),
                "token claim iss:",
            ),
            (with("aud", serde_json::json!(7)), "token claim aud:"),
            (
                with("aud", serde_json::json!(["audit-relay", 7])),
                "token claim aud:",
            ),
            (
                with("aud", serde_json::json!({"audit-relay": true})),
                "token claim aud:",
            ),
            (
                with("aud", serde_json::json!(["other"])),
                "token claim aud:",
            ),
            // Past the 30 s leeway, by a fraction of a second.
            (
                with("exp", serde_json::json!(NOW as f64 - 30.5)),
                "token expired",
            ),
            (
                with("nbf", serde_json::json!(NOW as f64 + 30.5)),
                "token not valid yet",
            ),
        ];
        for (i, (t, want)) in refused.iter().enumerate() {
            let e = a.authenticate(Some(t), NOW).unwrap_err();
            assert_eq!(
                e.code,
                super::super::error::Code::Unauthenticated,
                "case {i}"
            );
            assert!(e.message.starts_with(want), "case {i}: {e}");
        }
        let mut c = base();
        c.as_object_mut().unwrap().remove("exp");
        let e = a.authenticate(Some(&jwt(c, SECRET)), NOW).unwrap_err();
        assert_eq!(e.message, "token claim exp: required");
        // Fractional NumericDates are honoured, and an audience list naming this relay.
        for ok in [
            with("exp", serde_json::json!(NOW as f64 + 600.25)),
            with("exp", serde_json::json!(NOW as f64 - 29.5)),
            with("nbf", serde_json::json!(NOW as f64 + 29.5)),
            with("nbf", serde_json::json!(NOW as f64 - 0.75)),
            with("aud", serde_json::json!(["other", "audit-relay"])),
        ] {
            let c = a.authenticate(Some(&ok), NOW).unwrap();
            assert!(c.may_read(A));
        }
    }
}
