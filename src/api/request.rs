//! A ListAuditLogs request in any of its forms (Connect JSON, Connect protobuf, REST query
//! string), validated into a [`PagePlan`] with [`crate::query::plan`]. Pure.

use super::error::ApiError;
use super::token::{self, Cursor, Filters};
use crate::event::parse_timestamp_ms;
use crate::query::{self, Query, QueryRequest};

/// Default page size.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page size.
pub const MAX_PAGE_SIZE: usize = 250;

/// A request as asked. Empty strings count as not given (protobuf cannot tell them apart).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListRequest {
    pub organization_id: String,
    /// RFC 3339.
    pub from: Option<String>,
    /// RFC 3339.
    pub to: Option<String>,
    pub actor_id: Option<String>,
    pub action: Option<String>,
    pub page_size: Option<i64>,
    pub token: Option<String>,
}

/// How the fields are named in the form the request came in, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct FieldNames {
    pub page_size: &'static str,
    pub token: &'static str,
}

/// Connect (JSON and protobuf).
pub const CONNECT: FieldNames = FieldNames {
    page_size: "pagination.pageSize",
    token: "pagination.token",
};
/// The REST query string.
pub const REST: FieldNames = FieldNames {
    page_size: "pageSize",
    token: "pageToken",
};

/// A validated page request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagePlan {
    /// The query; `limit` is the page size.
    pub query: Query,
    /// Only events older than this `(ts_ms, seq)` (from the page token).
    pub before: Option<(i64, i64)>,
    /// The filters as asked, which later pages' tokens are bound to.
    pub asked: AskedFilters,
}

/// The filters as asked, owned (see [`Filters`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskedFilters {
    pub organization_id: String,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub actor_id: Option<String>,
    pub action: Option<String>,
}

impl AskedFilters {
    pub fn as_filters(&self) -> Filters<'_> {
        Filters {
            organization_id: &self.organization_id,
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            actor_id: self.actor_id.as_deref(),
            action: self.action.as_deref(),
        }
    }
}

impl PagePlan {
    /// The token of the page after one that ended with `(last_ts_ms, last_seq)`.
    pub fn next_token(&self, key: &[u8], last_ts_ms: i64, last_seq: i64) -> String {
        let cursor = Cursor {
            from_ms: self.query.from_ms,
            to_ms: self.query.to_ms,
            last_ts_ms,
            last_seq,
        };
        token::encode(key, &self.asked.as_filters(), &cursor)
    }
}

fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_ref().filter(|s| !s.is_empty()).cloned()
}

/// The canonical form of an id given as a UUID: lowercase and hyphenated, the one form
/// compared against scopes and roles, queried and written to the read's audit event.
pub fn canonical_uuid(field: &str, v: &str) -> Result<String, ApiError> {
    uuid::Uuid::try_parse(v)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| ApiError::invalid(field, format!("not a UUID: {v:?}")))
}

/// A page size written as text (the REST query string, a Connect JSON string): plain
/// decimal digits with no sign and no leading zero, so `00` and `-0` are not taken for
/// "not given".
pub fn parse_decimal(s: &str) -> Result<i64, String> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    match s.parse::<i64>() {
        Ok(n) if canonical => Ok(n),
        _ => Err(format!("not a decimal integer: {s:?}")),
    }
}

/// Validates a request at `now_ms`, checking its page token (if any) under `key`.
pub fn plan(
    req: &ListRequest,
    now_ms: i64,
    key: &[u8],
    names: FieldNames,
) -> Result<PagePlan, ApiError> {
    if req.organization_id.is_empty() {
        return Err(ApiError::invalid("organizationId", "required"));
    }
    let organization_id = canonical_uuid("organizationId", &req.organization_id)?;
    let actor_id = nonempty(&req.actor_id)
        .map(|a| canonical_uuid("actorId", &a))
        .transpose()?;
    let page_size = match req.page_size {
        None | Some(0) => None,
        Some(n) if n < 0 => {
            return Err(ApiError::invalid(
                names.page_size,
                format!("must be between 1 and {MAX_PAGE_SIZE}, got {n}"),
            ))
        }
        Some(n) => Some(n as u64),
    };
    let (from, to) = (nonempty(&req.from), nonempty(&req.to));
    let asked_ms = |field: &str, v: &Option<String>| -> Result<Option<i64>, ApiError> {
        v.as_ref()
            .map(|s| {
                parse_timestamp_ms(s).ok_or_else(|| {
                    ApiError::invalid(
                        field,
                        format!("not an RFC 3339 timestamp: {s:?} (e.g. 2024-06-24T13:29:36Z)"),
                    )
                })
            })
            .transpose()
    };
    let asked = AskedFilters {
        organization_id: organization_id.clone(),
        from_ms: asked_ms("from", &from)?,
        to_ms: asked_ms("to", &to)?,
        actor_id: actor_id.clone(),
        action: nonempty(&req.action),
    };
    let qr = QueryRequest {
        organization_id,
        from,
        to,
        since: None,
        actor_id,
        action: asked.action.clone(),
        limit: page_size,
    };
    let mut query = query::plan(&qr, now_ms, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE).map_err(|e| {
        let field = match e.field {
            "org" => "organizationId",
            "actor" => "actorId",
            "limit" => names.page_size,
            other => other,
        };
        ApiError::invalid(field, e.message)
    })?;
    let mut before = None;
    if let Some(t) = nonempty(&req.token) {
        let c = token::decode(key, &asked.as_filters(), &t)
            .map_err(|e| ApiError::invalid(names.token, e))?;
        query.from_ms = c.from_ms;
        query.to_ms = c.to_ms;
        before = Some((c.last_ts_ms, c.last_seq));
    }
    Ok(PagePlan {
        query,
        before,
        asked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::DEFAULT_WINDOW_MS;

    const NOW: i64 = 1_719_235_776_484;
    const KEY: &[u8] = b"key";
    const ORG: &str = "3d5e4ee2-7e5f-468f-b027-276a65518784";

    fn req() -> ListRequest {
        ListRequest {
            organization_id: ORG.into(),
            ..Default::default()
        }
    }

    fn field_of(r: &ListRequest, names: FieldNames) -> String {
        let e = plan(r, NOW, KEY, names).unwrap_err();
        assert_eq!(e.code, super::super::error::Code::InvalidArgument);
        e.message.split(':').next().unwrap().to_string()
    }

    #[test]
    fn defaults() {
        let p = plan(&req(), NOW, KEY, CONNECT).unwrap();
        assert_eq!(p.query.to_ms, NOW);
        assert_eq!(p.query.from_ms, NOW - DEFAULT_WINDOW_MS);
        assert_eq!(p.query.limit, DEFAULT_PAGE_SIZE);
        assert_eq!(p.before, None);
        // Empty strings and a zero page size are "not given".
        let mut r = req();
        r.actor_id = Some(String::new());
        r.token = Some(String::new());
        r.page_size = Some(0);
        assert_eq!(plan(&r, NOW, KEY, CONNECT).unwrap(), p);
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut r = req();
        r.organization_id = String::new();
        assert_eq!(field_of(&r, CONNECT), "organizationId");
        r.organization_id = "not-a-uuid".into();
        assert_eq!(field_of(&r, CONNECT), "organizationId");
        let mut r = req();
        r.actor_id = Some("x".into());
        assert_eq!(field_of(&r, CONNECT), "actorId");
        let mut r = req();
        r.from = Some("yesterday".into());
        assert_eq!(field_of(&r, CONNECT), "from");
        r.from = Some("2024-06-25T00:00:00Z".into());
        r.to = Some("2024-06-24T00:00:00Z".into());
        assert_eq!(field_of(&r, CONNECT), "from");
        let mut r = req();
        for n in [-1, 251, 100_000] {
            r.page_size = Some(n);
            assert_eq!(field_of(&r, CONNECT), "pagination.pageSize");
            assert_eq!(field_of(&r, REST), "pageSize");
        }
        let mut r = req();
        r.token = Some("garbage".into());
        assert_eq!(field_of(&r, CONNECT), "pagination.token");
        assert_eq!(field_of(&r, REST), "pageToken");
    }

    #[test]
    fn ids_are_canonical_uuids() {
        let actor = "E2EB4315-1CE5-4C5B-B1A1-D6A891C08A56";
        for org in [
            ORG.to_uppercase(),
            format!("{{{ORG}}}"),
            ORG.replace('-', ""),
            ORG.to_string(),
        ] {
            let mut r = req();
            r.organization_id = org.clone();
            r.actor_id = Some(actor.into());
            let p = plan(&r, NOW, KEY, CONNECT).unwrap();
            assert_eq!(p.query.organization_id, ORG, "{org}");
            assert_eq!(p.asked.organization_id, ORG, "{org}");
            assert_eq!(p.query.actor_id.as_deref(), Some(&*actor.to_lowercase()));
        }
        // A page token is bound to the organization, however it was spelled.
        let t = plan(&req(), NOW, KEY, CONNECT)
            .unwrap()
            .next_token(KEY, NOW - 5, 7);
        let mut r = req();
        r.organization_id = ORG.to_uppercase();
        r.token = Some(t);
        assert_eq!(
            plan(&r, NOW, KEY, CONNECT).unwrap().before,
            Some((NOW - 5, 7))
        );
        for bad in [
            "3d5e4ee2-7e5f-468f-b027-276a6551878",
            "3d5e4ee2 7e5f 468f b027 276a65518784",
        ] {
            let mut r = req();
            r.organization_id = bad.into();
            assert_eq!(field_of(&r, CONNECT), "organizationId");
        }
    }

    #[test]
    fn a_token_fixes_the_window_and_binds_the_filters() {
        let first = plan(&req(), NOW, KEY, CONNECT).unwrap();
        let t = first.next_token(KEY, NOW - 5, 7);
        let mut r = req();
        r.token = Some(t.clone());
        let later = plan(&r, NOW + 60_000, KEY, CONNECT).unwrap();
        assert_eq!(
            (later.query.from_ms, later.query.to_ms),
            (first.query.from_ms, first.query.to_ms)
        );
        assert_eq!(later.before, Some((NOW - 5, 7)));
        r.action = Some("startWorkspace".into());
        let e = plan(&r, NOW, KEY, CONNECT).unwrap_err();
        assert!(e.message.starts_with("pagination.token: "), "{e}");
        r.action = None;
        assert!(plan(&r, NOW, b"other key", CONNECT).is_err());
    }
}
