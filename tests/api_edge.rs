//! The query API's edge over real HTTP against the real binary: registered JWT claims
//! of the wrong type are refused by name (fractional NumericDates honoured), Connect
//! JSON and REST parameters are parsed strictly, and organization ids are compared,
//! queried and audited in one canonical form.

mod api_common;
mod common;

use api_common::*;
use common::*;
use serde_json::json;

/// A JWT signed with the platform's HS256 secret, with exactly these claims.
fn signed(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn assert_invalid(r: &Resp, field: &str, what: &str) {
    assert_eq!(r.status, 400, "{what}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
    let v = r.json();
    assert_eq!(v["code"], "invalid_argument", "{what}");
    let m = v["message"].as_str().unwrap();
    assert!(m.starts_with(&format!("{field}: ")), "{what}: {m}");
}

#[test]
fn malformed_registered_claims_are_refused_by_name() {
    let (h, _) = api_harness();
    let relay = h.start();
    let addr = api_addr(&relay);
    let now = now_ms() as f64 / 1000.0;
    let base = json!({"sub": "user-1", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600.0,
        "orgs": {ORG_A: "owner"}});
    let with = |k: &str, v: serde_json::Value| {
        let mut c = base.clone();
        c[k] = v;
        signed(c)
    };
    for (token, claim) in [
        (with("nbf", json!("0")), "nbf"),
        (with("iss", json!([ISSUER])), "iss"),
        (with("exp", json!((now + 600.0).to_string())), "exp"),
        (with("aud", json!(1)), "aud"),
    ] {
        let r = list_json(&addr, Some(&token), &json!({"organizationId": ORG_A}));
        assert_eq!(r.status, 401, "{claim}: {}", r.text());
        let v = r.json();
        assert_eq!(v["code"], "unauthenticated");
        let m = v["message"].as_str().unwrap();
        assert!(m.starts_with(&format!("token claim {claim}: ")), "{m}");
    }
    // RFC 7519 allows a non-integer NumericDate: a fractional exp in the future is valid.
    let r = list_json(
        &addr,
        Some(&with("exp", json!(now + 600.5))),
        &json!({"organizationId": ORG_A}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    relay.terminate();
}

#[test]
fn connect_json_and_rest_parameters_are_strict() {
    let (h, _) = api_harness();
    let relay = h.start();
    let addr = api_addr(&relay);
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let post = |body: &[u8]| {
        request(
            &addr,
            "POST",
            LIST,
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &auth),
            ],
            Send::Plain(body),
        )
    };
    let ok = format!(r#"{{"organizationId":"{ORG_A}"}}"#);
    assert_eq!(post(ok.as_bytes()).status, 200);
    let garbage = format!("{ok} trailing");
    assert_invalid(&post(garbage.as_bytes()), "body", "trailing garbage");
    let two = format!("{ok}{{}}");
    assert_invalid(&post(two.as_bytes()), "body", "a second object");
    let mut bad_utf8 = format!(r#"{{"organizationId":"{ORG_A}","future":""#).into_bytes();
    bad_utf8.extend_from_slice(b"\xff\xfe\"}");
    assert_invalid(
        &post(&bad_utf8),
        "body",
        "invalid UTF-8 in an unknown field",
    );
    let rest = |q: &str| {
        get(
            &addr,
            ADMIN_TOKEN,
            &format!("/v1/organizations/{ORG_A}/audit-logs{q}"),
        )
    };
    assert_eq!(rest("?pageSize=5").status, 200);
    for q in [
        "?pageSize=00",
        "?pageSize=-0",
        "?pageSize=+1",
        "?pageSize=007",
    ] {
        assert_invalid(&rest(q), "pageSize", q);
    }
    let r = get(&addr, ADMIN_TOKEN, "/v1/organizations/%FF/audit-logs");
    assert_invalid(&r, "organizationId", "%FF in the path");
    let r = get(
        &addr,
        ADMIN_TOKEN,
        "/v1/organizations/%FF/audit-logs/export",
    );
    assert_invalid(&r, "organizationId", "%FF in the export's path");
    relay.terminate();
}

#[test]
fn organization_ids_are_canonical_at_the_edge() {
    let (h, _) = api_harness();
    let mut relay = h.start();
    let addr = api_addr(&relay);
    let id = gen::Gen::new(5).uuid();
    let line = event_line(
        &id,
        now_ms() - 60_000,
        "startWorkspace",
        ORG_A,
        "dddddddd-0000-4000-8000-000000000004",
        1,
    );
    write_lines(&mut append_to(&h.log("events.log")), &[line]);
    h.wait_events(&mut relay, 1);
    let upper = ORG_A.to_uppercase();
    // The operator token scoped to A, asking for A spelled in uppercase, and in braces.
    for org in [upper.clone(), format!("{{{ORG_A}}}")] {
        let r = list_json(&addr, Some(OPS_A_TOKEN), &json!({"organizationId": org}));
        assert_eq!(r.status, 200, "{org}: {}", r.text());
        let logs = r.json()["auditLogs"].as_array().unwrap().clone();
        assert!(
            logs.iter().any(|l| l["id"] == id.as_str()),
            "{org}: the event of A is found: {logs:?}"
        );
    }
    let r = get(
        &addr,
        OPS_A_TOKEN,
        &format!("/v1/organizations/{upper}/audit-logs"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // An owner of A (roles claim in uppercase) reading A in lowercase.
    let exp = now_ms() / 1000 + 600;
    let owner = hs256(SECRET, AUDIENCE, exp, json!({upper.clone(): "owner"}));
    let r = list_json(&addr, Some(&owner), &json!({"organizationId": ORG_A}));
    assert_eq!(r.status, 200, "{}", r.text());
    let actor_upper = "DDDDDDDD-0000-4000-8000-000000000004";
    let r = list_json(
        &addr,
        Some(OPS_A_TOKEN),
        &json!({"organizationId": ORG_A, "actorId": actor_upper}),
    );
    assert_eq!(r.json()["auditLogs"][0]["id"], id.as_str(), "actor filter");
    for (body, field) in [
        (json!({"organizationId": "not-a-uuid"}), "organizationId"),
        (json!({"organizationId": ORG_A, "actorId": "x"}), "actorId"),
    ] {
        assert_invalid(&list_json(&addr, Some(ADMIN_TOKEN), &body), field, field);
    }
    // Every read's own audit event is stored under the canonical id.
    h.wait_until(
        Some(&mut relay),
        "the reads' audit events",
        DEADLINE,
        || read_events(&h).len() >= 5,
    );
    for (org, _, _) in read_events(&h) {
        assert_eq!(org, ORG_A);
    }
    relay.terminate();
}
