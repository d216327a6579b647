//! Shared by the query API's black-box tests: a relay with `[api]` configured (HS256
//! secret, an ES256 JWKS, two operator tokens), a small HTTP/1.1 client over std::net,
//! JWT minting, and events written as bare JSON lines.

#![allow(dead_code)]

use crate::common::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const ORG_A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
pub const ORG_B: &str = "bbbbbbbb-0000-4000-8000-000000000002";
pub const SECRET: &str = "the platform's shared HS256 secret";
pub const ISSUER: &str = "https://gitpod.test";
pub const AUDIENCE: &str = "audit-relay";
pub const OPS_A_TOKEN: &str = "ops-token-for-org-a";
pub const ADMIN_TOKEN: &str = "admin-token-for-everything";
pub const READ_ACTION: &str = "gitpod.v1.AuditLogService/listAuditLogs";
pub const LIST: &str = "/gitpod.v1.AuditLogService/ListAuditLogs";

/// An ES256 key pair: the encoding key, and the JWKS document of its public half.
pub struct EcKey {
    pub encoding: EncodingKey,
    pub jwks: String,
}

pub fn ec_key(kid: &str) -> EcKey {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    assert_eq!(point.len(), 65, "uncompressed P-256 point");
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..]),
    }]});
    EcKey {
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwks: jwks.to_string(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// A harness whose config serves the API on a free port; returns it with the ES256 key
/// whose public half is in the JWKS file.
pub fn api_harness() -> (Harness, EcKey) {
    api_harness_with(&[], &[])
}

/// Like [`api_harness`], with extra `key = value` lines in `[spool]` and in `[api]`.
pub fn api_harness_with(spool: &[&str], api: &[&str]) -> (Harness, EcKey) {
    let h = Harness::with(&[], spool);
    let secret = h.dir.path().join("jwt.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let ec = ec_key("ec-1");
    let jwks = h.dir.path().join("jwks.json");
    std::fs::write(&jwks, &ec.jwks).unwrap();
    let mut text = std::fs::read_to_string(&h.config).unwrap();
    text.push_str(&format!(
        r#"
[api]
listen = "127.0.0.1:0"
{api}

[api.auth]
jwt_hs256_secret_file = {secret:?}
jwt_jwks_file = {jwks:?}
jwt_issuer = "{ISSUER}"
jwt_audience = "{AUDIENCE}"

[[api.tokens]]
name = "ops-a"
sha256 = "{}"
organizations = ["{ORG_A}"]

[[api.tokens]]
name = "admin"
sha256 = "{}"
organizations = ["*"]
"#,
        hex(&Sha256::digest(OPS_A_TOKEN)),
        hex(&Sha256::digest(ADMIN_TOKEN)),
        secret = secret.display().to_string(),
        jwks = jwks.display().to_string(),
        api = api.join("\n"),
    ));
    h.write_config(&text);
    (h, ec)
}

/// The address the relay logged for its query API.
pub fn api_addr(relay: &Relay) -> String {
    logged_addr(relay, "query API listening")
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A JWT signed with HS256 (`secret`), for `sub` with `orgs`, expiring at `exp` (s).
pub fn hs256(secret: &str, aud: &str, exp: i64, orgs: serde_json::Value) -> String {
    let claims = serde_json::json!({"sub": "user-1", "iss": ISSUER, "aud": aud, "exp": exp,
        "iat": exp - 3600, "orgs": orgs});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A JWT signed with ES256 by `key`, with header `kid`.
pub fn es256(key: &EcKey, kid: &str, exp: i64, orgs: serde_json::Value) -> String {
    let claims = serde_json::json!({"sub": "user-ec", "iss": ISSUER, "aud": AUDIENCE, "exp": exp, "orgs": orgs});
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap()
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How a request body is sent.
pub enum Send<'a> {
    None,
    Plain(&'a [u8]),
    /// `Transfer-Encoding: chunked`, in chunks of this many bytes.
    Chunked(&'a [u8], usize),
}

/// One HTTP/1.1 request on its own connection.
pub fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Send) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect to the query API");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match &body {
        Send::None => {}
        Send::Plain(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
        Send::Chunked(..) => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    match body {
        Send::None => {}
        Send::Plain(b) => s.write_all(b).unwrap(),
        Send::Chunked(b, n) => {
            for c in b.chunks(n.max(1)) {
                s.write_all(format!("{:x}\r\n", c.len()).as_bytes())
                    .unwrap();
                s.write_all(c).unwrap();
                s.write_all(b"\r\n").unwrap();
                s.flush().unwrap();
            }
            s.write_all(b"0\r\n\r\n").unwrap();
        }
    }
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .get(9..12)
        .unwrap_or_else(|| panic!("status line {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').expect("header line");
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let n = usize::from_str_radix(line.trim(), 16)
                .unwrap_or_else(|_| panic!("chunk size {line:?} (stream cut?)"));
            if n == 0 {
                break;
            }
            let mut c = vec![0; n + 2];
            r.read_exact(&mut c).unwrap();
            body.extend_from_slice(&c[..n]);
        }
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// A Connect JSON ListAuditLogs call with a bearer token (if any).
pub fn list_json(addr: &str, bearer: Option<&str>, req: &serde_json::Value) -> Resp {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let body = req.to_string();
    request(addr, "POST", LIST, &headers, Send::Plain(body.as_bytes()))
}

/// A Connect binary-protobuf ListAuditLogs call (`req`, encoded) with a bearer token.
pub fn list_proto(addr: &str, bearer: &str, req: &impl prost::Message) -> Resp {
    let auth = format!("Bearer {bearer}");
    let headers = [
        ("Content-Type", "application/proto"),
        ("Authorization", auth.as_str()),
    ];
    request(
        addr,
        "POST",
        LIST,
        &headers,
        Send::Plain(&req.encode_to_vec()),
    )
}

/// A REST GET with a bearer token.
pub fn get(addr: &str, bearer: &str, path: &str) -> Resp {
    let auth = format!("Bearer {bearer}");
    request(addr, "GET", path, &[("Authorization", &auth)], Send::None)
}

/// One bare audit event line.
pub fn event_line(id: &str, ms: i64, action: &str, org: &str, actor: &str, n: u64) -> String {
    serde_json::json!({"id": id, "timestamp": rfc3339_ms(ms), "action": action,
        "organizationId": org, "actorId": actor, "args": [n, {"k": "v"}]})
    .to_string()
}

pub fn rfc3339_ms(ms: i64) -> String {
    audit_relay::event::format_timestamp_ms(ms)
}

/// Stored events of the read action, as (organizationId, actorId, args) of their bodies.
pub fn read_events(h: &Harness) -> Vec<(String, String, serde_json::Value)> {
    let Some(c) = h.db() else { return vec![] };
    let mut stmt = c
        .prepare("SELECT body FROM events WHERE action = ?1 ORDER BY seq")
        .unwrap();
    let rows = stmt
        .query_map([READ_ACTION], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_str(&b.unwrap()).unwrap();
            (
                v["organizationId"].as_str().unwrap().to_string(),
                v["actorId"].as_str().unwrap().to_string(),
                v["args"].clone(),
            )
        })
        .collect();
    rows
}
