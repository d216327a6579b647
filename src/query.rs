//! Query planning: from what a caller asked (CLI flags, later API fields) to a validated
//! [`Query`] the spool can run. Pure: the caller passes the current time.

use crate::config::units::parse_duration;
use crate::event::parse_timestamp_ms;

/// Default look-back when neither `from` nor `since` is given.
pub const DEFAULT_WINDOW_MS: i64 = 7 * 86_400_000;

/// A query as asked, unvalidated.
#[derive(Debug, Clone, Default)]
pub struct QueryRequest {
    pub organization_id: String,
    /// RFC 3339.
    pub from: Option<String>,
    /// RFC 3339.
    pub to: Option<String>,
    /// A duration back from now, e.g. `24h` (instead of `from`).
    pub since: Option<String>,
    pub actor_id: Option<String>,
    pub action: Option<String>,
    pub limit: Option<u64>,
}

/// A validated query: one organization, newest first, `from_ms <= ts_ms <= to_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub organization_id: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub actor_id: Option<String>,
    pub action: Option<String>,
    pub limit: usize,
}

/// A bad query parameter, naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct QueryError {
    pub field: &'static str,
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> QueryError {
    QueryError {
        field,
        message: message.into(),
    }
}

/// Validates a request. `default_limit` applies when none is given; `max_limit` caps it.
pub fn plan(
    req: &QueryRequest,
    now_ms: i64,
    default_limit: usize,
    max_limit: usize,
) -> Result<Query, QueryError> {
    if req.organization_id.trim().is_empty() {
        return Err(err("org", "must not be empty"));
    }
    let ts = |field: &'static str, v: &str| {
        parse_timestamp_ms(v).ok_or_else(|| {
            err(
                field,
                format!("not an RFC 3339 timestamp: {v:?} (e.g. 2024-06-24T13:29:36Z)"),
            )
        })
    };
    let to_ms = match &req.to {
        Some(v) => ts("to", v)?,
        None => now_ms,
    };
    let from_ms = match (&req.from, &req.since) {
        (Some(_), Some(_)) => return Err(err("since", "give either since or from, not both")),
        (Some(v), None) => ts("from", v)?,
        (None, Some(s)) => {
            let d = parse_duration(s).map_err(|e| err("since", e))?;
            now_ms.saturating_sub(d.as_millis().min(i64::MAX as u128) as i64)
        }
        (None, None) => to_ms.saturating_sub(DEFAULT_WINDOW_MS),
    };
    if from_ms > to_ms {
        return Err(err("from", "must not be after to"));
    }
    let limit = match req.limit {
        None => default_limit,
        Some(n) if n >= 1 && n <= max_limit as u64 => n as usize,
        Some(n) => {
            return Err(err(
                "limit",
                format!("must be between 1 and {max_limit}, got {n}"),
            ))
        }
    };
    let nonempty = |field: &'static str, v: &Option<String>| match v {
        Some(s) if s.is_empty() => Err(err(field, "must not be empty")),
        other => Ok(other.clone()),
    };
    Ok(Query {
        organization_id: req.organization_id.clone(),
        from_ms,
        to_ms,
        actor_id: nonempty("actor", &req.actor_id)?,
        action: nonempty("action", &req.action)?,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_719_235_776_484;

    fn req(org: &str) -> QueryRequest {
        QueryRequest {
            organization_id: org.into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_seven_days_to_now() {
        let q = plan(&req("o"), NOW, 100, 250).unwrap();
        assert_eq!(
            (q.from_ms, q.to_ms, q.limit),
            (NOW - DEFAULT_WINDOW_MS, NOW, 100)
        );
    }

    #[test]
    fn since_and_explicit_bounds() {
        let mut r = req("o");
        r.since = Some("24h".into());
        assert_eq!(plan(&r, NOW, 100, 250).unwrap().from_ms, NOW - 86_400_000);
        r.from = Some("2024-06-24T00:00:00Z".into());
        assert_eq!(plan(&r, NOW, 100, 250).unwrap_err().field, "since");
        r.since = None;
        r.to = Some("2024-06-25T00:00:00Z".into());
        let q = plan(&r, NOW, 100, 250).unwrap();
        assert_eq!(q.to_ms - q.from_ms, 86_400_000);
    }

    #[test]
    fn bad_parameters_name_their_field() {
        let mut r = req("");
        assert_eq!(plan(&r, NOW, 100, 250).unwrap_err().field, "org");
        r = req("o");
        r.to = Some("tomorrow".into());
        assert_eq!(plan(&r, NOW, 100, 250).unwrap_err().field, "to");
        r.to = Some("2024-01-01T00:00:00Z".into());
        r.from = Some("2024-02-01T00:00:00Z".into());
        assert_eq!(
            plan(&r, NOW, 100, 250).unwrap_err().to_string(),
            "from: must not be after to"
        );
        r = req("o");
        r.limit = Some(251);
        assert_eq!(plan(&r, NOW, 100, 250).unwrap_err().field, "limit");
        r.limit = Some(0);
        assert_eq!(plan(&r, NOW, 100, 250).unwrap_err().field, "limit");
        r = req("o");
        r.since = Some("a while".into());
        assert_eq!(plan(&r, NOW, 100, 250).unwrap_err().field, "since");
    }
}
