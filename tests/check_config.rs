//! `check-config` against the real binary, for configs it once called "config ok" and
//! that then failed (or silently did nothing): each must exit 2 naming its key.

mod common;

use common::{Harness, BIN};
use std::process::{Command, Output};

/// `audit-relay -c CONFIG check-config` with a clean environment for the stream
/// placeholders (`vars` are set on top).
fn check(h: &Harness, vars: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.arg("-c")
        .arg(&h.config)
        .arg("check-config")
        .env_remove("RUST_LOG")
        .env_remove("AUDIT_RELAY_CONFIG")
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .env("HOSTNAME", "test-host");
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().expect("run audit-relay")
}

/// Writes the harness's good config plus `extra`; check-config must exit 2 and print
/// every line of `expect`.
fn assert_refused(h: &Harness, extra: &str, expect: &[&str]) -> String {
    let text = format!("{}\n{extra}", h.config_text(&[], &[]));
    h.write_config(&text);
    let out = check(h, &[]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "config:\n{text}\nstdout: {}\nstderr: {err}",
        String::from_utf8_lossy(&out.stdout)
    );
    for e in expect {
        assert!(err.contains(e), "stderr should contain {e:?}:\n{err}");
    }
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("config ok"),
        "no summary for a bad config"
    );
    err
}

fn good(h: &Harness) {
    let out = check(h, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_log_level_that_is_no_level_is_refused() {
    let h = Harness::new();
    let text = h
        .config_text(&[], &[])
        .replace("level = \"info\"", "level = \"verbose\"");
    h.write_config(&text);
    let out = check(&h, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("log.level: \"verbose\" is not a level"),
        "{err}"
    );
    h.write_config(&text.replace("\"verbose\"", "\"audit_relay=debug,info\""));
    good(&h);
}

#[test]
fn a_spool_dir_that_is_a_regular_file_is_refused() {
    let h = Harness::new();
    let file = h.dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let text = h.config_text(&[], &[&format!("dir = {:?}", file.display().to_string())]);
    h.write_config(&text);
    let out = check(&h, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("spool.dir: "), "{err}");
    assert!(err.contains("is a file, not a directory"), "{err}");
}

#[test]
fn admin_and_api_on_one_port_are_refused() {
    let h = Harness::new();
    assert_refused(
        &h,
        "[admin]\nlisten = \"0.0.0.0:9090\"\n\n[api]\nlisten = \"127.0.0.1:9090\"\n",
        &["api.listen: 127.0.0.1:9090 is the port of admin.listen"],
    );
}

#[test]
fn stream_placeholders_without_their_environment_are_refused() {
    let h = Harness::new();
    let cw = "[cloudwatch]\nregion = \"us-east-1\"\nlog_group = \"/gitpod/audit\"\nlog_stream = \"{namespace}/{pod}\"\n";
    assert_refused(
        &h,
        cw,
        &["cloudwatch.log_stream: {namespace} needs the POD_NAMESPACE environment variable"],
    );
    // One of the two: the other is named.
    let out = check(&h, &[("POD_NAMESPACE", "prod")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cloudwatch.log_stream: {pod} needs the POD_NAME environment variable"),
        "{err}"
    );
    let out = check(&h, &[("POD_NAMESPACE", "prod"), ("POD_NAME", "server-1")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn regions_that_do_not_exist_are_refused() {
    let h = Harness::new();
    let cw = |r: &str| format!("[cloudwatch]\nregion = {r:?}\nlog_group = \"/gitpod/audit\"\n");
    assert_refused(
        &h,
        &cw("eu-west-9"),
        &["cloudwatch.region: \"eu-west-9\" is not an AWS region this build knows"],
    );
    assert_refused(
        &h,
        &cw("us-east1"),
        &["cloudwatch.region: \"us-east1\" is not an AWS region name"],
    );
    h.write_config(&format!("{}\n{}", h.config_text(&[], &[]), cw("eu-west-1")));
    good(&h);
}

#[test]
fn an_empty_jwks_is_refused() {
    let h = Harness::new();
    let jwks = h.dir.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
    assert_refused(
        &h,
        &format!(
            "[api]\nlisten = \"127.0.0.1:0\"\n[api.auth]\njwt_jwks_file = {:?}\njwt_issuer = \"https://gitpod.example.com\"\njwt_audience = \"audit-relay\"\n",
            jwks.display().to_string()
        ),
        &["api.auth.jwt_jwks_file: ", "holds no keys"],
    );
}

#[test]
fn the_all_zero_operator_token_is_refused() {
    let h = Harness::new();
    assert_refused(
        &h,
        &format!(
            "[api]\nlisten = \"127.0.0.1:0\"\n[[api.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\norganizations = [\"*\"]\n",
            "0".repeat(64)
        ),
        &["api.tokens[0].sha256: is the all-zero placeholder"],
    );
}

#[test]
fn a_toml_syntax_error_names_its_line_and_key() {
    let h = Harness::new();
    let text = h
        .config_text(&[], &[])
        .replace("level = \"info\"", "level = info");
    let line = text
        .lines()
        .position(|l| l == "level = info")
        .expect("the level line")
        + 1;
    h.write_config(&text);
    let out = check(&h, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("log.level: line {line}, column 9: not valid TOML")),
        "{err}"
    );
}

#[test]
fn every_type_error_is_listed() {
    let h = Harness::new();
    let text = h.config_text(
        &["poll_interval = 5"],
        &["retention_days = \"ninety\"", "max_bytes = true"],
    );
    h.write_config(&format!(
        "{text}\n[admin]\nlisten = 9090\n\n[cloudwatch]\nlog_group = \"/gitpod/audit\"\nstreams = \"four\"\n"
    ));
    let out = check(&h, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for key in [
        "source.poll_interval: ",
        "spool.retention_days: invalid type",
        "spool.max_bytes: ",
        "admin.listen: ",
        "cloudwatch.streams: invalid type",
    ] {
        assert!(err.contains(key), "{key} in:\n{err}");
    }
    // One line per problem (after the heading).
    assert_eq!(err.lines().count(), 6, "{err}");
}
