//! SIGHUP against the real binary: the relay lives on, and the query API's operator
//! tokens and JWT keys are read again (a new token and a new JWKS key work after it, a
//! broken file keeps the running keys), and so is the TLS certificate (a new connection
//! gets the renewed one); without [api] it only lives on.

mod api_common;
mod common;

use api_common::*;
use common::*;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::process::Command;

const NEW_TOKEN: &str = "a-token-added-while-running";

fn hangup(relay: &Relay) {
    let st = Command::new("kill")
        .args(["-HUP", &relay.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(st.success());
}

/// Waits until the relay's log holds `needle` `n` times.
fn wait_log(h: &Harness, relay: &mut Relay, needle: &str, n: usize) {
    let path = relay.log_path();
    h.wait_until(
        Some(relay),
        &format!("{n}x {needle:?} in the log"),
        DEADLINE,
        || {
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .matches(needle)
                .count()
                >= n
        },
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn status(addr: &str, token: &str) -> u16 {
    list_json(addr, Some(token), &json!({"organizationId": ORG_A})).status
}

#[test]
fn sighup_reloads_tokens_and_keys_and_the_relay_lives_on() {
    let (h, _ec) = api_harness();
    let mut relay = h.start();
    let addr = api_addr(&relay);
    assert_eq!(status(&addr, ADMIN_TOKEN), 200);
    assert_eq!(status(&addr, NEW_TOKEN), 401, "not configured yet");
    let ec2 = ec_key("ec-2");
    let jwt2 = es256(&ec2, "ec-2", now_ms() / 1000 + 600, json!({ORG_A: "owner"}));
    assert_eq!(status(&addr, &jwt2), 401, "its key is not in the JWKS yet");

    // A token added to the config, a key added to the JWKS file.
    let text = std::fs::read_to_string(&h.config).unwrap();
    h.write_config(&format!(
        "{text}\n[[api.tokens]]\nname = \"added\"\nsha256 = \"{}\"\norganizations = [\"{ORG_A}\"]\n",
        hex(&Sha256::digest(NEW_TOKEN))
    ));
    std::fs::write(h.dir.path().join("jwks.json"), &ec2.jwks).unwrap();
    hangup(&relay);
    wait_log(&h, &mut relay, "reload: query API keys", 1);
    assert!(
        relay.try_wait().is_none(),
        "alive after SIGHUP:\n{}",
        relay.log()
    );
    assert_eq!(status(&addr, NEW_TOKEN), 200, "{}", relay.log());
    assert_eq!(status(&addr, ADMIN_TOKEN), 200);
    assert_eq!(status(&addr, &jwt2), 200, "the new JWKS key");
    let log = relay.log();
    assert!(
        log.contains("3 operator token(s) (ops-a, admin, added)"),
        "{log}"
    );
    assert!(log.contains("JWKS 1 key(s) (ec-2)"), "{log}");
    assert!(!log.contains(NEW_TOKEN), "no token in the log");

    // A broken config: logged, nothing changes, the relay lives on.
    let good = std::fs::read_to_string(&h.config).unwrap();
    h.write_config(&good.replace("name = \"added\"", "name = 7"));
    hangup(&relay);
    wait_log(&h, &mut relay, "nothing reloaded", 1);
    assert!(
        relay.log().contains("api.tokens[2].name"),
        "{}",
        relay.log()
    );
    assert_eq!(status(&addr, NEW_TOKEN), 200, "the running keys stay");
    // A JWKS file that went bad: the same.
    h.write_config(&good);
    std::fs::write(h.dir.path().join("jwks.json"), "{not json").unwrap();
    hangup(&relay);
    wait_log(&h, &mut relay, "nothing reloaded", 2);
    assert!(
        relay.log().contains("api.auth.jwt_jwks_file"),
        "{}",
        relay.log()
    );
    assert_eq!(status(&addr, &jwt2), 200, "the running keys stay");
    assert!(relay.try_wait().is_none());
    relay.terminate();
}

#[test]
fn sighup_without_an_api_does_not_stop_the_relay() {
    let h = Harness::new();
    let mut relay = h.start();
    h.wait_until(Some(&mut relay), "the spool", DEADLINE, || h.db().is_some());
    hangup(&relay);
    wait_log(&h, &mut relay, "nothing to reload", 1);
    write_lines(
        &mut append_to(&h.log("a.log")),
        &server_lines(&mut gen::Gen::new(1), 0, 3).1,
    );
    h.wait_events(&mut relay, 3);
    relay.terminate();
}

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM, certificate DER).
fn self_signed() -> (String, String, rustls::pki_types::CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (
        ck.cert.pem(),
        ck.signing_key.serialize_pem(),
        ck.cert.der().clone(),
    )
}

/// Whether a TLS client trusting only `trust` gets an HTTP answer from `addr`.
fn answers_trusting(addr: &str, trust: &rustls::pki_types::CertificateDer<'static>) -> bool {
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let req = format!("GET /nothing HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).and_then(|_| s.flush()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 ")
}

#[test]
fn sighup_puts_a_renewed_certificate_in_use() {
    let (h, _ec) = api_harness();
    let (cert_a, key_a, der_a) = self_signed();
    let (cert_b, key_b, der_b) = self_signed();
    let (cert, key) = (h.dir.path().join("tls.crt"), h.dir.path().join("tls.key"));
    std::fs::write(&cert, cert_a).unwrap();
    std::fs::write(&key, key_a).unwrap();
    let text = std::fs::read_to_string(&h.config).unwrap().replacen(
        "[api]\nlisten = \"127.0.0.1:0\"\n",
        &format!(
            "[api]\nlisten = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
        1,
    );
    h.write_config(&text);
    let mut relay = h.start();
    let addr = api_addr(&relay);
    assert!(answers_trusting(&addr, &der_a));
    assert!(!answers_trusting(&addr, &der_b), "not the new one yet");
    std::fs::write(&cert, cert_b).unwrap();
    std::fs::write(&key, key_b).unwrap();
    hangup(&relay);
    wait_log(&h, &mut relay, "reload: query API keys", 1);
    assert!(
        relay
            .log()
            .contains(&format!("TLS certificate {}", cert.display())),
        "{}",
        relay.log()
    );
    assert!(answers_trusting(&addr, &der_b), "the renewed certificate");
    assert!(!answers_trusting(&addr, &der_a), "the old one is gone");
    relay.terminate();
}
