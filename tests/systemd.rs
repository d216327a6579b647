//! The systemd unit (deploy/systemd/audit-relay.service): `systemd-analyze verify` finds
//! nothing to say about it (where systemd-analyze exists; skipped with a printed reason
//! where not), and it has the settings a VM install needs.

mod common;

use std::path::Path;
use std::process::Command;

fn unit() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/audit-relay.service"),
    )
    .unwrap()
}

/// `systemd-analyze verify` on `text` (with ExecStart pointing at the real binary):
/// `None` when systemd-analyze is not installed, else (success, what it printed).
fn verify(text: &str) -> Option<(bool, String)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit-relay.service");
    std::fs::write(
        &path,
        text.replace("/usr/local/bin/audit-relay", common::BIN),
    )
    .unwrap();
    let out = match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("systemd-analyze: {e}"),
    };
    Some((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn systemd_analyze_verify_has_nothing_to_say() {
    let Some((ok, said)) = verify(&unit()) else {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed here (Debian's systemd package has it)"
        );
        return;
    };
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
    // The check can fail: a misspelt key and a bad value are reported.
    let (_, said) =
        verify(&unit().replace("Restart=on-failure", "Restart=sometimes\nProtectSistem=yes"))
            .unwrap();
    assert!(
        said.contains("sometimes") && said.contains("ProtectSistem"),
        "{said}"
    );
}

#[test]
fn the_unit_has_what_a_vm_install_needs() {
    let text = unit();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for want in [
        "User=audit-relay",
        "StateDirectory=audit-relay",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
        "ExecStart=/usr/local/bin/audit-relay run",
        "ExecStartPre=/usr/local/bin/audit-relay check-config",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "CapabilityBoundingSet=",
        "Environment=AUDIT_RELAY_CONFIG=/etc/audit-relay/audit-relay.toml",
    ] {
        assert!(lines.contains(&want), "no {want:?} in the unit");
    }
    // The spool is the StateDirectory, as the shipped config says.
    let config = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/audit-relay.toml"),
    )
    .unwrap();
    assert!(config
        .lines()
        .any(|l| l.trim() == "dir = \"/var/lib/audit-relay\""));
    // TimeoutStopSec leaves the relay its shutdown_grace (the config's, 10s).
    assert!(config
        .lines()
        .any(|l| l.trim() == "shutdown_grace = \"10s\""));
    let stop: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.strip_suffix('s'))
        .and_then(|v| v.parse().ok())
        .expect("TimeoutStopSec=<n>s");
    assert!(
        stop > 10,
        "TimeoutStopSec {stop}s is not above shutdown_grace"
    );
    let sysusers = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/audit-relay.sysusers.conf"),
    )
    .unwrap();
    assert!(sysusers.lines().any(|l| l.starts_with("u audit-relay ")));
}
