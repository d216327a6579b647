//! The read-only audit log viewer at `/ui/`, served with `api.ui = true` (docs/ui.md).
//!
//! Static files built into the binary (`ui/index.html`, `ui/style.css`, `ui/favicon.svg`,
//! and `ui/dist/app.js` compiled from `ui/src/app.ts` and committed, so `cargo build` alone
//! serves them), and `GET /ui/api/session`: who the caller's token is, which
//! organizations it may read, and which store answers. The page reads events only through
//! the API's own ListAuditLogs and export endpoints with the caller's token, so it has no
//! authorization of its own to get wrong, and every read it makes is audited as any other.
//!
//! Every answer carries a strict Content-Security-Policy (scripts and styles from this
//! origin only: no inline script, no `eval`, no framing); the page writes event fields
//! with `textContent` only. The token comes from `Authorization` (pasted once, kept in
//! the tab's `sessionStorage`) or, with `api.ui_token_cookie`, from that cookie, which is
//! accepted only on requests carrying [`UI_HEADER`]: a cross-site page cannot add a
//! custom header without a CORS preflight, which this API never grants.

use super::auth::{Caller, Scope};
use super::ApiState;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const STYLE_CSS: &str = include_str!("../../ui/style.css");
const APP_JS: &str = include_str!("../../ui/dist/app.js");
const FAVICON_SVG: &str = include_str!("../../ui/favicon.svg");

/// The Content-Security-Policy of every `/ui/` answer.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The header the viewer sends on every call; with it (and no `Authorization`), the
/// token may come from the `api.ui_token_cookie` cookie.
pub const UI_HEADER: &str = "x-audit-relay-ui";

/// The viewer's routes, merged into the API's router when `api.ui = true`.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/ui",
            get(|| async {
                (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "/ui/")]).into_response()
            }),
        )
        .route(
            "/ui/",
            get(|h: HeaderMap| async move { asset(&h, "text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/index.html",
            get(|h: HeaderMap| async move { asset(&h, "text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/style.css",
            get(|h: HeaderMap| async move { asset(&h, "text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route(
            "/ui/app.js",
            get(|h: HeaderMap| async move { asset(&h, "text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/favicon.svg",
            get(|h: HeaderMap| async move { asset(&h, "image/svg+xml", FAVICON_SVG) }),
        )
        .route("/ui/api/session", get(session))
}

/// The security headers of every `/ui/` answer.
fn secure(r: &mut Response) {
    let h = r.headers_mut();
    for (k, v) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
}

/// The strong validator of a file: its SHA-256, shortened.
pub fn etag(body: &str) -> String {
    let d = Sha256::digest(body.as_bytes());
    let hex: String = d[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// A built-in file; `no-cache` with an ETag, so a browser revalidates (304) and never
/// keeps a page older than the binary serving it.
fn asset(req: &HeaderMap, content_type: &'static str, body: &'static str) -> Response {
    let tag = etag(body);
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&tag).expect("hex is a header value"),
    );
    secure(&mut r);
    r
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// What `GET /ui/api/session` tells the page: the caller, the organizations its token
/// may read (`allOrganizations` for an operator token of `["*"]`, whose organization is
/// typed), and the store that answers.
pub fn session_json(caller: &Caller, store: &str) -> serde_json::Value {
    let (kind, mut orgs, all) = match caller {
        Caller::User { roles, .. } => (
            "user",
            roles
                .iter()
                .filter(|(_, r)| r.as_str() == super::auth::OWNER_ROLE)
                .map(|(o, _)| o.clone())
                .collect::<Vec<_>>(),
            false,
        ),
        Caller::Operator { scope, .. } => match scope {
            Scope::All => ("operator", vec![], true),
            Scope::Only(o) => ("operator", o.clone(), false),
        },
    };
    orgs.sort();
    serde_json::json!({
        "actor": caller.actor_id(),
        "kind": kind,
        "organizations": orgs,
        "allOrganizations": all,
        "store": store,
    })
}

/// `GET /ui/api/session`: authenticated like every call (401 otherwise). It reads no
/// event, so it is not audited.
async fn session(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let work = async {
        let caller = s.authenticate(&headers)?;
        let body = session_json(&caller, s.store.name()).to_string();
        let mut r = (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response();
        secure(&mut r);
        Ok(r)
    };
    s.within_timeout(work).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; jwt=\"tok.en\"".parse().unwrap());
        h.append(header::COOKIE, "b=2".parse().unwrap());
        assert_eq!(cookie(&h, "jwt"), Some("tok.en"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "JWT"), None);
        h.append(header::COOKIE, "empty=".parse().unwrap());
        assert_eq!(cookie(&h, "empty"), None);
    }

    #[test]
    fn sessions_list_only_owned_organizations() {
        let roles: HashMap<String, String> = [("o2", "owner"), ("o1", "owner"), ("o3", "member")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let u = Caller::User {
            user_id: "u".into(),
            roles,
        };
        let j = session_json(&u, "spool");
        assert_eq!(j["organizations"], serde_json::json!(["o1", "o2"]));
        assert_eq!(
            (j["kind"].as_str(), j["store"].as_str()),
            (Some("user"), Some("spool"))
        );
        let admin = Caller::Operator {
            name: "admin".into(),
            scope: Scope::All,
        };
        let j = session_json(&admin, "postgres");
        assert_eq!(j["allOrganizations"], true);
        assert_eq!(j["actor"], "operator:admin");
    }

    #[test]
    fn every_file_is_served_under_the_policy() {
        let r = asset(&HeaderMap::new(), "text/css; charset=utf-8", STYLE_CSS);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        assert!(!CSP.contains("unsafe"));
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, etag(STYLE_CSS).parse().unwrap());
        let r = asset(&h, "text/css; charset=utf-8", STYLE_CSS);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert!(INDEX_HTML.contains("src=\"app.js\"") && !INDEX_HTML.contains("<script>"));
    }
}
