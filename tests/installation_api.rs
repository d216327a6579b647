//! The query API from the installation store (`api.store = "postgres"`), end to end:
//! three real relays (the binary) each tailing its own pod's file, each shipping to one
//! real PostgreSQL server, and each answering ListAuditLogs from it, over real HTTP.
//! Whichever relay is asked, the pages and their tokens are the same; a token from one
//! relay continues on another; with the server stopped the API answers 503 and
//! `/readyz` says why, while ingest goes on.

mod api_common;
mod common;

use common::wait_for;

use api_common::*;
use common::postgres::Postgres;
use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

const RELAYS: [&str; 3] = ["pod-a", "pod-b", "pod-c"];
const ORG_C: &str = "cccccccc-0000-4000-8000-00000000000c";

/// A relay whose API reads the installation store, with its admin port.
fn relay(pg: &Postgres, relay_id: &str) -> Harness {
    let (h, _) = api_harness_with(&[], &["store = \"postgres\""]);
    let mut text = std::fs::read_to_string(&h.config).unwrap();
    text.push_str(&pg.config_section(relay_id, &["retention_days = 36500"]));
    text.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    h.write_config(&text);
    h
}

/// The events of one pod's file: `per_org` for each of ORG_A, ORG_B and ORG_C, at
/// `end_ms - k s` (the same instants on every pod: the store's tiebreak orders them).
/// Returns (ORG_A's ids, lines).
fn pod_events(
    g: &mut gen::Gen,
    pod: usize,
    end_ms: i64,
    per_org: usize,
) -> (Vec<String>, Vec<String>) {
    let mut a_ids = Vec::new();
    let mut lines = Vec::new();
    for k in 0..per_org as i64 {
        for org in [ORG_A, ORG_B, ORG_C] {
            let id = g.uuid();
            let actor = format!("a0000000-0000-4000-8000-00000000000{pod}");
            let ms = end_ms - 1000 * (k / 2) - (k % 2) * 3;
            lines.push(event_line(&id, ms, "startWorkspace", org, &actor, k as u64));
            if org == ORG_A {
                a_ids.push(id);
            }
        }
    }
    (a_ids, lines)
}

/// Store rows of the relays' own events (not the reads' audit events).
fn stored_events(pg: &Postgres) -> i64 {
    pg.try_i64(&format!(
        "SELECT count(*) FROM audit_events WHERE organization_id <> '' AND action <> '{READ_ACTION}'"
    ))
    .unwrap_or(0)
}

/// Events of the pods' files in a relay's spool (not the reads' own).
fn spooled_events(h: &Harness) -> i64 {
    h.db()
        .and_then(|c| {
            c.query_row(
                "SELECT count(*) FROM events WHERE action = 'startWorkspace'",
                [],
                |r| r.get(0),
            )
            .ok()
        })
        .unwrap_or(0)
}

/// A Connect JSON page for ORG_A up to `to`, `size` at a time, after `token`.
fn page(addr: &str, to: &str, size: u32, token: &str) -> Resp {
    list_json(
        addr,
        Some(ADMIN_TOKEN),
        &json!({"organizationId": ORG_A, "to": to, "pagination": {"pageSize": size, "token": token}}),
    )
}

#[test]
fn every_relay_answers_the_same_pages_and_tokens_from_the_installation_store() {
    const PER_ORG: usize = 130;
    let pg = Postgres::start();
    let hs: Vec<Harness> = RELAYS.iter().map(|id| relay(&pg, id)).collect();
    // Every event is a minute old or more; the walks' window ends at `to`, before the
    // reads' own audit events (which the relays store and ship as they answer).
    let end = now_ms() - 120_000;
    let to = rfc3339_ms(end + 60_000);
    let mut all_a: HashSet<String> = HashSet::new();
    for (i, h) in hs.iter().enumerate() {
        let mut g = gen::Gen::new(40 + i as u64);
        let (ids, lines) = pod_events(&mut g, i, end, PER_ORG);
        all_a.extend(ids);
        write_lines(&mut append_to(&h.log("server.log")), &lines);
    }
    assert_eq!(all_a.len(), 3 * PER_ORG);
    let mut rs: Vec<Relay> = hs.iter().map(|h| h.start()).collect();
    for (h, r) in hs.iter().zip(rs.iter_mut()) {
        h.wait_events(r, 3 * PER_ORG as u64);
    }
    let addrs: Vec<String> = rs.iter().map(api_addr).collect();
    {
        let refs: Vec<&Relay> = rs.iter().collect();
        wait_for(
            "every relay's events in the store",
            DEADLINE,
            || stored_events(&pg) == 9 * PER_ORG as i64,
            &refs,
        );
    }

    // The walk: page n through relay n % 3 with the token the previous relay gave; the
    // other two relays, asked the same, answer the same bytes.
    let mut token = String::new();
    let mut walked: Vec<serde_json::Value> = Vec::new();
    let mut pages = 0;
    loop {
        let mut answers = Vec::new();
        for k in 0..3 {
            let r = page(&addrs[(pages + k) % 3], &to, 50, &token);
            assert_eq!(
                r.status,
                200,
                "page {pages} via {}: {}",
                RELAYS[(pages + k) % 3],
                r.text()
            );
            answers.push(r.json());
        }
        assert_eq!(
            answers[0],
            answers[1],
            "page {pages}: relay {} and {}",
            RELAYS[pages % 3],
            RELAYS[(pages + 1) % 3]
        );
        assert_eq!(
            answers[0],
            answers[2],
            "page {pages}: relay {} and {}",
            RELAYS[pages % 3],
            RELAYS[(pages + 2) % 3]
        );
        let logs = answers[0]["auditLogs"].as_array().unwrap().clone();
        walked.extend(logs);
        pages += 1;
        token = answers[0]["pagination"]["nextToken"]
            .as_str()
            .unwrap()
            .to_string();
        if token.is_empty() {
            break;
        }
        assert!(pages < 100, "the walk does not end");
    }
    assert_eq!(pages, 8, "390 events in pages of 50");
    // One organization's events from all three relays, each once, none of another
    // organization, no checkpoint or ledger row, newest first.
    let ids: Vec<String> = walked
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3 * PER_ORG, "each event once");
    assert_eq!(ids.iter().cloned().collect::<HashSet<_>>(), all_a);
    assert!(walked.iter().all(|l| l["organizationId"] == ORG_A));
    let ts: Vec<i64> = walked
        .iter()
        .map(|l| audit_relay::event::parse_timestamp_ms(l["timestamp"].as_str().unwrap()).unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] >= w[1]), "newest first");
    // Exactly the store's order, its tiebreak included (the same instant on three pods).
    let mut c = pg.client();
    let store_order: Vec<String> = c
        .query(
            "SELECT id::text FROM audit_events WHERE organization_id = $1 AND ts_ms <= $2
             ORDER BY ts_ms DESC, gseq DESC",
            &[&ORG_A, &(end + 60_000)],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, store_order);

    // The REST form and the NDJSON export answer the same, through another relay.
    let rest = get(
        &addrs[1],
        ADMIN_TOKEN,
        &format!("/v1/organizations/{ORG_A}/audit-logs?to={to}&pageSize=50"),
    );
    assert_eq!(rest.status, 200, "{}", rest.text());
    assert_eq!(rest.json()["auditLogs"], json!(walked[..50]));
    let next = rest.json()["pagination"]["nextToken"]
        .as_str()
        .unwrap()
        .to_string();
    let second = page(&addrs[2], &to, 50, &next);
    assert_eq!(
        second.json()["auditLogs"],
        json!(walked[50..100]),
        "a REST token from B continues on C"
    );
    let export = get(
        &addrs[2],
        ADMIN_TOKEN,
        &format!("/v1/organizations/{ORG_A}/audit-logs/export?to={to}"),
    );
    assert_eq!(export.status, 200, "{}", export.text());
    let exported: Vec<String> = export
        .text()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        exported, ids,
        "the export gives the walk's events in its order"
    );

    // `audit-relay query` answers from the store too: the same rows in the same order.
    let out = hs[1].cli_ok(&[
        "query", "--org", ORG_A, "--to", &to, "--limit", "1000", "--json",
    ]);
    let cli: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(cli, ids, "audit-relay query from the installation store");
    let out = hs[0].cli_ok(&[
        "query", "--org", ORG_A, "--to", &to, "--limit", "7", "--json",
    ]);
    assert_eq!(out.lines().count(), 7, "--limit holds");

    // Reads stay audited: each relay stored its reads' own events and shipped them.
    {
        let refs: Vec<&Relay> = rs.iter().collect();
        wait_for(
            "every relay's read events shipped",
            DEADLINE,
            || {
                RELAYS.iter().enumerate().all(|(i, id)| {
                    let local = read_events(&hs[i]).len() as i64;
                    local > 0
                        && pg.try_i64(&format!(
                            "SELECT count(*) FROM audit_events WHERE relay_id = '{id}' AND action = '{READ_ACTION}'"
                        )) == Some(local)
                })
            },
            &refs,
        );
    }
    for r in rs {
        r.terminate();
    }
}

#[test]
fn with_postgres_stopped_the_api_answers_unavailable_and_readyz_says_why_ingest_goes_on() {
    let pg = Postgres::start();
    let h = relay(&pg, "pod-a");
    let end = now_ms() - 120_000;
    let to = rfc3339_ms(end + 60_000);
    let mut g = gen::Gen::new(9);
    let (_, lines) = pod_events(&mut g, 0, end, 20);
    let mut f = append_to(&h.log("server.log"));
    write_lines(&mut f, &lines);
    let mut r = h.start();
    h.wait_events(&mut r, 60);
    let addr = api_addr(&r);
    let admin = logged_addr(&r, "admin endpoints listening");
    wait_for(
        "events in the store",
        DEADLINE,
        || stored_events(&pg) == 60,
        &[&r],
    );
    let ok = page(&addr, &to, 5, "");
    assert_eq!(ok.status, 200, "{}", ok.text());
    let token = ok.json()["pagination"]["nextToken"]
        .as_str()
        .unwrap()
        .to_string();
    let readyz = || request(&admin, "GET", "/readyz", &[], Send::None);
    wait_for("ready", DEADLINE, || readyz().status == 200, &[&r]);

    pg.stop_immediate();
    // Every form of the read answers 503 unavailable, saying why; never the spool's rows.
    for resp in [
        page(&addr, &to, 5, ""),
        page(&addr, &to, 5, &token),
        get(
            &addr,
            ADMIN_TOKEN,
            &format!("/v1/organizations/{ORG_A}/audit-logs?to={to}"),
        ),
        get(
            &addr,
            ADMIN_TOKEN,
            &format!("/v1/organizations/{ORG_A}/audit-logs/export?to={to}"),
        ),
    ] {
        assert_eq!(resp.status, 503, "{}", resp.text());
        let v = resp.json();
        assert_eq!(v["code"], "unavailable");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("installation store (PostgreSQL) is unreachable"),
            "{v}"
        );
    }
    wait_for(
        "/readyz names the installation store",
        DEADLINE,
        || {
            let r = readyz();
            r.status == 503
                && r.text().contains(
                    "query API (api.store = \"postgres\"): the installation store is unreachable",
                )
        },
        &[&r],
    );
    // `audit-relay query` does not fall back to the spool either.
    let out = h.cli(&["query", "--org", ORG_A, "--to", &to, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no partial answer");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("api.store = \"postgres\": reading the installation store"),
        "{err}"
    );
    // Ingest goes on into the spool.
    let (_, more) = pod_events(&mut g, 1, end - 3_600_000, 10);
    write_lines(&mut f, &more);
    wait_for(
        "ingest while the store is down",
        DEADLINE,
        || spooled_events(&h) == 90,
        &[&r],
    );

    pg.start_again();
    wait_for(
        "the API answers again",
        Duration::from_secs(60),
        || page(&addr, &to, 5, &token).status == 200,
        &[&r],
    );
    let again = page(&addr, &to, 5, "");
    assert_eq!(
        again.json()["auditLogs"],
        ok.json()["auditLogs"],
        "the same first page"
    );
    wait_for(
        "ready again",
        Duration::from_secs(60),
        || readyz().status == 200,
        &[&r],
    );
    wait_for(
        "the events read while the store was down are shipped",
        Duration::from_secs(60),
        || stored_events(&pg) == 90,
        &[&r],
    );
    r.terminate();
}

/// Checks an RDS IAM token with botocore (the AWS SDK for Python, beside moto in the
/// test venv), independently of the relay's signer: the token botocore makes for the same
/// endpoint, user, region and credentials at the token's own `X-Amz-Date` must be the
/// same, and that date recent. Prints `ok` or why not.
const VERIFY_TOKEN_PY: &str = r#"
import sys, datetime, urllib.parse
from unittest import mock
import boto3, botocore.auth
token, host, port, user, region, key, secret = sys.argv[1:]
query = urllib.parse.parse_qs(token.split('?', 1)[1])
when = datetime.datetime.strptime(query['X-Amz-Date'][0], '%Y%m%dT%H%M%SZ')
with mock.patch.object(botocore.auth, 'get_current_datetime', return_value=when):
    rds = boto3.client('rds', region_name=region, aws_access_key_id=key, aws_secret_access_key=secret)
    expected = rds.generate_db_auth_token(host, int(port), user)
age = (datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - when).total_seconds()
if token != expected:
    print('not the token botocore signs: ' + expected)
elif not -60 < age < 900:
    print(f'signed {age:.0f} s ago')
else:
    print('ok')
"#;

/// `postgres.iam_auth`: the relay logs in to a real PostgreSQL over TLS with a token
/// signed by its AWS credentials, for the shipper's connections and for the query
/// API's pool. The server hands each password to an LDAP server the test runs, which
/// accepts a token only when botocore signs the same one with the expected credentials
/// (as RDS checks it against IAM). Wrong or missing credentials fail naming the key.
#[test]
fn rds_iam_auth_logs_in_with_tokens_signed_by_the_relays_aws_credentials() {
    const ROLE: &str = "iam_relay";
    const KEY_ID: &str = "AKIDIAMTEST00000001";
    const SECRET: &str = "iam-test-secret-4b1d";
    const REGION: &str = "eu-west-1";
    let pg = Postgres::start();
    let ca_file = pg.enable_tls_with_new_ca();
    let python = common::moto::moto_server_path().with_file_name("python");
    let pg_port = pg.port;
    let ldap = common::ldap::Ldap::start(move |dn, password| {
        let out = std::process::Command::new(&python)
            .args(["-c", VERIFY_TOKEN_PY, password, "127.0.0.1"])
            .arg(pg_port.to_string())
            .args([ROLE, REGION, KEY_ID, SECRET])
            .output()
            .expect("run the token check");
        let verdict = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if verdict != "ok" {
            eprintln!(
                "token refused: {verdict} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        dn == format!("cn={ROLE},dc=audit-relay") && verdict == "ok"
    });
    pg.client()
        .batch_execute(&format!(
            "CREATE ROLE {ROLE} LOGIN; GRANT ALL ON SCHEMA public TO {ROLE};"
        ))
        .unwrap();
    pg.hba_first(&format!(
        "hostssl all {ROLE} 127.0.0.1/32 ldap ldapserver=127.0.0.1 ldapport={} ldapprefix=\"cn=\" ldapsuffix=\",dc=audit-relay\"",
        ldap.port
    ));

    let (h, _) = api_harness_with(&[], &["store = \"postgres\""]);
    let mut text = std::fs::read_to_string(&h.config).unwrap();
    text.push_str(&format!(
        "\n[postgres]\nurl = \"postgres://{ROLE}@127.0.0.1:{pg_port}/postgres\"\nsslmode = \"verify-full\"\nca_file = {:?}\niam_auth = true\niam_region = \"{REGION}\"\nrelay_id = \"pod-iam\"\nretention_days = 36500\n",
        ca_file.display().to_string()
    ));
    h.write_config(&text);
    let with_keys = |key: &str, secret: &str| {
        let mut c = common::moto::relay_command(&h);
        c.env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret);
        c
    };
    let check = |mut c: std::process::Command| {
        let out = c.args(["check-config", "--connect"]).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };

    let (ok, out) = check(with_keys(KEY_ID, SECRET));
    assert!(ok, "check-config --connect with IAM auth: {out}");

    // Another secret signs another token: refused, and the message names the key.
    let (ok, out) = check(with_keys(KEY_ID, "not-the-secret"));
    assert!(!ok && out.contains("postgres.iam_auth"), "{out}");
    // No credentials at all: nothing to sign with, said before any login.
    let binds_before = ldap.binds().len();
    let mut none = common::moto::relay_command(&h);
    none.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let (ok, out) = check(none);
    assert!(
        !ok && out.contains("postgres.iam_auth") && out.contains("credentials"),
        "{out}"
    );
    assert_eq!(ldap.binds().len(), binds_before, "no login without a token");

    // The relay ships with its tokens, and `query` reads the store through the pool.
    let (_, lines) = server_lines(&mut gen::Gen::new(41), 0, 200);
    write_lines(&mut common::append_to(&h.log("server.log")), &lines);
    let r = common::moto::start_relay_with(
        &h,
        &[
            ("AWS_ACCESS_KEY_ID", KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
        ],
    );
    wait_for(
        "200 events shipped with IAM tokens",
        DEADLINE,
        || pg.try_i64("SELECT count(*) FROM audit_events WHERE organization_id <> ''") == Some(200),
        &[&r],
    );
    let row = pg
        .client()
        .query_one(
            "SELECT organization_id, count(*), min(ts_ms), max(ts_ms) FROM audit_events
             WHERE organization_id <> '' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1",
            &[],
        )
        .unwrap();
    let (org, n, from, to): (String, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let out = with_keys(KEY_ID, SECRET)
        .args(["query", "--org", &org, "--json", "--limit", "1000"])
        .args(["--from", &rfc3339_ms(from), "--to", &rfc3339_ms(to + 1)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count() as i64,
        n,
        "query answers from the store over an IAM login"
    );
    let log = r.log();
    r.terminate();
    assert!(
        !log.contains("X-Amz-Signature") && !log.contains(SECRET),
        "a token or the secret in the relay's log:\n{log}"
    );

    let binds = ldap.binds();
    let good: Vec<_> = binds.iter().filter(|b| b.accepted).collect();
    // check-config, the shipper's two connections, the query's pool.
    assert!(good.len() >= 4, "{binds:#?}");
    assert!(
        good.iter().all(|b| b.password.starts_with(&format!(
            "127.0.0.1:{pg_port}/?Action=connect&DBUser={ROLE}&"
        ))),
        "{good:#?}"
    );
    assert_eq!(
        binds.iter().filter(|b| !b.accepted).count(),
        1,
        "only the wrong secret's login was refused: {binds:#?}"
    );
}

/// A small deterministic generator for the cases below.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A fresh PostgreSQL with the store's schema, the `[postgres]` section of `relay_id`
/// for it, and a runtime to call the library with.
fn migrated_store(
    relay_id: &str,
) -> (
    Postgres,
    audit_relay::config::postgres::PostgresConfig,
    tokio::runtime::Runtime,
) {
    let pg = Postgres::start();
    let section = pg.config_section(relay_id, &["retention_days = 36500"]);
    let cfg: audit_relay::config::postgres::PostgresConfig =
        toml::from_str(section.trim_start().trim_start_matches("[postgres]")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = audit_relay::installation::connect(&cfg).await.unwrap();
        audit_relay::installation::schema::migrate(&mut c, relay_id)
            .await
            .unwrap();
    });
    (pg, cfg, rt)
}

/// Keyset pages of the store, walked to the end, are exactly the table's rows in
/// `ORDER BY ts_ms DESC, gseq DESC`: random ranges, filters and page sizes (1 to 150)
/// over 12 days of rows, a dense and a sparse organization, days without a partition,
/// one partition two days wide and not named like the shipper's, timestamps shared by
/// several rows (the `gseq` tiebreak); after retention drops a day; with a `DEFAULT`
/// partition.
#[test]
fn store_pages_walked_by_keyset_are_the_tables_rows_in_order() {
    use audit_relay::installation::query::StoreReader;
    use audit_relay::query::Query;
    const DAY: i64 = 86_400_000;
    const D0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let (pg, cfg, rt) = migrated_store("pod-pages");
    let mut sql = String::new();
    for d in (0..10).filter(|d| *d != 3 && *d != 6) {
        sql.push_str(&format!(
            "CREATE TABLE audit_events_d{d} PARTITION OF audit_events FOR VALUES FROM ({}) TO ({});",
            D0 + d * DAY,
            D0 + (d + 1) * DAY
        ));
    }
    sql.push_str(&format!(
        "CREATE TABLE \"Two Days\" PARTITION OF audit_events FOR VALUES FROM ({}) TO ({});",
        D0 + 10 * DAY,
        D0 + 12 * DAY
    ));
    // Dense: 60 rows a day on the minute (so some share a timestamp); sparse: one row
    // every third day.
    for (d, n, org) in (0..12)
        .filter(|d| *d != 3 && *d != 6)
        .flat_map(|d| [(d, 60, "org-dense"), (d, (d % 3 == 0) as i64, "org-sparse")])
    {
        sql.push_str(&format!(
            "INSERT INTO audit_events(ts_ms, id, relay_id, seq, organization_id, actor, action, body, hash)
             SELECT {} + (g % 40) * 60000, gen_random_uuid(), 'pod-pages', g, '{org}',
                    'actor-' || (g % 3), 'act-' || (g % 2), '{{\"n\":' || g || '}}', '\\x00'
             FROM generate_series(1, {n}) g;",
            D0 + d * DAY + 3_600_000
        ));
    }
    pg.client().batch_execute(&sql).unwrap();

    let oracle = |q: &Query| -> Vec<(i64, i64)> {
        pg.client()
            .query(
                "SELECT ts_ms, gseq FROM audit_events WHERE organization_id = $1
                   AND ts_ms >= $2 AND ts_ms <= $3
                   AND ($4::text IS NULL OR actor = $4) AND ($5::text IS NULL OR action = $5)
                 ORDER BY ts_ms DESC, gseq DESC",
                &[
                    &q.organization_id,
                    &q.from_ms,
                    &q.to_ms,
                    &q.actor_id,
                    &q.action,
                ],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let reader = StoreReader::new(&cfg).unwrap();
    let walk = |q: &Query, size: usize| -> Vec<(i64, i64)> {
        rt.block_on(async {
            let (mut all, mut before) = (Vec::new(), None);
            loop {
                let page = reader.page(q, before, size).await.unwrap();
                let full = page.len() == size;
                all.extend(page.iter().map(|r| (r.ts_ms, r.gseq)));
                before = all.last().copied();
                if !full {
                    return all;
                }
            }
        })
    };
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut pick = |v: &[&str]| -> Option<String> {
        let i = rng.below(v.len() as u64 + 1) as usize;
        v.get(i).map(|s| s.to_string())
    };
    let mut cases = Vec::new();
    for _ in 0..60 {
        cases.push((
            pick(&["org-dense", "org-sparse"]),
            pick(&["actor-1"]),
            pick(&["act-0"]),
        ));
    }
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for (i, (org, actor, action)) in cases.into_iter().enumerate() {
        let from_ms = D0 - DAY + rng.below(14 * DAY as u64) as i64;
        let q = Query {
            organization_id: org.unwrap_or_else(|| "org-dense".into()),
            from_ms,
            to_ms: from_ms + rng.below(14 * DAY as u64) as i64,
            actor_id: actor,
            action,
            limit: 0,
        };
        let size = 1 + rng.below(if i % 2 == 0 { 7 } else { 150 }) as usize;
        assert_eq!(walk(&q, size), oracle(&q), "{q:?}, pages of {size}");
    }

    // Retention drops a day between two walks: gone from the answer, no error.
    let everything = Query {
        organization_id: "org-dense".into(),
        from_ms: D0,
        to_ms: D0 + 12 * DAY,
        actor_id: None,
        action: None,
        limit: 0,
    };
    assert_eq!(walk(&everything, 100), oracle(&everything));
    pg.client()
        .batch_execute("DROP TABLE audit_events_d8")
        .unwrap();
    let after = walk(&everything, 100);
    assert_eq!(after, oracle(&everything));
    assert_eq!(after.len(), 9 * 60, "one day of the ten fewer");

    // A DEFAULT partition holds rows outside every range: only the parent sees them.
    pg.client()
        .batch_execute(&format!(
            "CREATE TABLE audit_events_other PARTITION OF audit_events DEFAULT;
             INSERT INTO audit_events(ts_ms, id, relay_id, seq, organization_id, actor, action, body, hash)
             VALUES ({}, gen_random_uuid(), 'pod-pages', 0, 'org-dense', 'a', 'b', '{{}}', '\\x00')",
            D0 + 8 * DAY + 5
        ))
        .unwrap();
    let with_default = walk(&everything, 100);
    assert_eq!(with_default, oracle(&everything));
    assert_eq!(with_default.len(), 9 * 60 + 1);
}

/// Index pages a first page reads in the store: with `to` in the past, the rows of the
/// same organization newer than `to` (20,000 here, in the same day) are not walked
/// through: the page starts at `to` in the index. (A first page's keyset bound was
/// `(MAX, MAX)`, and PostgreSQL's generic plan positioned the index scan with it: 7 ms
/// a page in the API bench, where each read's own audit event, for the organization
/// read, piled up rows newer than the bench's `to`.) The reader's connections use that
/// generic plan from their first call.
#[test]
fn a_first_page_with_to_in_the_past_starts_at_to_in_the_index() {
    use audit_relay::installation::query::StoreReader;
    use audit_relay::query::Query;
    const D0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let (pg, cfg, rt) = migrated_store("pod-first");
    // 100 rows in the first hour of the day, 20,000 in the rest of it.
    pg.client()
        .batch_execute(&format!(
            "CREATE TABLE audit_events_d0 PARTITION OF audit_events FOR VALUES FROM ({D0}) TO ({});
             INSERT INTO audit_events(ts_ms, id, relay_id, seq, organization_id, actor, action, body, hash)
             SELECT {D0} + g * 1000, gen_random_uuid(), 'pod-first', g, 'org-hot', 'a', 'b', '{{}}', '\\x00'
             FROM generate_series(1, 100) g;
             INSERT INTO audit_events(ts_ms, id, relay_id, seq, organization_id, actor, action, body, hash)
             SELECT {D0} + 7200000 + g * 1000, gen_random_uuid(), 'pod-first', 100 + g, 'org-hot', 'a', 'b', '{{}}', '\\x00'
             FROM generate_series(1, 20000) g;",
            D0 + 86_400_000
        ))
        .unwrap();
    pg.client()
        .batch_execute("VACUUM ANALYZE audit_events")
        .unwrap();
    // The reader's connections use the page query's generic plan from the first call
    // (the plan PostgreSQL settles on after five; custom plans cost a planning over
    // every partition, and their scans start elsewhere).
    let mode: String = rt.block_on(async {
        let pool = audit_relay::installation::pool(&cfg).unwrap();
        let c = audit_relay::installation::pooled(&pool, &cfg)
            .await
            .unwrap();
        c.query_one("SHOW plan_cache_mode", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(mode, "force_generic_plan");
    let read = || {
        pg.try_i64(
            "SELECT coalesce(sum(idx_blks_hit + idx_blks_read), 0)::bigint FROM pg_statio_user_indexes WHERE relname = 'audit_events_d0'",
        )
        .unwrap()
    };
    let before = read();
    let q = Query {
        organization_id: "org-hot".into(),
        from_ms: D0,
        to_ms: D0 + 3_600_000,
        actor_id: None,
        action: None,
        limit: 0,
    };
    let page = rt.block_on(async {
        let reader = StoreReader::new(&cfg).unwrap();
        let mut page = Vec::new();
        for _ in 0..8 {
            page = reader.page(&q, None, 10).await.unwrap();
        }
        page
        // The reader's connections close here: their statistics reach the server.
    });
    assert_eq!(
        page.iter().map(|r| r.ts_ms).collect::<Vec<_>>(),
        (91..=100).rev().map(|g| D0 + g * 1000).collect::<Vec<_>>()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while read() == before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let walked = read() - before;
    assert!(
        walked > 0 && walked <= 8 * 10,
        "8 first pages of 10 read {walked} index pages"
    );
}
