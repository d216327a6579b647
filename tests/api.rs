//! The query API over real HTTP against the real binary: who may read what (the
//! authorization matrix), every bad parameter named, page tokens that cannot be forged,
//! reads that are audited, both Connect codecs, gzip and chunked bodies, the REST form
//! and the NDJSON export.

mod api_common;
mod common;

use api_common::*;
use audit_relay::api::proto;
use common::*;
use prost::Message;
use serde_json::json;
use std::io::Write;

/// Events of org A (by two actors) and org B, one hour apart, newest an hour ago.
fn seed(h: &Harness, relay: &mut Relay) -> (i64, Vec<String>, Vec<String>) {
    let now = now_ms();
    let mut g = gen::Gen::new(11);
    let (mut a, mut b, mut lines) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..30u64 {
        let id = g.uuid();
        let ms = now - 3_600_000 * (i as i64 + 1);
        let (org, actor) = if i % 3 == 2 {
            (ORG_B, "cccccccc-0000-4000-8000-000000000003")
        } else {
            (
                ORG_A,
                [
                    "dddddddd-0000-4000-8000-000000000004",
                    "eeeeeeee-0000-4000-8000-000000000005",
                ][i as usize % 2],
            )
        };
        let action = ["startWorkspace", "stopWorkspace"][i as usize % 2];
        lines.push(event_line(&id, ms, action, org, actor, i));
        if org == ORG_A {
            a.push(id)
        } else {
            b.push(id)
        }
    }
    write_lines(&mut append_to(&h.log("events.log")), &lines);
    h.wait_events(relay, 30);
    (now, a, b)
}

fn ids(resp: &Resp) -> Vec<String> {
    resp.json()["auditLogs"]
        .as_array()
        .expect("auditLogs")
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn authorization_matrix() {
    let (h, ec) = api_harness();
    let mut relay = h.start();
    let addr = api_addr(&relay);
    let (_, a_ids, b_ids) = seed(&h, &mut relay);
    let exp = now_ms() / 1000 + 600;
    let owner_a = hs256(SECRET, AUDIENCE, exp, json!({ORG_A: "owner"}));
    let member_a = hs256(SECRET, AUDIENCE, exp, json!({ORG_A: "member"}));
    let owner_b = hs256(SECRET, AUDIENCE, exp, json!({ORG_B: "owner"}));
    let expired = hs256(
        SECRET,
        AUDIENCE,
        now_ms() / 1000 - 3600,
        json!({ORG_A: "owner", ORG_B: "owner"}),
    );
    let bad_sig = hs256(
        "not the platform's secret!!",
        AUDIENCE,
        exp,
        json!({ORG_A: "owner", ORG_B: "owner"}),
    );
    let wrong_aud = hs256(
        SECRET,
        "someone-else",
        exp,
        json!({ORG_A: "owner", ORG_B: "owner"}),
    );
    let ec_owner_a = es256(&ec, "ec-1", exp, json!({ORG_A: "owner"}));
    let ec_unknown_kid = es256(&ec, "ec-2", exp, json!({ORG_A: "owner"}));
    let cases: [(&str, Option<&str>, u16, u16); 11] = [
        ("owner of A", Some(&owner_a), 200, 403),
        ("member of A", Some(&member_a), 403, 403),
        ("owner of B", Some(&owner_b), 403, 200),
        ("operator token for A", Some(OPS_A_TOKEN), 200, 403),
        ("admin token", Some(ADMIN_TOKEN), 200, 200),
        ("expired JWT", Some(&expired), 401, 401),
        ("JWT with a bad signature", Some(&bad_sig), 401, 401),
        ("JWT for another audience", Some(&wrong_aud), 401, 401),
        ("ES256 JWT (JWKS), owner of A", Some(&ec_owner_a), 200, 403),
        (
            "ES256 JWT with an unknown kid",
            Some(&ec_unknown_kid),
            401,
            401,
        ),
        ("no token", None, 401, 401),
    ];
    let mut denied_messages = std::collections::HashSet::new();
    for (who, token, want_a, want_b) in cases {
        for (org, want, own, other) in [
            (ORG_A, want_a, &a_ids, &b_ids),
            (ORG_B, want_b, &b_ids, &a_ids),
        ] {
            let r = list_json(&addr, token, &json!({"organizationId": org}));
            assert_eq!(r.status, want, "{who} reading {org}: {}", r.text());
            let rest = match token {
                Some(t) => get(&addr, t, &format!("/v1/organizations/{org}/audit-logs")),
                None => request(
                    &addr,
                    "GET",
                    &format!("/v1/organizations/{org}/audit-logs"),
                    &[],
                    Send::None,
                ),
            };
            assert_eq!(
                rest.status,
                want,
                "{who} reading {org} (REST): {}",
                rest.text()
            );
            let body = r.json();
            if want == 200 {
                let got = ids(&r);
                assert!(
                    got.iter().all(|i| !other.contains(i)),
                    "{who} saw another org's event"
                );
                let events: Vec<&String> = got.iter().filter(|i| own.contains(i)).collect();
                assert_eq!(events.len(), own.len(), "{who} reading {org}");
                for l in body["auditLogs"].as_array().unwrap() {
                    assert_eq!(l["organizationId"], org);
                }
            } else {
                let code = ["unauthenticated", "permission_denied"][(want == 403) as usize];
                assert_eq!(body["code"], code, "{who} reading {org}");
                assert_eq!(r.header("content-type"), Some("application/json"));
                if want == 403 {
                    denied_messages.insert(body["message"].as_str().unwrap().to_string());
                }
            }
        }
    }
    // No hint whether an organization exists: a never-seen one reads the same.
    let r = list_json(
        &addr,
        Some(&member_a),
        &json!({"organizationId": "ffffffff-0000-4000-8000-00000000000f"}),
    );
    assert_eq!(r.status, 403);
    denied_messages.insert(r.json()["message"].as_str().unwrap().to_string());
    assert_eq!(denied_messages.len(), 1, "{denied_messages:?}");
    let r = list_json(
        &addr,
        Some(ADMIN_TOKEN),
        &json!({"organizationId": "ffffffff-0000-4000-8000-00000000000f"}),
    );
    assert_eq!((r.status, ids(&r).len()), (200, 0));
    relay.terminate();
}

#[test]
fn bad_parameters_are_named_and_tokens_cannot_be_forged() {
    let (h, _) = api_harness();
    let mut relay = h.start();
    let addr = api_addr(&relay);
    seed(&h, &mut relay);
    let t = Some(ADMIN_TOKEN);
    let cases = [
        (json!({}), "organizationId"),
        (json!({"organizationId": "not-a-uuid"}), "organizationId"),
        (
            json!({"organizationId": ORG_A, "actorId": "someone"}),
            "actorId",
        ),
        (
            json!({"organizationId": ORG_A, "from": "yesterday"}),
            "from",
        ),
        (
            json!({"organizationId": ORG_A, "to": "2024-13-01T00:00:00Z"}),
            "to",
        ),
        (
            json!({"organizationId": ORG_A, "from": "2024-06-25T00:00:00Z", "to": "2024-06-24T00:00:00Z"}),
            "from",
        ),
        (
            json!({"organizationId": ORG_A, "pagination": {"pageSize": 251}}),
            "pagination.pageSize",
        ),
        (
            json!({"organizationId": ORG_A, "pagination": {"pageSize": -1}}),
            "pagination.pageSize",
        ),
        (
            json!({"organizationId": ORG_A, "pagination": {"pageSize": "ten"}}),
            "pagination.pageSize",
        ),
        (
            json!({"organizationId": ORG_A, "pagination": {"token": "forged"}}),
            "pagination.token",
        ),
        (json!({"organizationId": 7}), "organizationId"),
    ];
    for (req, field) in cases {
        let r = list_json(&addr, t, &req);
        assert_eq!(r.status, 400, "{req}: {}", r.text());
        let body = r.json();
        assert_eq!(body["code"], "invalid_argument");
        let msg = body["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("{field}:")), "{req}: {msg}");
    }
    let r = request(
        &addr,
        "POST",
        LIST,
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer admin-token-for-everything"),
        ],
        Send::Plain(b"{\"organizationId\":"),
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().starts_with("body:"));
    let r = request(
        &addr,
        "POST",
        LIST,
        &[
            ("Content-Type", "text/plain"),
            ("Authorization", "Bearer admin-token-for-everything"),
        ],
        Send::Plain(b"{}"),
    );
    assert_eq!(r.status, 415);

    // A real token: altered anywhere, or used with other filters, it is refused.
    let first = list_json(
        &addr,
        t,
        &json!({"organizationId": ORG_A, "pagination": {"pageSize": 2}}),
    );
    assert_eq!(first.status, 200);
    let token = first.json()["pagination"]["nextToken"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!token.is_empty());
    let ok = list_json(
        &addr,
        t,
        &json!({"organizationId": ORG_A, "pagination": {"pageSize": 2, "token": token}}),
    );
    assert_eq!(ok.status, 200);
    for i in [0, token.len() / 2, token.len() - 1] {
        let mut b = token.clone().into_bytes();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(b).unwrap();
        let r = list_json(
            &addr,
            t,
            &json!({"organizationId": ORG_A, "pagination": {"token": forged}}),
        );
        assert_eq!(r.status, 400, "altered at {i}");
        assert!(r.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("pagination.token:"));
    }
    for other in [
        json!({"organizationId": ORG_B, "pagination": {"token": token}}),
        json!({"organizationId": ORG_A, "action": "startWorkspace", "pagination": {"token": token}}),
        json!({"organizationId": ORG_A, "to": rfc3339_ms(now_ms()), "pagination": {"token": token}}),
    ] {
        let r = list_json(&addr, t, &other);
        assert_eq!(r.status, 400, "{other}");
        assert!(r.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("pagination.token:"));
    }
    // REST names its own parameters.
    for (q, field) in [
        ("pageSize=abc", "pageSize"),
        ("pageSize=0", "pageSize"),
        ("pageToken=xyz", "pageToken"),
        ("actorId=x", "actorId"),
        ("since=1h", "since"),
    ] {
        let r = get(
            &addr,
            ADMIN_TOKEN,
            &format!("/v1/organizations/{ORG_A}/audit-logs?{q}"),
        );
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert!(
            r.json()["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}:")),
            "{q}: {}",
            r.text()
        );
    }
    relay.terminate();
}

#[test]
fn a_read_is_audited_and_both_codecs_agree() {
    let (h, _) = api_harness();
    let mut relay = h.start();
    let addr = api_addr(&relay);
    let (now, a_ids, _) = seed(&h, &mut relay);
    let from = now - 48 * 3_600_000;
    let json_req = json!({"organizationId": ORG_A, "from": rfc3339_ms(from), "to": rfc3339_ms(now),
        "action": "startWorkspace", "pagination": {"pageSize": 3}});
    let r = list_json(&addr, Some(OPS_A_TOKEN), &json_req);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json();
    let logs = j["auditLogs"].as_array().unwrap();
    assert_eq!(logs.len(), 3);
    let l0 = &logs[0];
    let args: serde_json::Value = serde_json::from_str(l0["args"].as_str().unwrap())
        .expect("args is a JSON array in a string");
    assert!(args.is_array());
    assert!(a_ids.contains(&l0["id"].as_str().unwrap().to_string()));

    // The read left its own event, by the operator, with its filters.
    h.wait_until(Some(&mut relay), "the read's audit event", DEADLINE, || {
        !read_events(&h).is_empty()
    });
    let reads = read_events(&h);
    assert_eq!(reads.len(), 1, "{reads:?}");
    let (org, actor, args) = &reads[0];
    assert_eq!((org.as_str(), actor.as_str()), (ORG_A, "operator:ops-a"));
    assert_eq!(args[0]["action"], "startWorkspace");
    assert_eq!(args[0]["pageSize"], 3);
    assert_eq!(args[0]["from"], rfc3339_ms(from));
    // ... which its owner can read back, newest first.
    let r = list_json(
        &addr,
        Some(OPS_A_TOKEN),
        &json!({"organizationId": ORG_A, "pagination": {"pageSize": 1}}),
    );
    assert_eq!(r.json()["auditLogs"][0]["action"], READ_ACTION);

    // Binary protobuf: same page, same token; the JSON token continues a proto walk.
    #[allow(deprecated)]
    let preq = proto::ListAuditLogsRequest {
        pagination: Some(proto::PaginationRequest {
            page_size: 3,
            page: 0,
            token: String::new(),
        }),
        organization_id: ORG_A.into(),
        from: Some(prost_types::Timestamp {
            seconds: from.div_euclid(1000),
            nanos: (from.rem_euclid(1000) * 1_000_000) as i32,
        }),
        to: Some(prost_types::Timestamp {
            seconds: now.div_euclid(1000),
            nanos: (now.rem_euclid(1000) * 1_000_000) as i32,
        }),
        actor_id: String::new(),
        action: "startWorkspace".into(),
    };
    let auth = format!("Bearer {OPS_A_TOKEN}");
    let body = preq.encode_to_vec();
    let pr = list_proto(&addr, OPS_A_TOKEN, &preq);
    assert_eq!(pr.status, 200, "{}", pr.text());
    assert_eq!(pr.header("content-type"), Some("application/proto"));
    let presp = proto::ListAuditLogsResponse::decode(&pr.body[..]).unwrap();
    assert_eq!(presp.audit_logs.len(), 3);
    for (p, j) in presp.audit_logs.iter().zip(logs) {
        assert_eq!(p.id, j["id"].as_str().unwrap());
        assert_eq!(p.action, j["action"].as_str().unwrap());
        assert_eq!(p.organization_id, j["organizationId"].as_str().unwrap());
        assert_eq!(p.actor_id, j["actorId"].as_str().unwrap());
        assert_eq!(p.args, j["args"].as_str().unwrap());
        let ts = p.timestamp.unwrap();
        let ms = ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000;
        assert_eq!(rfc3339_ms(ms), j["timestamp"].as_str().unwrap());
    }
    let next = presp.pagination.clone().unwrap().next_token;
    assert_eq!(next, j["pagination"]["nextToken"].as_str().unwrap());
    // Errors are JSON in both codecs.
    let bad = proto::ListAuditLogsRequest {
        organization_id: "nope".into(),
        ..Default::default()
    };
    let r = list_proto(&addr, OPS_A_TOKEN, &bad);
    assert_eq!(
        (r.status, r.header("content-type")),
        (400, Some("application/json"))
    );
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .starts_with("organizationId:"));

    // gzip and chunked request bodies, in both codecs, give the same answers.
    let gz = |b: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    };
    let jbody = json_req.to_string();
    let jgz = gz(jbody.as_bytes());
    let r = request(
        &addr,
        "POST",
        LIST,
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("Authorization", &auth),
        ],
        Send::Chunked(&jgz, 7),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        ids(&r),
        logs.iter()
            .map(|l| l["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    );
    let pgz = gz(&body);
    let r = request(
        &addr,
        "POST",
        LIST,
        &[
            ("Content-Type", "application/proto"),
            ("Content-Encoding", "gzip"),
            ("Authorization", &auth),
        ],
        Send::Chunked(&pgz, 5),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        proto::ListAuditLogsResponse::decode(&r.body[..]).unwrap(),
        presp
    );
    let r = request(
        &addr,
        "POST",
        LIST,
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("Authorization", &auth),
        ],
        Send::Plain(b"not gzip"),
    );
    assert_eq!(r.status, 400);
    // A body over api.max_body_bytes (after decompression) is refused.
    let huge = format!(
        "{{\"organizationId\":\"{ORG_A}\",\"action\":\"{}\"}}",
        "x".repeat(70_000)
    );
    let r = request(
        &addr,
        "POST",
        LIST,
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("Authorization", &auth),
        ],
        Send::Plain(&gz(huge.as_bytes())),
    );
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (429, Some("resource_exhausted"))
    );
    relay.terminate();
}

#[test]
fn rest_pages_and_the_export_match_connect() {
    let (h, _) = api_harness();
    let mut relay = h.start();
    let addr = api_addr(&relay);
    let (now, a_ids, _) = seed(&h, &mut relay);
    let window = format!(
        "from={}&to={}",
        rfc3339_ms(now - 7 * 86_400_000 + 60_000),
        rfc3339_ms(now)
    );
    // Walk REST pages of 4.
    let mut walked = Vec::new();
    let mut token = String::new();
    loop {
        let mut path = format!("/v1/organizations/{ORG_A}/audit-logs?{window}&pageSize=4");
        if !token.is_empty() {
            path.push_str(&format!("&pageToken={token}"));
        }
        let r = get(&addr, ADMIN_TOKEN, &path);
        assert_eq!(r.status, 200, "{}", r.text());
        walked.extend(ids(&r));
        token = r.json()["pagination"]["nextToken"]
            .as_str()
            .unwrap()
            .to_string();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(walked.len(), a_ids.len());
    assert_eq!(walked, a_ids, "newest first");
    let r = get(
        &addr,
        ADMIN_TOKEN,
        &format!("/v1/organizations/{ORG_A}/audit-logs/export?{window}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<serde_json::Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let exported: Vec<String> = lines
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(exported, a_ids);
    assert!(lines
        .iter()
        .all(|l| l["args"].is_string() && l["organizationId"] == ORG_A));
    // The export is audited and refused like the rest.
    let r = get(
        &addr,
        OPS_A_TOKEN,
        &format!("/v1/organizations/{ORG_B}/audit-logs/export"),
    );
    assert_eq!(r.status, 403);
    h.wait_until(
        Some(&mut relay),
        "the export's audit event",
        DEADLINE,
        || {
            read_events(&h)
                .iter()
                .any(|(_, a, args)| a == "operator:admin" && args[0]["export"] == true)
        },
    );
    relay.terminate();
}

/// A stored body that is not what the relay wrote (a damaged spool) fails the page that
/// holds it as a whole, in both Connect codecs and the REST form (never a page without
/// it), the pages before it still answer, and the export never writes that event or a
/// clean end of its stream.
#[test]
fn a_corrupt_stored_event_fails_its_whole_page_and_cuts_the_export() {
    let (h, _) = api_harness();
    let mut relay = h.start();
    let addr = api_addr(&relay);
    let (now, a_ids, _) = seed(&h, &mut relay);
    let db = rusqlite::Connection::open(h.db_path()).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    let changed = db
        .execute(
            "UPDATE events SET body = '{\"id\":1}' WHERE json_extract(body, '$.id') = ?1",
            [&a_ids[5]],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let (from, to) = (rfc3339_ms(now - 7 * 86_400_000 + 60_000), rfc3339_ms(now));
    let page = |token: &str| {
        json!({"organizationId": ORG_A, "from": from, "to": to,
               "pagination": {"pageSize": 4, "token": token}})
    };
    let first = list_json(&addr, Some(ADMIN_TOKEN), &page(""));
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(ids(&first), a_ids[..4]);
    let token = first.json()["pagination"]["nextToken"]
        .as_str()
        .unwrap()
        .to_string();
    let second = list_json(&addr, Some(ADMIN_TOKEN), &page(&token));
    assert_eq!(second.status, 500, "{}", second.text());
    assert_eq!(second.json()["code"], "internal");
    assert!(!second.text().contains(&a_ids[4]), "{}", second.text());

    let ts = |ms: i64| prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    };
    #[allow(deprecated)]
    let preq = proto::ListAuditLogsRequest {
        organization_id: ORG_A.into(),
        from: Some(ts(now - 7 * 86_400_000 + 60_000)),
        to: Some(ts(now)),
        pagination: Some(proto::PaginationRequest {
            page_size: 4,
            token: token.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pr = list_proto(&addr, ADMIN_TOKEN, &preq);
    assert_eq!(pr.status, 500, "{}", pr.text());

    let window = format!(
        "from={}&to={}",
        from.replace(':', "%3A"),
        to.replace(':', "%3A")
    );
    let rest = get(
        &addr,
        ADMIN_TOKEN,
        &format!("/v1/organizations/{ORG_A}/audit-logs?{window}&pageSize=4&pageToken={token}"),
    );
    assert_eq!(rest.status, 500, "{}", rest.text());

    // The export: read to the end of the connection, whatever it holds.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        s,
        "GET /v1/organizations/{ORG_A}/audit-logs/export?{window} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(!raw.contains(&a_ids[5]), "{raw}");
    assert!(
        !raw.ends_with("\r\n0\r\n\r\n"),
        "the export ended cleanly: {raw}"
    );
    relay.terminate();
}
