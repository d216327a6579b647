//! What the relay's own log may say: never an event's input at info level (a
//! quarantine warning names the field and the problem; the value stays in the
//! quarantine table), and never a credential at any level, even at `trace`.

mod common;

use common::moto::{self, Moto};
use common::{Harness, DEADLINE};
use std::fs::File;
use std::io::Write;
use std::process::Stdio;

const SECRET: &str = "Pa55w0rd-in-args-7f3e";

#[test]
fn quarantine_warnings_name_the_field_not_the_value() {
    let h = Harness::new();
    let mut f = File::create(h.log("a.log")).unwrap();
    let ev = |id: &str, ts: &str, args: &str| {
        format!(
            r#"{{"id":"{id}","timestamp":"{ts}","action":"a","organizationId":"o","actorId":"u","args":{args}}}"#
        )
    };
    let good_id = "1ac75456-ae7d-4233-9914-32d124fa35c3";
    let lines = [
        ev(SECRET, "2024-06-24T13:29:36.484Z", "[]"),
        ev(good_id, SECRET, "[]"),
        ev(
            good_id,
            "2024-06-24T13:29:36.484Z",
            &format!("\"{SECRET}\""),
        ),
        format!("[\"{SECRET}\"]"),
        format!("{{\"id\":\"{SECRET}"),
    ];
    for l in &lines {
        writeln!(f, "{l}").unwrap();
    }
    let mut relay = h.start();
    // One a second at most is logged: wait for each to be stored, then look at the log.
    h.wait_quarantined(&mut relay, lines.len() as u64);
    let log = relay.log();
    relay.terminate();
    assert!(log.contains("record quarantined"), "{log}");
    assert!(!log.contains(SECRET), "input reached the log:\n{log}");
    // The operator still sees the value where it belongs.
    let rows = h.quarantine_rows();
    assert_eq!(rows.len(), lines.len());
    assert!(rows.iter().any(|r| r.reason.contains(SECRET)), "{rows:?}");
}

#[test]
fn no_credential_appears_in_the_log_even_at_trace() {
    let moto = Moto::start();
    let h = Harness::new();
    moto::configure(&h, &moto.endpoint(), "/hygiene", &[]);
    let key_id = "AKIAHYGIENETEST4242";
    let secret = "hYg1eneSecretKey/abcdefghijklmnopqrstuvw";
    let token = "hygieneSessionToken0123456789";
    let mut f = File::create(h.log("a.log")).unwrap();
    let mut g = common::gen::Gen::new(7);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (_, lines) = common::server_lines(&mut g, now_ms - common::BASE_MS - 60_000, 20);
    for l in &lines {
        writeln!(f, "{l}").unwrap();
    }
    let stderr_path = h.dir.path().join("trace.stderr");
    let child = moto::relay_command(&h)
        .arg("run")
        // Everything at debug, and the SDK's credential and signing parts at trace (the
        // whole process at trace writes hundreds of MB of runtime internals).
        .env(
            "RUST_LOG",
            "debug,aws_config=trace,aws_sigv4=trace,aws_runtime=trace,aws_credential_types=trace,\
             aws_smithy_runtime=trace,aws_smithy_runtime_api=trace,aws_smithy_http_client=trace",
        )
        .env("AWS_ACCESS_KEY_ID", key_id)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_SESSION_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    // Killed on every way out, a failed assertion included.
    let mut child = KillOnDrop(child);
    let start = std::time::Instant::now();
    // Until the events are in CloudWatch: credentials were loaded and requests signed.
    while moto::forward_state(&h).1 < 20 {
        if start.elapsed() > DEADLINE {
            child.stop();
            let log = std::fs::read_to_string(&stderr_path).unwrap();
            let tail: String = log
                .lines()
                .filter(|l| !l.contains("TRACE"))
                .take(60)
                .collect::<Vec<_>>()
                .join("\n");
            panic!("events never arrived; log ({} bytes):\n{tail}", log.len());
        }
        std::thread::sleep(common::POLL);
    }
    child.stop();
    let sent = moto.events("/hygiene", moto::HOSTNAME);
    assert!(sent.iter().filter(|e| !e.is_checkpoint()).count() >= 20);
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    // Debug logging was on, down to the HTTP client the SDK talks through.
    assert!(
        log.contains(" DEBUG ") && log.contains("hyper_util"),
        "debug logging was not on:\n{log}"
    );
    for (what, s) in [
        ("access key id", key_id),
        ("secret key", secret),
        ("session token", token),
    ] {
        for part in [s, &s[..12], &s[s.len() - 12..]] {
            let at: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(part))
                .map(|l| &l[..l.len().min(400)])
                .take(5)
                .collect();
            assert!(
                at.is_empty(),
                "the {what} ({part}) appears in the log:\n{}",
                at.join("\n")
            );
        }
    }
}

struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}
