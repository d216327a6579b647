//! The audit event each read leaves behind. Pure: the caller passes the id and the time.

use super::auth::Caller;
use super::request::PagePlan;
use crate::config::Envelope;
use crate::event::{decode, format_timestamp_ms, Decoded, Event};

/// The action of a read's own audit event (ListAuditLogs, REST, and export alike).
pub const READ_ACTION: &str = "gitpod.v1.AuditLogService/listAuditLogs";

/// The filters of a read, as the `args` of its audit event: `[{…}]`.
pub fn args(plan: &PagePlan, export: bool) -> serde_json::Value {
    let q = &plan.query;
    let mut m = serde_json::Map::new();
    m.insert("organizationId".into(), q.organization_id.clone().into());
    m.insert("from".into(), format_timestamp_ms(q.from_ms).into());
    m.insert("to".into(), format_timestamp_ms(q.to_ms).into());
    if let Some(a) = &q.actor_id {
        m.insert("actorId".into(), a.clone().into());
    }
    if let Some(a) = &q.action {
        m.insert("action".into(), a.clone().into());
    }
    if export {
        m.insert("export".into(), true.into());
    } else {
        m.insert("pageSize".into(), q.limit.into());
        m.insert("nextPage".into(), plan.before.is_some().into());
    }
    serde_json::Value::Array(vec![serde_json::Value::Object(m)])
}

/// The event recording that `caller` read what `plan` asks, built by the same decoder
/// as every ingested event.
pub fn event(
    caller: &Caller,
    plan: &PagePlan,
    export: bool,
    id: uuid::Uuid,
    now_ms: i64,
) -> Result<Event, String> {
    let line = serde_json::json!({
        "id": id.to_string(),
        "timestamp": format_timestamp_ms(now_ms),
        "action": READ_ACTION,
        "organizationId": plan.query.organization_id,
        "actorId": caller.actor_id(),
        "args": args(plan, export),
    })
    .to_string();
    match decode(line.as_bytes(), Envelope::Event) {
        Decoded::Event(e) => Ok(e),
        Decoded::Invalid(reason) => Err(reason.to_string()),
        Decoded::Skipped => Err("not an event".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::Scope;
    use crate::api::request::{plan, ListRequest, CONNECT};

    #[test]
    fn a_read_becomes_an_event_with_its_filters() {
        let req = ListRequest {
            organization_id: "3d5e4ee2-7e5f-468f-b027-276a65518784".into(),
            action: Some("startWorkspace".into()),
            page_size: Some(10),
            ..Default::default()
        };
        let p = plan(&req, 1_719_235_776_484, b"k", CONNECT).unwrap();
        let caller = Caller::Operator {
            name: "ops".into(),
            scope: Scope::All,
        };
        let id = uuid::Uuid::new_v4();
        let e = event(&caller, &p, false, id, 1_719_235_776_484).unwrap();
        assert_eq!(e.id, id);
        assert_eq!(e.action, READ_ACTION);
        assert_eq!(e.actor_id, "operator:ops");
        assert_eq!(e.organization_id, req.organization_id);
        let body: serde_json::Value = serde_json::from_str(&e.body).unwrap();
        assert_eq!(body["args"][0]["action"], "startWorkspace");
        assert_eq!(body["args"][0]["pageSize"], 10);
        assert_eq!(body["args"][0]["from"], "2024-06-17T13:29:36.484Z");
    }
}
