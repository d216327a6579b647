//! The forwarding ledger: every rejection (an event CloudWatch will not take) recorded as
//! a row of the chain itself, so that an event missing from CloudWatch cannot be excused
//! afterwards by a row in the `rejected` table (which is not chained).
//!
//! A ledger row has `org` 0 (like a checkpoint), `action` `rejected`, and a
//! [`LedgerEntry`] as its body; the partial index `events_ledger` finds it by the
//! rejected event's sequence number. Forwarders step over ledger rows (they are not sent).

/// `action` of a forwarding-ledger row.
pub const LEDGER_ACTION: &str = "rejected";
/// How every forwarding-ledger body starts (the forwarder tells them from checkpoints by it).
pub const LEDGER_BODY_PREFIX: &str = r#"{"type":"rejection","#;

/// The body of a forwarding-ledger row: an event CloudWatch will not take, recorded in
/// the chain itself (a row of its own, `org` 0, like a checkpoint), so that nobody can
/// excuse an event missing from CloudWatch afterwards by marking it rejected.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LedgerEntry {
    /// Always `"rejection"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The rejected event's sequence number.
    pub seq: i64,
    /// The forwarder's cursor name (empty for rejections recorded by the format-4 upgrade).
    pub cursor: String,
    /// `too_old`, `too_new`, `expired`, `invalid`.
    pub reason: String,
    pub detail: String,
}

impl LedgerEntry {
    pub fn to_json(&self) -> String {
        let s = serde_json::to_string(self).expect("ledger entry serializes");
        debug_assert!(s.starts_with(LEDGER_BODY_PREFIX));
        s
    }

    pub fn from_json(s: &str) -> Result<LedgerEntry, String> {
        let e: LedgerEntry = serde_json::from_str(s).map_err(|e| e.to_string())?;
        if e.kind != "rejection" {
            return Err(format!("type {:?}, not \"rejection\"", e.kind));
        }
        Ok(e)
    }
}
