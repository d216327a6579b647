//! The Connect protocol's unary ListAuditLogs: both codecs (JSON `application/json`,
//! binary `application/proto`), gzip request bodies. Decoding and encoding are pure;
//! the handler only reads the body and calls [`super::ApiState::list`].

use super::error::{ApiError, Code};
use super::proto;
use super::request::{ListRequest, CONNECT};
use super::{ApiState, Page};
use crate::event::{format_timestamp_ms, parse_timestamp_ms};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use prost::Message;
use serde::Deserialize;
use std::io::Read;

/// The message codec of a request (and of its successful response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Json,
    Proto,
}

impl Codec {
    /// From the `Content-Type` header.
    pub fn from_headers(h: &HeaderMap) -> Result<Codec, ApiError> {
        let ct = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Ok(Codec::Json),
            "application/proto" | "application/protobuf" => Ok(Codec::Proto),
            _ => Err(ApiError::new(
                Code::Unimplemented,
                format!("content-type: {ct:?} is not supported; use application/json or application/proto"),
            )
            .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Codec::Json => "application/json",
            Codec::Proto => "application/proto",
        }
    }
}

/// Reads a request body of at most `max` bytes (after gzip decompression, if any).
pub async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Bytes, ApiError> {
    let too_big = || {
        ApiError::new(
            Code::ResourceExhausted,
            format!("body: larger than {max} bytes"),
        )
    };
    let raw = http_body_util::Limited::new(body, max)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_big()
            } else {
                ApiError::invalid("body", "could not be read")
            }
        })?
        .to_bytes();
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => Ok(raw),
        "gzip" => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .take(max as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|_| ApiError::invalid("body", "not valid gzip"))?;
            if out.len() > max {
                return Err(too_big());
            }
            Ok(out.into())
        }
        other => Err(ApiError::new(
            Code::Unimplemented,
            format!("content-encoding: {other:?} is not supported; use gzip or none"),
        )),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonRequest {
    #[serde(default, alias = "organization_id")]
    organization_id: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default, alias = "actor_id")]
    actor_id: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    pagination: Option<JsonPagination>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonPagination {
    #[serde(default, alias = "page_size")]
    page_size: Option<JsonInt>,
    #[serde(default)]
    token: Option<String>,
}

/// Protobuf JSON writes 32-bit integers as numbers, and accepts them as strings too.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonInt {
    Number(i64),
    Text(String),
}

/// Decodes a Connect JSON request; errors name the field.
pub fn decode_json(body: &[u8]) -> Result<ListRequest, ApiError> {
    // serde_json skips an unknown field's string without checking its UTF-8, so the
    // whole body is checked first: JSON text is UTF-8 (RFC 8259 §8.1).
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::invalid(
            "body",
            format!("not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })?;
    if text.trim_start().as_bytes().first() != Some(&b'{') {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_str(text);
    let r: JsonRequest = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let inner = e.inner();
        let path = e.path().to_string();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid("body", format!("not valid JSON: {inner}"))
        } else if path == "." || path.contains('?') {
            ApiError::invalid("body", inner)
        } else {
            ApiError::invalid(&path, inner)
        }
    })?;
    // Only whitespace may follow the object.
    de.end()
        .map_err(|_| ApiError::invalid("body", "unexpected characters after the JSON object"))?;
    let page_size = match r.pagination.as_ref().and_then(|p| p.page_size.as_ref()) {
        None => None,
        Some(JsonInt::Number(n)) => Some(*n),
        Some(JsonInt::Text(s)) => Some(
            super::request::parse_decimal(s)
                .map_err(|m| ApiError::invalid("pagination.pageSize", m))?,
        ),
    };
    Ok(ListRequest {
        organization_id: r.organization_id.unwrap_or_default(),
        from: r.from,
        to: r.to,
        actor_id: r.actor_id,
        action: r.action,
        page_size,
        token: r.pagination.and_then(|p| p.token),
    })
}

fn timestamp_field(
    field: &str,
    t: Option<prost_types::Timestamp>,
) -> Result<Option<String>, ApiError> {
    let Some(t) = t else { return Ok(None) };
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(ApiError::invalid(field, "nanos out of range"));
    }
    let ms = t
        .seconds
        .checked_mul(1000)
        .and_then(|s| s.checked_add(i64::from(t.nanos) / 1_000_000))
        .ok_or_else(|| ApiError::invalid(field, "out of range"))?;
    let s = format_timestamp_ms(ms);
    // Years outside 0..=9999 have no RFC 3339 form.
    if parse_timestamp_ms(&s) != Some(ms) {
        return Err(ApiError::invalid(field, "out of range"));
    }
    Ok(Some(s))
}

/// Decodes a binary protobuf request.
pub fn decode_proto(body: &[u8]) -> Result<ListRequest, ApiError> {
    let m = proto::ListAuditLogsRequest::decode(body)
        .map_err(|e| ApiError::invalid("body", format!("not a ListAuditLogsRequest: {e}")))?;
    let p = m.pagination.unwrap_or_default();
    Ok(ListRequest {
        organization_id: m.organization_id,
        from: timestamp_field("from", m.from)?,
        to: timestamp_field("to", m.to)?,
        actor_id: Some(m.actor_id),
        action: Some(m.action),
        page_size: Some(i64::from(p.page_size)),
        token: Some(p.token),
    })
}

/// The JSON response body (shared with the REST form): `{"auditLogs":[…],
/// "pagination":{"nextToken":"…"}}`, each event written from its stored JSON.
pub fn encode_json(page: &Page) -> Result<Vec<u8>, ApiError> {
    // Sized up front (the bodies, and room for the escapes of `args`): growing a
    // 100 KiB page copied it several times.
    let size: usize = page.rows.iter().map(|r| r.body.len() * 5 / 4 + 64).sum();
    let mut out = Vec::with_capacity(size + page.next_token.len() + 64);
    out.extend_from_slice(b"{\"auditLogs\":[");
    page.write_json_logs(&mut out)?;
    out.extend_from_slice(b"],\"pagination\":{\"nextToken\":");
    crate::json::write_str(&mut out, &page.next_token);
    out.extend_from_slice(b"}}");
    Ok(out)
}

/// The protobuf response body.
pub fn encode_proto(page: &Page) -> Result<Vec<u8>, ApiError> {
    let logs = page
        .logs()?
        .into_iter()
        .zip(page.rows.iter().map(|r| r.ts_ms))
        .map(|(l, ts)| proto::AuditLog {
            id: l.id,
            timestamp: Some(prost_types::Timestamp {
                seconds: ts.div_euclid(1000),
                nanos: (ts.rem_euclid(1000) * 1_000_000) as i32,
            }),
            action: l.action,
            organization_id: l.organization_id,
            actor_id: l.actor_id,
            args: l.args,
        })
        .collect();
    #[allow(deprecated)]
    let m = proto::ListAuditLogsResponse {
        pagination: Some(proto::PaginationResponse {
            total: 0,
            next_token: page.next_token.clone(),
        }),
        audit_logs: logs,
    };
    Ok(m.encode_to_vec())
}

/// `POST /gitpod.v1.AuditLogService/ListAuditLogs`.
pub async fn list_audit_logs(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let work = async {
        let codec = Codec::from_headers(&headers)?;
        let caller = s.authenticate(&headers)?;
        let bytes = read_body(&headers, body, s.max_body_bytes).await?;
        let req = match codec {
            Codec::Json => decode_json(&bytes)?,
            Codec::Proto => decode_proto(&bytes)?,
        };
        let page = s.list(&caller, &req, CONNECT).await?;
        let body = match codec {
            Codec::Json => encode_json(&page)?,
            Codec::Proto => encode_proto(&page)?,
        };
        Ok::<_, ApiError>(([(header::CONTENT_TYPE, codec.content_type())], body).into_response())
    };
    s.within_timeout(work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_requests_and_their_errors() {
        let r = decode_json(b"{\"organizationId\":\"o\"}\r\n ").unwrap();
        assert_eq!(r.organization_id, "o");
        let r = decode_json(
            br#"{"organization_id":"o","from":"2024-01-01T00:00:00Z","actorId":"a","action":"x","pagination":{"pageSize":"20","token":"t"},"future":1}"#,
        )
        .unwrap();
        assert_eq!(r.page_size, Some(20));
        assert_eq!(r.token.as_deref(), Some("t"));
        assert_eq!(r.from.as_deref(), Some("2024-01-01T00:00:00Z"));
        for (body, field) in [
            (&br#"{"organizationId":1}"#[..], "organizationId"),
            (br#"{"pagination":{"pageSize":"x"}}"#, "pagination.pageSize"),
            (
                br#"{"pagination":{"pageSize":true}}"#,
                "pagination.pageSize",
            ),
            (br#"{"from":5}"#, "from"),
            (br#"{"organizationId":"o""#, "body"),
            (br#"[]"#, "body"),
            (br#"{"organizationId":"o"} x"#, "body"),
            (br#"{"organizationId":"o"}{}"#, "body"),
            (
                b"{\"organizationId\":\"o\",\"unknown\":\"\xff\xfe\"}",
                "body",
            ),
            (
                br#"{"pagination":{"pageSize":"00"}}"#,
                "pagination.pageSize",
            ),
            (
                br#"{"pagination":{"pageSize":"-0"}}"#,
                "pagination.pageSize",
            ),
            (
                br#"{"pagination":{"pageSize":"+5"}}"#,
                "pagination.pageSize",
            ),
        ] {
            let e = decode_json(body).unwrap_err();
            assert!(e.message.starts_with(&format!("{field}:")), "{field}: {e}");
        }
    }

    #[test]
    fn proto_round_trip_and_json_agree() {
        #[allow(deprecated)]
        let m = proto::ListAuditLogsRequest {
            pagination: Some(proto::PaginationRequest {
                page_size: 7,
                page: 0,
                token: String::new(),
            }),
            organization_id: "o".into(),
            from: Some(prost_types::Timestamp {
                seconds: 1_719_235_776,
                nanos: 484_000_000,
            }),
            to: None,
            actor_id: String::new(),
            action: "a".into(),
        };
        let r = decode_proto(&m.encode_to_vec()).unwrap();
        assert_eq!(r.from.as_deref(), Some("2024-06-24T13:29:36.484Z"));
        assert_eq!(r.page_size, Some(7));
        let row = |tiebreak: i64, body: &str| crate::api::store::Row {
            ts_ms: 1_719_235_776_484,
            tiebreak,
            body: body.into(),
        };
        let mut page = Page {
            rows: vec![
                row(
                    2,
                    r#"{"id":"i","action":"a","organizationId":"o","actorId":"u","args":[1]}"#,
                ),
                row(
                    1,
                    r#"{"id":"j","action":"b\"","organizationId":"o","actorId":"v"}"#,
                ),
            ],
            next_token: "n\"".into(),
            store: "spool",
        };
        let back = proto::ListAuditLogsResponse::decode(&encode_proto(&page).unwrap()[..]).unwrap();
        assert_eq!(back.audit_logs[0].timestamp.unwrap().nanos, 484_000_000);
        assert_eq!(back.audit_logs[1].action, "b\"");
        assert_eq!(back.pagination.unwrap().next_token, "n\"");
        let json: serde_json::Value = serde_json::from_slice(&encode_json(&page).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "auditLogs": [
                    {"id": "i", "timestamp": "2024-06-24T13:29:36.484Z", "action": "a",
                     "organizationId": "o", "actorId": "u", "args": "[1]"},
                    {"id": "j", "timestamp": "2024-06-24T13:29:36.484Z", "action": "b\"",
                     "organizationId": "o", "actorId": "v", "args": "[]"},
                ],
                "pagination": {"nextToken": "n\""},
            })
        );
        // A corrupt stored body is an internal error for either codec, not a partial page.
        page.rows.push(row(0, "{\"id\":1}"));
        assert_eq!(encode_json(&page).unwrap_err().code, Code::Internal);
        assert_eq!(encode_proto(&page).unwrap_err().code, Code::Internal);
        assert!(decode_proto(b"\xff\xff").is_err());
    }
}
