//! The deploy kit (deploy/), checked without a cluster or AWS: every JSON policy parses
//! and its placeholders are the ones deploy/README.md lists; the policies grant and deny
//! what the README says; the manifest's config passes the real `check-config`; the
//! manifest and the Dockerfile have the settings an operator's review asked for.

mod api_common;
mod common;

use common::{ed25519_pem, Harness, BIN};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy().join(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        // The Helm chart's values.schema.json is no policy.
        if p.is_dir() && !p.ends_with("helm") {
            json_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

/// Words in all capitals (with digits and `_`, two letters at least) in a string:
/// placeholders such as `ACCOUNT_ID`.
fn capitals(s: &str, out: &mut BTreeSet<String>) {
    for word in s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        let letters = word.chars().filter(|c| c.is_ascii_alphabetic()).count();
        if letters >= 2
            && word
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            out.insert(word.to_string());
        }
    }
}

/// Placeholders in every key and string of a JSON document. `AWS` (a principal type)
/// is IAM's own word.
fn placeholders(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => capitals(s, out),
        Value::Array(a) => a.iter().for_each(|x| placeholders(x, out)),
        Value::Object(m) => {
            for (k, x) in m {
                if k != "AWS" {
                    capitals(k, out);
                }
                placeholders(x, out);
            }
        }
        _ => {}
    }
}

/// The actions of every statement with `effect`.
fn actions(policy: &Value, effect: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for st in policy["Statement"].as_array().expect("Statement array") {
        if st["Effect"] == effect {
            match &st["Action"] {
                Value::String(a) => {
                    out.insert(a.clone());
                }
                Value::Array(a) => out.extend(a.iter().map(|x| x.as_str().unwrap().to_string())),
                other => panic!("Action {other}"),
            }
        }
    }
    out
}

#[test]
fn every_json_policy_parses_and_its_placeholders_are_listed() {
    let mut files = Vec::new();
    json_files(&deploy(), &mut files);
    assert!(files.len() >= 6, "{files:?}");
    let mut used = BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", f.display()));
        assert_eq!(v["Version"], "2012-10-17", "{}", f.display());
        let statements = v["Statement"].as_array().expect("Statement");
        assert!(!statements.is_empty(), "{}", f.display());
        for st in statements {
            assert!(
                st["Effect"] == "Allow" || st["Effect"] == "Deny",
                "{}: {st}",
                f.display()
            );
        }
        placeholders(&v, &mut used);
    }
    // The README's table of placeholders: `| `NAME` | ... |` rows under its heading.
    let readme = read("README.md");
    let table = readme
        .split("## Placeholders")
        .nth(1)
        .expect("a Placeholders section")
        .split("\n## ")
        .next()
        .unwrap();
    let listed: BTreeSet<String> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    assert_eq!(
        used, listed,
        "placeholders used in deploy/**/*.json vs listed in deploy/README.md"
    );
}

#[test]
fn the_policies_grant_and_deny_what_they_say() {
    let p = |f: &str| -> Value { serde_json::from_str(&read(f)).unwrap() };
    let runtime = actions(&p("iam-policy.json"), "Allow");
    for a in [
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "logs:GetLogEvents",
    ] {
        assert!(runtime.contains(a), "{a} in {runtime:?}");
    }
    for a in ["logs:CreateLogGroup", "logs:PutRetentionPolicy"] {
        assert!(
            !runtime.contains(a),
            "the runtime policy must not grant {a}"
        );
    }
    let creates = actions(&p("iam-policy-creates-group.json"), "Allow");
    for a in [
        "logs:CreateLogGroup",
        "logs:TagResource",
        "logs:PutRetentionPolicy",
        "logs:PutLogEvents",
    ] {
        assert!(creates.contains(a), "{a} in {creates:?}");
    }
    let verify = actions(&p("iam-policy-verify.json"), "Allow");
    assert_eq!(
        verify,
        ["logs:DescribeLogStreams", "logs:GetLogEvents"]
            .map(String::from)
            .into(),
        "read-only"
    );
    let deny = actions(&p("iam-deny-tampering.json"), "Deny");
    for a in ["logs:Delete*", "logs:PutRetentionPolicy"] {
        assert!(deny.contains(a), "{a} in {deny:?}");
    }
    let trust = p("iam-trust-policy-irsa.json");
    assert_eq!(
        trust["Statement"][0]["Action"],
        "sts:AssumeRoleWithWebIdentity"
    );
    assert_eq!(
        trust["Statement"][0]["Condition"]["StringEquals"]["OIDC_PROVIDER:sub"],
        "system:serviceaccount:NAMESPACE:audit-relay",
        "the relay's service account only"
    );
    let kms = p("kms-key-policy.json");
    assert_eq!(
        kms["Statement"][1]["Principal"]["Service"],
        "logs.REGION.amazonaws.com"
    );
}

/// The lines of a manifest that are not comments.
fn yaml_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect()
}

#[test]
fn the_manifest_has_what_the_review_asked_for() {
    let m = read("kubernetes/sidecar.yaml");
    let lines = yaml_lines(&m);
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    let docs: Vec<&str> = m.split("\n---\n").collect();
    let kinds: Vec<&str> = docs
        .iter()
        .filter_map(|d| d.lines().find_map(|l| l.strip_prefix("kind: ")))
        .collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ConfigMap",
            "PersistentVolumeClaim",
            "Deployment",
            "PodDisruptionBudget",
            "NetworkPolicy"
        ]
    );
    assert!(!has("readinessProbe"), "no readinessProbe on the sidecar");
    assert!(has("livenessProbe:"));
    assert!(has("type: RuntimeDefault"), "seccompProfile RuntimeDefault");
    assert!(has("seccompProfile:"));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("automountServiceAccountToken: false"))
            .count(),
        2,
        "on the ServiceAccount and the pod"
    );
    assert!(has("eks.amazonaws.com/skip-containers: server"));
    assert!(has("sizeLimit:"), "the log emptyDir is bounded");
    assert!(!has("emptyDir: {}"));
    // The NetworkPolicy names the API and admin ports.
    let np = docs.last().unwrap();
    assert!(
        np.contains("port: 8080") && np.contains("port: 9090"),
        "{np}"
    );
    // The memory request covers the measured peak (68 MB with 4 exports).
    let request = lines
        .iter()
        .skip_while(|l| !l.contains("requests:"))
        .find_map(|l| l.trim().strip_prefix("memory: "))
        .expect("a memory request");
    let mib: u64 = request.strip_suffix("Mi").unwrap().parse().unwrap();
    assert!(mib << 20 >= 68_000_000, "{request}");
    // The placeholder Secret is a file of its own.
    let secret = read("kubernetes/secret-api.example.yaml");
    assert!(yaml_lines(&secret).contains(&"kind: Secret"));
    // The image's binary is stripped.
    let docker = read("Dockerfile");
    assert!(
        yaml_lines(&docker).iter().any(|l| l.contains("strip ")),
        "{docker}"
    );
}

/// The ConfigMap's `audit-relay.toml`, dedented.
fn manifest_config() -> String {
    let m = read("kubernetes/sidecar.yaml");
    let mut out = String::new();
    let mut inside = false;
    for l in m.lines() {
        if l.trim_end() == "  audit-relay.toml: |" {
            inside = true;
            continue;
        }
        if inside {
            if !l.trim().is_empty() && !l.starts_with("    ") {
                break;
            }
            out.push_str(l.strip_prefix("    ").unwrap_or(""));
            out.push('\n');
        }
    }
    assert!(out.contains("[source]"), "{out}");
    out
}

fn check_config(config: &Path, vars: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.arg("-c")
        .arg(config)
        .arg("check-config")
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .env_remove("RUST_LOG");
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn the_manifests_config_passes_check_config() {
    let h = Harness::new();
    let key = h.dir.path().join("signing.pem");
    std::fs::write(&key, ed25519_pem([3; 32])).unwrap();
    let jwks = h.dir.path().join("jwks.json");
    std::fs::write(&jwks, api_common::ec_key("k1").jwks).unwrap();
    let text = manifest_config()
        .replace(
            "/etc/audit-relay-signing/signing.pem",
            &key.display().to_string(),
        )
        .replace(
            "/etc/audit-relay-api/jwks.json",
            &jwks.display().to_string(),
        )
        .replace("/var/lib/audit-relay", &h.spool_dir.display().to_string());
    let config = h.dir.path().join("manifest.toml");
    std::fs::write(&config, &text).unwrap();
    let pod = [("POD_NAME", "server-7d9f"), ("POD_NAMESPACE", "prod")];
    let out = check_config(&config, &pod);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the downward API's variables it is refused.
    let out = check_config(&config, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cloudwatch.log_stream"));
    // The example Secret's placeholder JWKS is refused, not taken as "no JWT".
    let secret = read("kubernetes/secret-api.example.yaml");
    let placeholder = secret
        .lines()
        .find_map(|l| l.trim().strip_prefix("jwks.json: '"))
        .and_then(|l| l.strip_suffix('\''))
        .expect("the jwks.json line");
    std::fs::write(&jwks, placeholder).unwrap();
    let out = check_config(&config, &pod);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no keys"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The AWS SDK's CloudWatch Logs operations (snake_case), from the SDK crate of
/// Cargo.lock's version in cargo's registry: one `src/operation/<name>/` per API call.
fn sdk_operations() -> BTreeSet<String> {
    let lock =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock")).unwrap();
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"aws-sdk-cloudwatchlogs\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .and_then(|v| v.strip_suffix('"'))
        .expect("aws-sdk-cloudwatchlogs in Cargo.lock");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    let mut out = BTreeSet::new();
    for index in std::fs::read_dir(cargo_home.join("registry/src")).unwrap() {
        let dir = index
            .unwrap()
            .path()
            .join(format!("aws-sdk-cloudwatchlogs-{version}/src/operation"));
        if let Ok(ops) = std::fs::read_dir(&dir) {
            for op in ops {
                let op = op.unwrap();
                if op.path().is_dir() {
                    out.insert(op.file_name().to_string_lossy().into_owned());
                }
            }
        }
    }
    assert!(
        out.len() > 50 && out.contains("put_log_events"),
        "the SDK's operations of aws-sdk-cloudwatchlogs {version} under {}: {out:?}",
        cargo_home.display()
    );
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `put_log_events` -> `logs:PutLogEvents`.
fn iam_action(op: &str) -> String {
    let mut s = String::from("logs:");
    for part in op.split('_') {
        let mut c = part.chars();
        if let Some(first) = c.next() {
            s.push(first.to_ascii_uppercase());
            s.extend(c);
        }
    }
    s
}

#[test]
fn every_cloudwatch_call_in_src_is_granted_by_a_policy() {
    let ops = sdk_operations();
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    // Every `.operation()` of the SDK's client that src/ calls.
    let mut called = BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (i, _) in text.match_indices("()") {
            let head = &text[..i];
            let start = head
                .rfind(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .map_or(0, |s| s + 1);
            if head[..start].ends_with('.') && ops.contains(&head[start..]) {
                called.insert(iam_action(&head[start..]));
            }
        }
    }
    // What the code calls today (a new call must get its permission, then be listed here):
    // the forwarder, `verify --cloudwatch` and `cloudwatch install-queries`.
    let expected: BTreeSet<String> = [
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:DescribeLogStreams",
        "logs:DescribeQueryDefinitions",
        "logs:GetLogEvents",
        "logs:PutIndexPolicy",
        "logs:PutLogEvents",
        "logs:PutQueryDefinition",
        "logs:PutRetentionPolicy",
    ]
    .map(String::from)
    .into();
    assert_eq!(called, expected, "CloudWatch Logs calls in src/");
    let mut granted = BTreeSet::new();
    for f in [
        "iam-policy.json",
        "iam-policy-creates-group.json",
        "iam-policy-verify.json",
        "iam-policy-admin.json",
    ] {
        granted.extend(actions(&serde_json::from_str(&read(f)).unwrap(), "Allow"));
    }
    for a in &called {
        assert!(
            granted.contains(a),
            "{a} is called in src/ but no policy in deploy/ grants it"
        );
    }
    // The admin policy is for install-queries only; the runtime policies do not hold it.
    let admin = actions(
        &serde_json::from_str(&read("iam-policy-admin.json")).unwrap(),
        "Allow",
    );
    assert_eq!(
        admin,
        ["logs:DescribeQueryDefinitions", "logs:PutQueryDefinition"]
            .map(String::from)
            .into()
    );
    for f in ["iam-policy.json", "iam-policy-creates-group.json"] {
        let runtime = actions(&serde_json::from_str(&read(f)).unwrap(), "Allow");
        assert!(runtime.is_disjoint(&admin), "{f}: {runtime:?}");
    }
    // field_index needs create_log_group = true: PutIndexPolicy is in that policy only.
    let creates = actions(
        &serde_json::from_str(&read("iam-policy-creates-group.json")).unwrap(),
        "Allow",
    );
    assert!(creates.contains("logs:PutIndexPolicy"));
    assert!(!actions(
        &serde_json::from_str(&read("iam-policy.json")).unwrap(),
        "Allow"
    )
    .contains("logs:PutIndexPolicy"));
}
