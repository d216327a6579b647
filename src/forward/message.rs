//! The CloudWatch message of an event: the stored event JSON (API field names, `args`
//! as a JSON array) plus the configured static fields, so Logs Insights discovers every
//! field. An event too large for CloudWatch is sent as a stub that still identifies it.

use crate::event::ApiAuditLog;
use std::collections::BTreeMap;

/// Renders messages for one forwarder.
#[derive(Debug, Clone)]
pub struct MessageFormat {
    /// `,"k":"v"` for each static field, ready to splice before the closing brace.
    static_suffix: String,
    /// Largest message sent whole, in bytes, counting CloudWatch's 26 bytes of overhead.
    max_event_bytes: usize,
}

/// CloudWatch's per-event overhead in its size accounting.
pub const EVENT_OVERHEAD: usize = 26;

impl MessageFormat {
    pub fn new(static_fields: &BTreeMap<String, String>, max_event_bytes: usize) -> Self {
        let mut static_suffix = String::new();
        for (k, v) in static_fields {
            static_suffix.push(',');
            static_suffix.push_str(&serde_json::to_string(k).expect("string"));
            static_suffix.push(':');
            static_suffix.push_str(&serde_json::to_string(v).expect("string"));
        }
        MessageFormat {
            static_suffix,
            max_event_bytes,
        }
    }

    /// The message for a stored event body; `true` when it had to be truncated.
    pub fn render(&self, body: &str, ts_ms: i64) -> (String, bool) {
        let whole = self.splice(body);
        if whole.len() + EVENT_OVERHEAD <= self.max_event_bytes {
            return (whole, false);
        }
        let stub = match ApiAuditLog::from_body(body, ts_ms) {
            Ok(a) => serde_json::json!({
                "id": a.id, "timestamp": a.timestamp, "action": a.action,
                "organizationId": a.organization_id, "actorId": a.actor_id, "truncated": true,
            })
            .to_string(),
            Err(_) => serde_json::json!({ "truncated": true }).to_string(),
        };
        (self.splice(&stub), true)
    }

    /// [`MessageFormat::render`] of a body the caller gives up: one that goes out as it
    /// is (no static fields, not too large) is moved, not copied.
    pub fn render_owned(&self, body: String, ts_ms: i64) -> (String, bool) {
        if self.static_suffix.is_empty() && body.len() + EVENT_OVERHEAD <= self.max_event_bytes {
            return (body, false);
        }
        self.render(&body, ts_ms)
    }

    fn splice(&self, object: &str) -> String {
        if self.static_suffix.is_empty() {
            return object.to_string();
        }
        let inner = object.trim_end().strip_suffix('}').unwrap_or(object);
        let mut s = String::with_capacity(object.len() + self.static_suffix.len());
        s.push_str(inner);
        if inner.trim_end().ends_with('{') {
            s.push_str(&self.static_suffix[1..]);
        } else {
            s.push_str(&self.static_suffix);
        }
        s.push('}');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"id":"1ac75456-ae7d-4233-9914-32d124fa35c3","timestamp":"2024-06-24T13:29:36.484Z","action":"getTeamProjects","organizationId":"o","actorId":"a","args":["x"]}"#;

    #[test]
    fn static_fields_are_added() {
        let f = MessageFormat::new(
            &BTreeMap::from([("cluster".into(), "eu-1".into())]),
            1 << 20,
        );
        let (m, truncated) = f.render(BODY, 0);
        assert!(!truncated);
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v["cluster"], "eu-1");
        assert_eq!(v["args"][0], "x");
        let plain = MessageFormat::new(&BTreeMap::new(), 1 << 20);
        assert_eq!(plain.render(BODY, 0).0, BODY);
        assert_eq!(
            plain.render_owned(BODY.to_string(), 0),
            (BODY.to_string(), false)
        );
    }

    #[test]
    fn oversize_events_become_identifying_stubs() {
        let big = BODY.replace(r#"["x"]"#, &format!(r#"["{}"]"#, "y".repeat(5000)));
        let f = MessageFormat::new(&BTreeMap::from([("cluster".into(), "eu-1".into())]), 1024);
        let (m, truncated) = f.render(&big, 1_719_235_776_484);
        assert!(truncated);
        assert_eq!(
            f.render_owned(big.clone(), 1_719_235_776_484),
            (m.clone(), true)
        );
        assert!(m.len() + EVENT_OVERHEAD <= 1024);
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v["id"], "1ac75456-ae7d-4233-9914-32d124fa35c3");
        assert_eq!(v["action"], "getTeamProjects");
        assert_eq!(v["truncated"], true);
        assert_eq!(v["cluster"], "eu-1");
        assert!(v.get("args").is_none());
    }
}
