//! The query API over TLS (`api.tls_cert`, `api.tls_key`) against the real binary: a
//! rustls client trusting a self-signed certificate made here gets its page; plain HTTP
//! to the TLS port gets no HTTP answer; half a TLS config is refused naming the key;
//! shutdown is graceful with a connection open.

mod api_common;
mod common;

use api_common::*;
use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM, certificate DER).
fn self_signed() -> (String, String, CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (
        ck.cert.pem(),
        ck.signing_key.serialize_pem(),
        ck.cert.der().clone(),
    )
}

/// The API harness with TLS configured; returns it with the certificate to trust.
fn tls_harness() -> (Harness, CertificateDer<'static>) {
    let (h, _ec) = api_harness();
    let (cert, key, der) = self_signed();
    let cert_path = h.dir.path().join("tls.crt");
    let key_path = h.dir.path().join("tls.key");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let text = std::fs::read_to_string(&h.config).unwrap().replacen(
        "[api]\nlisten = \"127.0.0.1:0\"\n",
        &format!(
            "[api]\nlisten = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
        1,
    );
    assert!(text.contains("tls_key"), "config has the TLS keys");
    h.write_config(&text);
    (h, der)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(addr: &str, trust: &CertificateDer<'static>) -> Tls {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// A keep-alive Connect JSON ListAuditLogs call over `s`: (status, body).
fn list_over(s: &mut Tls, addr: &str, bearer: &str, req: &serde_json::Value) -> (u16, String) {
    let body = req.to_string();
    write!(
        s,
        "POST {LIST} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {bearer}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s.flush().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line[9..12].parse().unwrap();
    let mut len = 0;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap();
            }
        }
    }
    let mut b = vec![0; len];
    r.read_exact(&mut b).unwrap();
    (status, String::from_utf8(b).unwrap())
}

#[test]
fn list_audit_logs_over_tls_and_plain_http_is_refused() {
    let (h, trust) = tls_harness();
    let now = now_ms();
    let lines: Vec<String> = (0..5)
        .map(|i| {
            event_line(
                &format!("00000000-0000-4000-8000-00000000000{i}"),
                now - 60_000 * (i + 1),
                "startWorkspace",
                ORG_A,
                "dddddddd-0000-4000-8000-000000000004",
                i as u64,
            )
        })
        .collect();
    write_lines(&mut append_to(&h.log("events.log")), &lines);
    let mut relay = h.start();
    let addr = api_addr(&relay);
    assert!(relay.log().contains("tls=true"), "{}", relay.log());
    h.wait_events(&mut relay, 5);

    let mut s = connect(&addr, &trust);
    let req = serde_json::json!({ "organizationId": ORG_A });
    let (status, body) = list_over(&mut s, &addr, ADMIN_TOKEN, &req);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["auditLogs"].as_array().unwrap().len(), 5, "{body}");
    // The same connection is kept alive for a second call.
    let (status, _) = list_over(&mut s, &addr, "not-a-token", &req);
    assert_eq!(status, 401);

    // Plain HTTP to the TLS port: no HTTP answer, only a TLS alert or a closed connection.
    let mut plain = TcpStream::connect(&addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let _ = write!(
        plain,
        "POST {LIST} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/"),
        "plain HTTP answered: {}",
        String::from_utf8_lossy(&got)
    );

    // Shutdown with an idle TLS connection still open is graceful and exits 0.
    let _open = connect(&addr, &trust);
    relay.terminate();
}

#[test]
fn half_a_tls_config_is_refused_naming_the_key() {
    let (h, _ec) = api_harness();
    let text = std::fs::read_to_string(&h.config).unwrap().replacen(
        "[api]\nlisten = \"127.0.0.1:0\"\n",
        "[api]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"/nonexistent/tls.crt\"\n",
        1,
    );
    h.write_config(&text);
    let out = h.cli(&["check-config"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("api.tls_key: required when api.tls_cert is given"),
        "{err}"
    );

    // Both given, but the certificate cannot be read: `check-config` and `run` both
    // fail naming it.
    h.write_config(&text.replacen(
        "tls_cert = \"/nonexistent/tls.crt\"\n",
        "tls_cert = \"/nonexistent/tls.crt\"\ntls_key = \"/nonexistent/tls.key\"\n",
        1,
    ));
    let out = h.cli(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("api.tls_cert: cannot read /nonexistent/tls.crt"),
        "{err}"
    );
    let out = h.cli(&["run"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("api.tls_cert: cannot read /nonexistent/tls.crt"),
        "{err}"
    );
}
