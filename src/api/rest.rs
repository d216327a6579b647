//! The REST form of ListAuditLogs for people with curl (the NDJSON export, which
//! shares its query string, is in [`super::export`]).

use super::error::ApiError;
use super::request::{parse_decimal, ListRequest, MAX_PAGE_SIZE, REST};
use super::{connect, ApiState};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

/// Builds a request from the path and the query string; unknown or repeated
/// parameters are refused by name.
pub fn rest_request(
    organization_id: String,
    params: &[(String, String)],
    allowed: &[&str],
) -> Result<ListRequest, ApiError> {
    let mut r = ListRequest {
        organization_id,
        ..Default::default()
    };
    for (i, (k, v)) in params.iter().enumerate() {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::invalid(
                k,
                format!("unknown parameter (known: {})", allowed.join(", ")),
            ));
        }
        if params[..i].iter().any(|(o, _)| o == k) {
            return Err(ApiError::invalid(k, "given more than once"));
        }
        let raw = v;
        let v = Some(v.clone());
        match k.as_str() {
            "from" => r.from = v,
            "to" => r.to = v,
            "actorId" => r.actor_id = v,
            "action" => r.action = v,
            "pageToken" => r.token = v,
            "pageSize" if raw == "0" => {
                return Err(ApiError::invalid(
                    "pageSize",
                    format!("must be between 1 and {MAX_PAGE_SIZE}, got 0"),
                ))
            }
            "pageSize" => {
                r.page_size =
                    Some(parse_decimal(raw).map_err(|m| ApiError::invalid("pageSize", m))?)
            }
            _ => unreachable!("checked against allowed"),
        }
    }
    Ok(r)
}

/// The organization in the path and the query string's pairs, or a Connect error (axum's
/// own rejections are plain text). A percent-escape that does not decode to UTF-8 is
/// the usual cause.
pub fn path_and_query(
    org: Result<Path<String>, PathRejection>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<(String, Vec<(String, String)>), ApiError> {
    let Path(org) = org.map_err(|_| {
        ApiError::invalid(
            "organizationId",
            "the path segment is not valid percent-encoded UTF-8",
        )
    })?;
    let Query(params) = params.map_err(|_| {
        ApiError::invalid(
            "query",
            "the query string is not valid percent-encoded UTF-8",
        )
    })?;
    Ok((org, params))
}

/// `GET /v1/organizations/{organizationId}/audit-logs`.
pub async fn list(
    State(s): State<ApiState>,
    org: Result<Path<String>, PathRejection>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let work = async {
        let caller = s.authenticate(&headers)?;
        let (org, params) = path_and_query(org, params)?;
        let allowed = ["from", "to", "actorId", "action", "pageSize", "pageToken"];
        let req = rest_request(org, &params, &allowed)?;
        let page = s.list(&caller, &req, REST).await?;
        Ok((
            [(header::CONTENT_TYPE, "application/json")],
            connect::encode_json(&page)?,
        )
            .into_response())
    };
    s.within_timeout(work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn query_strings() {
        let all = ["from", "to", "actorId", "action", "pageSize", "pageToken"];
        let r = rest_request("o".into(), &p(&[("pageSize", "5"), ("action", "x")]), &all).unwrap();
        assert_eq!((r.page_size, r.action.as_deref()), (Some(5), Some("x")));
        for (q, field) in [
            (p(&[("pageSize", "five")]), "pageSize"),
            (p(&[("pagesize", "5")]), "pagesize"),
            (p(&[("from", "a"), ("from", "b")]), "from"),
            (p(&[("pageSize", "00")]), "pageSize"),
            (p(&[("pageSize", "-0")]), "pageSize"),
            (p(&[("pageSize", "+5")]), "pageSize"),
            (p(&[("pageSize", "05")]), "pageSize"),
            (p(&[("pageSize", " 5")]), "pageSize"),
            (p(&[("pageSize", "")]), "pageSize"),
        ] {
            let e = rest_request("o".into(), &q, &all).unwrap_err();
            assert!(e.message.starts_with(&format!("{field}:")), "{e}");
        }
    }
}
