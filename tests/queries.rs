//! The saved Logs Insights queries and the optional log-group settings, through the
//! recording proxy (moto implements neither query definitions nor index policies; the
//! proxy answers those as CloudWatch documents them, and forwards the rest to moto):
//! `cloudwatch install-queries` creates each query once and updates it by name after;
//! a group the relay creates gets its log class, deletion protection and field index
//! policy; every field a query names is a field of a message the relay really forwarded.

mod common;

use common::moto::{cloudwatch_section, now_ms, start_relay, wait_all_forwarded, Moto, HOSTNAME};
use common::proxy::{Faults, Proxy, QueryDef};
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

const GROUP: &str = "/audit/queries";

fn queries_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/cloudwatch/queries")
}

/// `(file stem, file text)` of every query file.
fn query_files() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(queries_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "query"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The file without its `#` header, as install-queries sends it.
fn body(text: &str) -> String {
    audit_relay::cloudwatch_admin::query_body(text)
}

fn configure(h: &Harness, endpoint: &str, extra: &[&str]) {
    h.write_config(
        &(h.config_text(&[], &[])
            + &cloudwatch_section(endpoint, GROUP, extra)
            + "\n[integrity]\ncheckpoint_every = 10\n"),
    );
}

fn install(h: &Harness) -> Vec<String> {
    let out = common::moto::relay_command(h)
        .args(["cloudwatch", "install-queries"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install-queries failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[test]
fn the_built_in_queries_are_the_files() {
    let built: Vec<(String, String)> = audit_relay::cloudwatch_admin::QUERIES
        .iter()
        .map(|(s, t)| (s.to_string(), t.to_string()))
        .collect();
    let mut built = built;
    built.sort();
    assert_eq!(
        built,
        query_files(),
        "QUERIES lists every file of deploy/cloudwatch/queries"
    );
    // The list.
    let stems: BTreeSet<String> = query_files().into_iter().map(|(s, _)| s).collect();
    for want in [
        "actor-actions",
        "organization-member-changes",
        "workspace-deletions",
        "audit-log-reads",
        "duplicates-by-id",
        "events-per-action-per-hour",
        "checkpoints",
    ] {
        assert!(stems.contains(want), "no {want}.query");
    }
}

#[test]
fn install_queries_creates_each_once_and_updates_by_name() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.addr, Faults::default(), 1);
    // One saved earlier with an old text, and one outside the prefix (left alone).
    proxy.put_query_def(QueryDef {
        id: "qd-old".into(),
        name: "audit-relay/checkpoints".into(),
        query: "fields @timestamp".into(),
        groups: vec![GROUP.into()],
    });
    proxy.put_query_def(QueryDef {
        id: "qd-mine".into(),
        name: "mine/checkpoints".into(),
        query: "fields @message".into(),
        groups: vec![],
    });
    let h = Harness::new();
    configure(&h, &proxy.endpoint(), &[]);
    let files = query_files();

    let first = install(&h);
    let mut want: Vec<String> = files
        .iter()
        .map(|(s, _)| {
            let what = if s == "checkpoints" {
                "updated"
            } else {
                "created"
            };
            format!("{what} audit-relay/{s}")
        })
        .collect();
    want.sort();
    assert_eq!(first, want);
    let defs = proxy.query_defs();
    assert_eq!(defs.len(), files.len() + 1, "{defs:#?}");
    for (stem, text) in &files {
        let name = format!("audit-relay/{stem}");
        let d: Vec<&QueryDef> = defs.iter().filter(|d| d.name == name).collect();
        assert_eq!(d.len(), 1, "{name} once");
        assert_eq!(d[0].query, body(text), "{name}");
        assert_eq!(d[0].groups, [GROUP], "{name} is scoped to the log group");
        assert!(!d[0].query.contains("# "), "{name}: comment header sent");
    }
    assert_eq!(
        defs.iter()
            .find(|d| d.name == "audit-relay/checkpoints")
            .unwrap()
            .id,
        "qd-old",
        "updated in place"
    );
    assert!(defs.contains(&QueryDef {
        id: "qd-mine".into(),
        name: "mine/checkpoints".into(),
        query: "fields @message".into(),
        groups: vec![],
    }));

    // Again: all there (found over 3 pages of DescribeQueryDefinitions), nothing put.
    let puts = proxy.ops_of("PutQueryDefinition").len();
    let describes = proxy.ops_of("DescribeQueryDefinitions").len();
    let second = install(&h);
    assert!(
        second.iter().all(|l| l.starts_with("unchanged ")),
        "{second:?}"
    );
    assert_eq!(second.len(), files.len());
    assert_eq!(proxy.ops_of("PutQueryDefinition").len(), puts);
    assert_eq!(
        proxy.ops_of("DescribeQueryDefinitions").len() - describes,
        files.len().div_ceil(3),
        "every page read"
    );
    for d in proxy.ops_of("DescribeQueryDefinitions") {
        assert_eq!(d["queryDefinitionNamePrefix"], "audit-relay/");
    }

    // Changed in the console: put back, same id.
    let mut d = proxy
        .query_defs()
        .into_iter()
        .find(|d| d.name == "audit-relay/workspace-deletions")
        .unwrap();
    let id = d.id.clone();
    d.query = "fields @timestamp | limit 1".into();
    proxy.put_query_def(d);
    let third = install(&h);
    assert!(
        third.contains(&"updated audit-relay/workspace-deletions".to_string()),
        "{third:?}"
    );
    let d = proxy
        .query_defs()
        .into_iter()
        .find(|d| d.name == "audit-relay/workspace-deletions")
        .unwrap();
    assert_eq!(d.id, id);
    assert_eq!(proxy.query_defs().len(), files.len() + 1);

    // Without [cloudwatch]: a clear refusal.
    h.write_config(&h.config_text(&[], &[]));
    let out = h.cli(&["cloudwatch", "install-queries"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs an enabled [cloudwatch] section"));
}

#[test]
fn a_created_group_gets_its_class_deletion_protection_and_field_index() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.addr, Faults::default(), 2);
    let h = Harness::new();
    configure(
        &h,
        &proxy.endpoint(),
        &[
            "log_group_class = \"INFREQUENT_ACCESS\"",
            "deletion_protection = true",
            "field_index = [\"organizationId\", \"actorId\", \"action\", \"id\"]",
        ],
    );
    let mut g = gen::Gen::new(5);
    let t0 = now_ms() - 60_000;
    let lines: Vec<String> = (0..5)
        .map(|i| gen::server_line(&mut g, t0 + i).line)
        .collect();
    write_lines(&mut append_to(&h.log("server.log")), &lines);
    let mut r = start_relay(&h);
    wait_all_forwarded(&h, &mut r, 5, DEADLINE);
    r.terminate();
    let create = proxy.ops_of("CreateLogGroup");
    assert!(!create.is_empty());
    assert_eq!(create[0]["logGroupName"], GROUP);
    assert_eq!(create[0]["logGroupClass"], "INFREQUENT_ACCESS");
    assert_eq!(create[0]["deletionProtectionEnabled"], true);
    let index = proxy.ops_of("PutIndexPolicy");
    assert!(!index.is_empty(), "{:?}", proxy.ops());
    assert_eq!(index[0]["logGroupIdentifier"], GROUP);
    let doc: Value = serde_json::from_str(index[0]["policyDocument"].as_str().unwrap()).unwrap();
    assert_eq!(
        doc,
        serde_json::json!({"Fields": ["organizationId", "actorId", "action", "id"]})
    );

    // Without the keys: none of it is asked for.
    let moto2 = Moto::start();
    let proxy2 = Proxy::start(moto2.addr, Faults::default(), 3);
    let h2 = Harness::new();
    configure(&h2, &proxy2.endpoint(), &[]);
    write_lines(&mut append_to(&h2.log("server.log")), &lines);
    let mut r2 = start_relay(&h2);
    wait_all_forwarded(&h2, &mut r2, 5, DEADLINE);
    r2.terminate();
    let create = proxy2.ops_of("CreateLogGroup");
    assert!(create[0].get("logGroupClass").is_none(), "{}", create[0]);
    assert!(
        create[0].get("deletionProtectionEnabled").is_none(),
        "{}",
        create[0]
    );
    assert!(proxy2.ops_of("PutIndexPolicy").is_empty());
}

#[test]
fn bad_group_settings_are_named_by_check_config() {
    let h = Harness::new();
    for (extra, key, says) in [
        (
            vec!["log_group_class = \"COLD\""],
            "cloudwatch.log_group_class",
            "must be one of",
        ),
        (
            vec!["create_log_group = false", "deletion_protection = true"],
            "cloudwatch.deletion_protection",
            "needs cloudwatch.create_log_group = true",
        ),
        (
            vec!["field_index = [\"id\", \"id\"]"],
            "cloudwatch.field_index",
            "listed twice",
        ),
        (
            vec!["field_index = [\"@timestamp\"]"],
            "cloudwatch.field_index",
            "not @-prefixed",
        ),
    ] {
        configure(&h, "http://127.0.0.1:9", &extra);
        let out = h.cli(&["check-config"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(key) && err.contains(says), "{extra:?}: {err}");
    }
}

/// Every field name of a JSON message, nested ones dotted (`args.0`, `args.1.workspaceId`),
/// as Logs Insights discovers them.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeSet<String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = join(k);
                out.insert(p.clone());
                flatten(&p, x, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let p = join(&i.to_string());
                out.insert(p.clone());
                flatten(&p, x, out);
            }
        }
        _ => {}
    }
}

/// The message fields a query names: identifiers outside strings and regexes that are
/// not commands, keywords, functions, `@` fields or aliases made with `as`.
fn query_fields(q: &str) -> BTreeSet<String> {
    const WORDS: [&str; 17] = [
        "fields", "filter", "sort", "desc", "asc", "dedup", "limit", "stats", "by", "as", "and",
        "or", "not", "in", "like", "display", "parse",
    ];
    const FUNCTIONS: [&str; 5] = ["count", "count_distinct", "ispresent", "bin", "isempty"];
    let c: Vec<char> = q.chars().collect();
    let mut words: Vec<String> = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '/' {
            i += 1;
            while i < c.len() && c[i] != ch {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == '@' {
            let s = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || "_.@".contains(c[i])) {
                i += 1;
            }
            words.push(c[s..i].iter().collect());
        } else if ch.is_ascii_digit() {
            while i < c.len() && c[i].is_ascii_alphanumeric() {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    let aliases: BTreeSet<String> = words
        .windows(2)
        .filter(|w| w[0] == "as")
        .map(|w| w[1].clone())
        .collect();
    words
        .into_iter()
        .filter(|w| {
            !WORDS.contains(&w.as_str())
                && !FUNCTIONS.contains(&w.as_str())
                && !w.starts_with('@')
                && !aliases.contains(w)
        })
        .collect()
}

#[test]
fn every_field_a_query_names_is_in_a_forwarded_message() {
    let moto = Moto::start();
    let h = Harness::new();
    // Signed checkpoints carry keyId (unsigned ones do not).
    let key = h.dir.path().join("signing.pem");
    std::fs::write(&key, ed25519_pem([7; 32])).unwrap();
    h.write_config(
        &(h.config_text(&[], &[])
            + &cloudwatch_section(&moto.endpoint(), GROUP, &[])
            + &format!(
                "\n[integrity]\ncheckpoint_every = 10\nsigning_key_file = {:?}\n",
                key.display().to_string()
            )),
    );
    let mut g = gen::Gen::new(9);
    let t0 = now_ms() - 60_000;
    let mut lines: Vec<String> = (0..20)
        .map(|i| gen::server_line(&mut g, t0 + i).line)
        .collect();
    // A read of the audit log as the query API records it (src/api/audit.rs: the
    // filters as `args[0]`), for the audit-log-reads query.
    let read = serde_json::json!({
        "id": "5b0f1f4e-3f51-4a8e-8d44-0b9a4f6f0c01",
        "timestamp": gen::rfc3339(t0 + 30),
        "action": "gitpod.v1.AuditLogService/listAuditLogs",
        "organizationId": gen::org_id(1),
        "actorId": gen::actor_id(2),
        "args": [{"organizationId": gen::org_id(1), "from": gen::rfc3339(t0 - 86_400_000),
                  "to": gen::rfc3339(t0), "export": true}],
    });
    lines.push(read.to_string());
    write_lines(&mut append_to(&h.log("server.log")), &lines);
    let mut r = start_relay(&h);
    wait_all_forwarded(&h, &mut r, 21, DEADLINE);
    r.terminate();
    let cw = moto.events(GROUP, HOSTNAME);
    assert!(
        cw.iter().any(|e| e.is_checkpoint()),
        "a checkpoint was forwarded"
    );
    let mut fields = BTreeSet::new();
    for e in &cw {
        flatten("", &e.json(), &mut fields);
    }
    assert!(fields.contains("args.0.export"), "{fields:?}");
    for (stem, text) in query_files() {
        let q = body(&text);
        let named = query_fields(&q);
        assert!(!named.is_empty(), "{stem}: no field found");
        let missing: Vec<&String> = named.iter().filter(|f| !fields.contains(*f)).collect();
        assert!(
            missing.is_empty(),
            "{stem} names {missing:?}, which no forwarded message has (fields: {fields:?})"
        );
    }
}
