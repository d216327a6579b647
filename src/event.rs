//! The audit event model, and decoding a record (one logical log line) into it.
//!
//! Pure functions: bytes in, [`Decoded`] out. A record is either an audit event, a line
//! to skip (the server's ordinary logging), or invalid with a reason that names the
//! field (`timestamp: not RFC 3339: "yesterday"`). Unknown fields of an event are kept.
//!
//! Decoding does not build a JSON tree: it splits the event object into its top-level
//! `(key, raw value)` pairs, validates the five known fields, and re-emits the pairs
//! compactly as the stored body. That keeps a ~600-byte line at about a microsecond.

use crate::config::Envelope;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use uuid::Uuid;

pub use crate::timestamp::{format_timestamp_ms, parse_timestamp_ms};

/// Longest `action` accepted, in characters.
pub const MAX_ACTION_CHARS: usize = 128;
/// Longest `organizationId` / `actorId` accepted, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// A validated audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: Uuid,
    /// The event's `timestamp` in UTC milliseconds since the Unix epoch (the text as
    /// the emitter wrote it stays in the body).
    pub ts_ms: i64,
    pub action: String,
    pub organization_id: String,
    pub actor_id: String,
    /// The event as compact JSON: every field as given, in the given order, with `args`
    /// as a JSON array (never as a string).
    pub body: String,
    /// [`crate::integrity::content_digest`] of the fields above, computed here (on the
    /// source's thread) so the spool writer only links it into the chain.
    pub digest: [u8; 32],
}

/// What one record turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Event(Event),
    /// Not an audit event (ordinary server logging): skipped and counted.
    Skipped,
    /// An audit record that cannot be stored: quarantined with this reason.
    Invalid(Invalid),
}

/// Why a record cannot be stored.
///
/// The reason names the field and what is wrong with it, never the input itself, so it
/// may be logged; the offending value, which is input (it may hold an event's `args`),
/// is kept apart and only stored, with the raw bytes, in the quarantine table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The field and the kind of problem, e.g. `id: not a UUID`.
    pub reason: String,
    /// The offending value (or a parser's message that may quote it), shown capped.
    pub value: Option<String>,
}

impl Invalid {
    fn with_value(reason: impl Into<String>, value: impl Into<String>) -> Invalid {
        Invalid {
            reason: reason.into(),
            value: Some(value.into()),
        }
    }
}

impl From<String> for Invalid {
    fn from(reason: String) -> Invalid {
        Invalid {
            reason,
            value: None,
        }
    }
}

impl From<&str> for Invalid {
    fn from(reason: &str) -> Invalid {
        Invalid::from(reason.to_string())
    }
}

/// The stored form: the reason, then the value (`id: not a UUID: "nope"`).
impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}: {v}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// A member's name, borrowed from the input when it holds no escape sequence (serde's
/// own `Cow<str>` always copies).
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// The top-level members of a JSON object, in order, values left unparsed.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

/// Collects an object's members; with `payload`, a member named `payload` whose value is
/// an object is split into its own members in the same pass (a server log line's event
/// is then read once, not skipped over and parsed again).
fn visit_members<'de, A: MapAccess<'de>>(
    map: &mut A,
    mut payload: Option<&mut Vec<Payload<'de>>>,
) -> Result<Members<'de>, A::Error> {
    let mut v = Vec::with_capacity(8);
    while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
        match payload.as_deref_mut() {
            Some(found) if k == "payload" => found.push(map.next_value::<Payload<'de>>()?),
            _ => v.push((k, map.next_value::<&'de RawValue>()?)),
        }
    }
    Ok(Members(v))
}

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'a>, A::Error> {
                visit_members(&mut map, None)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Maps a JSON parse failure to the reason that names it; serde_json's messages may
/// quote the input ("invalid type: string \"…\""), so they are the value, not the reason.
fn parse_failure(e: serde_json::Error) -> Invalid {
    if e.is_data() {
        Invalid::with_value("not a JSON object", e.to_string())
    } else {
        Invalid::with_value("not valid JSON", e.to_string())
    }
}

impl<'a> Members<'a> {
    fn parse(text: &'a str) -> Result<Self, Invalid> {
        serde_json::from_str(text).map_err(parse_failure)
    }

    /// The one value of `key`; a repeated key is refused, as JSON readers disagree on
    /// which copy wins.
    fn get(&self, key: &str) -> Result<Option<&'a RawValue>, Invalid> {
        let mut found = None;
        for (k, v) in &self.0 {
            if k == key {
                if found.is_some() {
                    return Err(format!("{key}: appears more than once").into());
                }
                found = Some(*v);
            }
        }
        Ok(found)
    }

    fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }
}

/// A log line's `payload`: the event object's members, or what else it was.
enum Payload<'a> {
    Object(Members<'a>),
    /// Not an object: its kind, for the reason (`"an array"`).
    Other(&'static str),
}

impl<'de: 'a, 'a> Deserialize<'de> for Payload<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Payload<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Payload<'a>, A::Error> {
                visit_members(&mut map, None).map(Payload::Object)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Payload<'a>, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Payload::Other("an array"))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Payload<'a>, E> {
                Ok(Payload::Other("a string"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Payload<'a>, E> {
                Ok(Payload::Other("a boolean"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Payload<'a>, E> {
                Ok(Payload::Other("null"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Payload<'a>, E> {
                Ok(Payload::Other("a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Payload<'a>, E> {
                Ok(Payload::Other("a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Payload<'a>, E> {
                Ok(Payload::Other("a number"))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A line's top-level members, its `payload` members apart (every copy, so that a
/// repeated one is refused as any repeated key is).
struct Line<'a> {
    members: Members<'a>,
    payloads: Vec<Payload<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Line<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Line<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Line<'a>, A::Error> {
                let mut payloads = Vec::new();
                let members = visit_members(&mut map, Some(&mut payloads))?;
                Ok(Line { members, payloads })
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<'a> Line<'a> {
    fn parse(text: &'a str) -> Result<Self, Invalid> {
        serde_json::from_str(text).map_err(parse_failure)
    }

    fn has(&self, key: &str) -> bool {
        self.members.has(key) || (key == "payload" && !self.payloads.is_empty())
    }

    fn payload(&self) -> Result<Option<&Payload<'a>>, Invalid> {
        match self.payloads.as_slice() {
            [] => Ok(None),
            [p] => Ok(Some(p)),
            _ => Err("payload: appears more than once".into()),
        }
    }
}

fn kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// Quotes a value for an error message, cut to 64 characters.
fn shown(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{:?}…", &s[..i]),
        None => format!("{s:?}"),
    }
}

fn string_field<'a>(m: &Members<'a>, key: &str) -> Result<Cow<'a, str>, Invalid> {
    let raw = m.get(key)?.ok_or_else(|| format!("{key}: missing"))?;
    let text = raw.get();
    if !text.starts_with('"') {
        return Err(format!("{key}: expected a string, got {}", kind(raw)).into());
    }
    // The parser has checked the string: without a backslash its text is its value.
    if !text.contains('\\') {
        return Ok(Cow::Borrowed(&text[1..text.len() - 1]));
    }
    serde_json::from_str::<String>(text)
        .map(Cow::Owned)
        .map_err(|e| Invalid::with_value(format!("{key}: not a valid JSON string"), e.to_string()))
}

/// An `organizationId` or `actorId`. One that reads as a UUID in any of its forms
/// (upper case, braced, `urn:uuid:`, without hyphens) is stored in the canonical form,
/// lower case with hyphens, so that every comparison (API scope, filters, verify) is
/// exact; any other identifier is kept as written.
fn id_field(m: &Members, key: &str) -> Result<String, Invalid> {
    let v = string_field(m, key)?.into_owned();
    let n = v.chars().count();
    if n == 0 || n > MAX_ID_CHARS {
        return Err(format!("{key}: must be 1 to {MAX_ID_CHARS} characters, got {n}").into());
    }
    Ok(canonical_id(v))
}

/// The canonical form of an identifier: a UUID's lower-case hyphenated text, or the
/// identifier itself when it is not a UUID.
pub fn canonical_id(v: String) -> String {
    match Uuid::try_parse(&v) {
        Ok(u) if !is_canonical(&v) => u.hyphenated().to_string(),
        _ => v,
    }
}

fn is_canonical(v: &str) -> bool {
    v.len() == 36 && !v.bytes().any(|b| b.is_ascii_uppercase())
}

/// Validates an event object and builds its stored form.
///
/// The body keeps every field as written, in order, except that `args` becomes the
/// array itself and `id`, `organizationId` and `actorId` are in their canonical form
/// (see [`canonical_id`]): one stored form per identifier.
fn event_from(text: &str) -> Result<Event, Invalid> {
    event_from_members(&Members::parse(text)?)
}

/// [`event_from`] over members already split.
fn event_from_members(m: &Members) -> Result<Event, Invalid> {
    let id_s = string_field(m, "id")?;
    let id =
        Uuid::try_parse(&id_s).map_err(|_| Invalid::with_value("id: not a UUID", shown(&id_s)))?;
    let timestamp = string_field(m, "timestamp")?;
    let ts_ms = parse_timestamp_ms(&timestamp)
        .ok_or_else(|| Invalid::with_value("timestamp: not RFC 3339", shown(&timestamp)))?;
    let action = string_field(m, "action")?.into_owned();
    let n = action.chars().count();
    if n == 0 || n > MAX_ACTION_CHARS {
        return Err(format!("action: must be 1 to {MAX_ACTION_CHARS} characters, got {n}").into());
    }
    let organization_id = id_field(m, "organizationId")?;
    let actor_id = id_field(m, "actorId")?;
    let args_raw = m.get("args")?.ok_or("args: missing")?;
    // The API form carries args as a string holding the array; normalize to the array.
    let unquoted: String;
    let args: &str = match args_raw.get().as_bytes()[0] {
        b'[' => args_raw.get(),
        b'"' => {
            let inner: String = serde_json::from_str(args_raw.get())
                .map_err(|e| Invalid::with_value("args: not a valid JSON string", e.to_string()))?;
            let arr: &RawValue = serde_json::from_str(&inner).map_err(|_| {
                Invalid::with_value(
                    "args: a string that does not hold a JSON array",
                    shown(&inner),
                )
            })?;
            if !arr.get().starts_with('[') {
                return Err(
                    format!("args: a string that holds {}, not a JSON array", kind(arr)).into(),
                );
            }
            unquoted = arr.get().to_string();
            &unquoted
        }
        _ => {
            return Err(format!(
                "args: expected a JSON array or a string holding one, got {}",
                kind(args_raw)
            )
            .into())
        }
    };
    let id_text = if is_canonical(&id_s) {
        id_s
    } else {
        Cow::Owned(id.hyphenated().to_string())
    };
    // The body is the members as written (ids aside): size it for them, no more (the
    // spool writer holds thousands of bodies while a group commit is open).
    let size = 2 + m
        .0
        .iter()
        .map(|(k, v)| k.len() + 4 + v.get().len())
        .sum::<usize>();
    let mut body = String::with_capacity(size);
    body.push('{');
    for (i, (k, v)) in m.0.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        match k {
            // Borrowed: the parser found no escape in it, and a JSON string holds no
            // raw quote or control; its text is its JSON.
            Cow::Borrowed(name) => {
                body.push('"');
                body.push_str(name);
                body.push('"');
            }
            Cow::Owned(name) => push_json_string(&mut body, name),
        }
        body.push(':');
        match k.as_ref() {
            "args" => body.push_str(args),
            "id" => push_json_string(&mut body, &id_text),
            "organizationId" => push_json_string(&mut body, &organization_id),
            "actorId" => push_json_string(&mut body, &actor_id),
            _ => body.push_str(v.get()),
        }
    }
    body.push('}');
    let digest = crate::integrity::content_digest(&crate::integrity::Canonical {
        seq: 0,
        ts_ms,
        id: id.as_bytes(),
        organization_id: &organization_id,
        actor: &actor_id,
        action: &action,
        body: &body,
    });
    Ok(Event {
        id,
        ts_ms,
        action,
        organization_id,
        actor_id,
        body,
        digest,
    })
}

/// Appends `s` as a JSON string; one that needs no escape is copied as it is.
fn push_json_string(body: &mut String, s: &str) {
    if crate::json::find_escape(s.as_bytes()).is_some() {
        let mut escaped = Vec::with_capacity(s.len() + 8);
        crate::json::write_str(&mut escaped, s);
        body.push_str(std::str::from_utf8(&escaped).expect("escaping keeps UTF-8"));
    } else {
        body.push('"');
        body.push_str(s);
        body.push('"');
    }
}

/// Decodes one record under the configured envelope.
pub fn decode(record: &[u8], envelope: Envelope) -> Decoded {
    let text = match std::str::from_utf8(record) {
        Ok(t) => t,
        Err(e) => {
            return Decoded::Invalid(
                format!(
                    "not valid UTF-8: invalid byte sequence at byte {}",
                    e.valid_up_to()
                )
                .into(),
            )
        }
    };
    match decode_str(text, envelope) {
        Ok(Some(ev)) => Decoded::Event(ev),
        Ok(None) => Decoded::Skipped,
        Err(reason) => Decoded::Invalid(reason),
    }
}

/// The fields every audit event has; `envelope = "auto"` goes by them.
pub const EVENT_FIELDS: [&str; 6] = [
    "id",
    "timestamp",
    "action",
    "organizationId",
    "actorId",
    "args",
];

fn decode_str(text: &str, envelope: Envelope) -> Result<Option<Event>, Invalid> {
    match envelope {
        Envelope::Event => event_from(text).map(Some),
        Envelope::ServerLog => server_log(&Line::parse(text)?),
        Envelope::Auto => {
            // Decided by the event's own fields, not by log-line keys: a bare event may
            // well carry a `message` or `severity` of its own. A server log line wraps its
            // event in `payload`, so it has none of the event's fields at the top.
            let line = Line::parse(text)?;
            let own = EVENT_FIELDS.iter().filter(|k| line.members.has(k)).count();
            let wrapper = ["message", "severity", "payload", "payloadStub"]
                .iter()
                .any(|k| line.has(k));
            if own >= EVENT_FIELDS.len() / 2 || !wrapper {
                event_from(text).map(Some)
            } else {
                server_log(&line)
            }
        }
    }
}

/// A server log line: the event in `payload` of a line whose `message` is `audit`;
/// every other line is ordinary logging, skipped.
fn server_log(line: &Line) -> Result<Option<Event>, Invalid> {
    let message = line.members.get("message")?;
    if message.map(|v| v.get()) != Some("\"audit\"") {
        return Ok(None);
    }
    match line.payload()? {
        Some(Payload::Object(m)) => event_from_members(m).map(Some),
        Some(Payload::Other(kind)) => Err(format!("payload: expected an object, got {kind}").into()),
        None if line.has("payloadStub") => Err(
            "payload: replaced by payloadStub (the line was over 32 KiB at the emitter); the event cannot be recovered"
                .into(),
        ),
        None => Err("payload: missing".into()),
    }
}

/// An event in the platform API's form: `args` is the JSON array serialized as a
/// string, `timestamp` is normalized to UTC with milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiAuditLog {
    pub id: String,
    pub timestamp: String,
    pub action: String,
    pub organization_id: String,
    pub actor_id: String,
    pub args: String,
}

/// The members of a stored body that the API's form needs, read in one pass (a stored
/// body is [`decode`]'s output: these members once each, strings where strings belong).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredMembers<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(borrow)]
    organization_id: Cow<'a, str>,
    #[serde(borrow)]
    actor_id: Cow<'a, str>,
    #[serde(borrow)]
    args: Option<&'a RawValue>,
}

/// The members `T` of a stored body, read in one pass.
fn stored_members<'a, T: Deserialize<'a>>(body: &'a str) -> Result<T, String> {
    // serde's derived structs also read arrays; a stored body is always an object.
    if !body.trim_start().starts_with('{') {
        return Err("not a JSON object".into());
    }
    serde_json::from_str(body).map_err(|e| e.to_string())
}

impl ApiAuditLog {
    /// Builds the API form from a stored body. Fails only if the body was not written
    /// by [`decode`] (a corrupted spool): not a JSON object, a member missing, repeated
    /// or of the wrong type.
    pub fn from_body(body: &str, ts_ms: i64) -> Result<Self, String> {
        let m: StoredMembers = stored_members(body)?;
        Ok(ApiAuditLog {
            id: m.id.into_owned(),
            timestamp: format_timestamp_ms(ts_ms),
            action: m.action.into_owned(),
            organization_id: m.organization_id.into_owned(),
            actor_id: m.actor_id.into_owned(),
            args: m.args.map_or_else(|| "[]".into(), |a| a.get().to_string()),
        })
    }
}

/// The members of a stored body that the API's JSON form needs, as their JSON text.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredJson<'a> {
    #[serde(borrow)]
    id: &'a RawValue,
    #[serde(borrow)]
    action: &'a RawValue,
    #[serde(borrow)]
    organization_id: &'a RawValue,
    #[serde(borrow)]
    actor_id: &'a RawValue,
    #[serde(borrow)]
    args: Option<&'a RawValue>,
}

/// Appends the API's JSON form of a stored body to `out`: the same JSON value as
/// serialising [`ApiAuditLog::from_body`], written from the body's own JSON text (its
/// strings are copied as they are, already escaped; `args` is escaped into a string)
/// without building the strings. Fails as `from_body` does; `out` then holds part of
/// the event.
pub fn write_api_json(body: &str, ts_ms: i64, out: &mut Vec<u8>) -> Result<(), String> {
    let m: StoredJson = stored_members(body)?;
    for (name, v) in [
        ("id", m.id),
        ("action", m.action),
        ("organizationId", m.organization_id),
        ("actorId", m.actor_id),
    ] {
        if !v.get().starts_with('"') {
            return Err(format!("member {name} is not a string"));
        }
    }
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(m.id.get().as_bytes());
    out.extend_from_slice(b",\"timestamp\":\"");
    out.extend_from_slice(format_timestamp_ms(ts_ms).as_bytes());
    out.extend_from_slice(b"\",\"action\":");
    out.extend_from_slice(m.action.get().as_bytes());
    out.extend_from_slice(b",\"organizationId\":");
    out.extend_from_slice(m.organization_id.get().as_bytes());
    out.extend_from_slice(b",\"actorId\":");
    out.extend_from_slice(m.actor_id.get().as_bytes());
    out.extend_from_slice(b",\"args\":");
    crate::json::write_str(out, m.args.map_or("[]", |a| a.get()));
    out.push(b'}');
    Ok(())
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&RawValue>::deserialize(d)?;
        event_from(raw.get()).map_err(|e| de::Error::custom(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EVENT: &str = r#"{"id":"1ac75456-ae7d-4233-9914-32d124fa35c3","timestamp":"2024-06-24T13:29:36.484Z","action":"getTeamProjects","organizationId":"3d5e4ee2-7e5f-468f-b027-276a65518784","actorId":"e2eb4315-1ce5-4c5b-b1a1-d6a891c08a56","args":["3d5e4ee2-7e5f-468f-b027-276a65518784"]}"#;

    /// The JSON the API writes from a stored body is the JSON value of `from_body`'s
    /// struct, member for member and in its order, for the bodies `decode` stores, and
    /// fails on the same corrupt bodies.
    #[test]
    fn api_json_written_from_a_stored_body_is_from_body_serialised() {
        let ok = [
            r#"{"id":"a","timestamp":"x","action":"b\"q\\","organizationId":"o","actorId":"u\u00e9\n","args":["x\"y",{"k":[1,2.5e3,null]}],"extra":{"n":1}}"#,
            r#"{"organizationId":"o","actorId":"","action":"","id":"\ud83d\ude00"}"#,
            r#"  {"id":"i","action":"a","organizationId":"o","actorId":"u","args":[]}"#,
        ];
        for body in ok {
            let mut out = Vec::new();
            write_api_json(body, 1_719_235_776_484, &mut out).unwrap();
            let want =
                serde_json::to_value(ApiAuditLog::from_body(body, 1_719_235_776_484).unwrap())
                    .unwrap();
            let got: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(got, want, "{body}");
            let keys: Vec<_> = got.as_object().unwrap().keys().cloned().collect();
            let want_keys: Vec<_> = want.as_object().unwrap().keys().cloned().collect();
            assert_eq!(keys, want_keys);
        }
        // A body `decode` wrote: byte for byte what serde writes.
        let body = r#"{"id":"1","timestamp":"t","action":"a","organizationId":"o","actorId":"u","args":["x\"y"]}"#;
        let mut out = Vec::new();
        write_api_json(body, 0, &mut out).unwrap();
        assert_eq!(
            out,
            serde_json::to_vec(&ApiAuditLog::from_body(body, 0).unwrap()).unwrap()
        );
        for bad in [
            "[1]",
            "nope",
            r#"{"id":1,"action":"a","organizationId":"o","actorId":"u"}"#,
            r#"{"id":"i","action":"a","organizationId":"o"}"#,
            r#"{"id":"i","id":"j","action":"a","organizationId":"o","actorId":"u"}"#,
            r#"{"id":"i","action":"a","organizationId":"o","actorId":"u""#,
        ] {
            assert!(ApiAuditLog::from_body(bad, 0).is_err(), "{bad}");
            assert!(write_api_json(bad, 0, &mut Vec::new()).is_err(), "{bad}");
        }
    }

    fn server_line(payload: &str) -> String {
        format!(
            r#"{{"component":"server","severity":"INFO","time":"2024-06-24T13:29:36.485Z","context":{{"requestId":"r","requestKind":"jsonrpc","requestMethod":"getTeamProjects","traceId":"t","userId":"u"}},"message":"audit","payload":{payload}}}"#
        )
    }

    fn invalid(line: &str, env: Envelope) -> String {
        match decode(line.as_bytes(), env) {
            Decoded::Invalid(r) => r.to_string(),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    fn event(line: &str, env: Envelope) -> Event {
        match decode(line.as_bytes(), env) {
            Decoded::Event(e) => e,
            other => panic!("expected event, got {other:?}"),
        }
    }

    #[test]
    fn bare_event_decodes() {
        let e = event(EVENT, Envelope::Event);
        assert_eq!(e.id.to_string(), "1ac75456-ae7d-4233-9914-32d124fa35c3");
        assert_eq!(e.ts_ms, 1_719_235_776_484);
        assert_eq!(e.action, "getTeamProjects");
        assert_eq!(e.body, EVENT);
        assert_eq!(event(EVENT, Envelope::Auto), e);
    }

    #[test]
    fn server_log_lines_carry_events_or_are_skipped() {
        let e = event(&server_line(EVENT), Envelope::ServerLog);
        assert_eq!(e.body, EVENT);
        assert_eq!(event(&server_line(EVENT), Envelope::Auto), e);
        let other = r#"{"component":"server","severity":"INFO","message":"workspace started","payload":{"x":1}}"#;
        assert_eq!(
            decode(other.as_bytes(), Envelope::ServerLog),
            Decoded::Skipped
        );
        assert_eq!(decode(other.as_bytes(), Envelope::Auto), Decoded::Skipped);
        let stub = r#"{"component":"server","message":"audit","payloadStub":"too big"}"#;
        assert!(invalid(stub, Envelope::Auto).starts_with("payload: replaced by payloadStub"));
    }

    #[test]
    fn a_payload_that_is_no_single_object_is_named() {
        for (payload, kind) in [
            ("[1,{\"a\":2}]", "an array"),
            ("\"text\"", "a string"),
            ("12.5", "a number"),
            ("-3", "a number"),
            ("true", "a boolean"),
            ("null", "null"),
        ] {
            for env in [Envelope::ServerLog, Envelope::Auto] {
                assert_eq!(
                    invalid(&server_line(payload), env),
                    format!("payload: expected an object, got {kind}")
                );
            }
        }
        let twice = server_line(EVENT).replace("}}", &format!("}},\"payload\":{EVENT}}}"));
        assert_eq!(
            invalid(&twice, Envelope::ServerLog),
            "payload: appears more than once"
        );
        // A line that is not an audit event is skipped whatever its payload holds.
        let other = server_line("[1,2]").replace("\"audit\"", "\"started\"");
        assert_eq!(decode(other.as_bytes(), Envelope::Auto), Decoded::Skipped);
        // A broken payload breaks the line, as before it was split in the same pass.
        let broken = server_line("{\"id\":}");
        assert!(invalid(&broken, Envelope::ServerLog).starts_with("not valid JSON: "));
    }

    #[test]
    fn escaped_names_and_values_are_stored_in_one_form() {
        // A member name or value written with escapes is stored unescaped where JSON
        // allows and escaped where it must be, whether it came bare or in a log line.
        let line = EVENT
            .replace("\"action\"", "\"act\\u0069on\"")
            .replace("getTeamProjects", "get\\u0054eam\\\"Projects")
            .replace("{\"id\"", "{\"we\\\"ird\\n\":1,\"id\"");
        let bare = event(&line, Envelope::Event);
        assert_eq!(bare.action, "getTeam\"Projects");
        assert!(bare
            .body
            .starts_with("{\"we\\\"ird\\n\":1,\"id\":\"1ac75456-ae7d-4233-9914-32d124fa35c3\""));
        assert!(bare
            .body
            .contains("\"action\":\"get\\u0054eam\\\"Projects\""));
        assert_eq!(event(&server_line(&line), Envelope::ServerLog), bare);
        assert_eq!(event(&server_line(&line), Envelope::Auto), bare);
    }

    #[test]
    fn args_as_string_is_normalized_to_the_array() {
        let api = EVENT.replace(
            r#""args":["3d5e4ee2-7e5f-468f-b027-276a65518784"]"#,
            r#""args":"[\"3d5e4ee2-7e5f-468f-b027-276a65518784\"]""#,
        );
        assert_eq!(event(&api, Envelope::Event).body, EVENT);
    }

    #[test]
    fn unknown_fields_are_kept_in_order() {
        let line = EVENT.replace("{\"id\"", "{\"zone\":{\"a\":[1,2]},\"id\"");
        assert!(event(&line, Envelope::Event)
            .body
            .starts_with("{\"zone\":{\"a\":[1,2]},\"id\""));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "\"id\":\"1ac75456-ae7d-4233-9914-32d124fa35c3\"",
                "\"id\":\"nope\"",
                "id: not a UUID: \"nope\"",
            ),
            (
                "\"id\":\"1ac75456-ae7d-4233-9914-32d124fa35c3\",",
                "",
                "id: missing",
            ),
            (
                "\"id\":\"1ac75456-ae7d-4233-9914-32d124fa35c3\"",
                "\"id\":42",
                "id: expected a string, got a number",
            ),
            (
                "\"2024-06-24T13:29:36.484Z\"",
                "\"yesterday\"",
                "timestamp: not RFC 3339: \"yesterday\"",
            ),
            (
                "\"action\":\"getTeamProjects\"",
                "\"action\":\"\"",
                "action: must be 1 to 128 characters, got 0",
            ),
            (
                "\"action\":\"getTeamProjects\"",
                "\"action\":null",
                "action: expected a string, got null",
            ),
            (
                "\"actorId\":\"e2eb4315-1ce5-4c5b-b1a1-d6a891c08a56\",",
                "",
                "actorId: missing",
            ),
            (
                "\"organizationId\":\"3d5e4ee2-7e5f-468f-b027-276a65518784\"",
                "\"organizationId\":[]",
                "organizationId: expected a string, got an array",
            ),
            (
                "[\"3d5e4ee2-7e5f-468f-b027-276a65518784\"]",
                "{}",
                "args: expected a JSON array or a string holding one, got an object",
            ),
            (
                "[\"3d5e4ee2-7e5f-468f-b027-276a65518784\"]",
                "\"oops\"",
                "args: a string that does not hold a JSON array: \"oops\"",
            ),
            (
                "\"id\":",
                "\"id\":\"1ac75456-ae7d-4233-9914-32d124fa35c3\",\"id\":",
                "id: appears more than once",
            ),
        ];
        for (from, to, want) in cases {
            let line = EVENT.replacen(from, to, 1);
            assert_ne!(line, EVENT, "case {want} did not change the line");
            assert_eq!(invalid(&line, Envelope::Event), *want);
        }
        let long = EVENT.replace("getTeamProjects", &"x".repeat(129));
        assert_eq!(
            invalid(&long, Envelope::Event),
            "action: must be 1 to 128 characters, got 129"
        );
        assert!(invalid("{\"id\":", Envelope::Event).starts_with("not valid JSON"));
        assert!(invalid("[1,2]", Envelope::Auto).starts_with("not a JSON object"));
        assert!(
            invalid(&server_line("[1]"), Envelope::Auto).starts_with("payload: expected an object")
        );
        assert_eq!(
            decode(b"{\"id\":\"\xff\"}", Envelope::Event),
            Decoded::Invalid("not valid UTF-8: invalid byte sequence at byte 7".into())
        );
    }

    #[test]
    fn identifiers_are_stored_in_one_canonical_form() {
        let id = "1ac75456-ae7d-4233-9914-32d124fa35c3";
        let org = "3d5e4ee2-7e5f-468f-b027-276a65518784";
        let forms = [
            (id.to_uppercase(), org.to_uppercase()),
            (format!("{{{id}}}"), format!("urn:uuid:{org}")),
            (id.replace('-', ""), org.replace('-', "").to_uppercase()),
        ];
        for (i, o) in forms {
            let line = EVENT.replace(id, &i).replace(
                &format!("\"organizationId\":\"{org}\""),
                &format!("\"organizationId\":\"{o}\""),
            );
            assert_ne!(line, EVENT);
            let e = event(&line, Envelope::Event);
            assert_eq!(e.body, EVENT, "{i} / {o}");
            assert_eq!(e.organization_id, org);
            assert_eq!(e, event(EVENT, Envelope::Event));
        }
        // An identifier that is not a UUID is kept exactly as written.
        let other = EVENT.replace(
            "\"actorId\":\"e2eb4315-1ce5-4c5b-b1a1-d6a891c08a56\"",
            "\"actorId\":\"Service-Account-7\"",
        );
        assert_eq!(event(&other, Envelope::Event).actor_id, "Service-Account-7");
        assert_eq!(event(&other, Envelope::Event).body, other);
    }

    #[test]
    fn auto_goes_by_the_events_own_fields() {
        // A bare event that carries keys of its own named like log-line keys.
        let with_message = EVENT.replace(
            "{\"id\"",
            "{\"message\":\"hi\",\"severity\":\"INFO\",\"id\"",
        );
        assert_eq!(event(&with_message, Envelope::Auto).body, with_message);
        // Missing one field of six, it is still an event: quarantined, not skipped.
        let no_args =
            with_message.replace(",\"args\":[\"3d5e4ee2-7e5f-468f-b027-276a65518784\"]", "");
        assert_eq!(invalid(&no_args, Envelope::Auto), "args: missing");
        // Ordinary logging with none of the event's fields is still skipped.
        let plain =
            r#"{"severity":"INFO","message":"audit-ish","component":"server","action":"x"}"#;
        assert_eq!(decode(plain.as_bytes(), Envelope::Auto), Decoded::Skipped);
    }

    #[test]
    fn reasons_never_carry_the_input() {
        let secret = "s3cr3t-token-value";
        let cases = [
            EVENT.replace(
                "\"id\":\"1ac75456-ae7d-4233-9914-32d124fa35c3\"",
                &format!("\"id\":\"{secret}\""),
            ),
            EVENT.replace("2024-06-24T13:29:36.484Z", secret),
            EVENT.replace(
                "[\"3d5e4ee2-7e5f-468f-b027-276a65518784\"]",
                &format!("\"{secret}\""),
            ),
            format!("[\"{secret}\"]"),
            format!("{{\"id\": \"{secret}"),
        ];
        for line in cases {
            let Decoded::Invalid(why) = decode(line.as_bytes(), Envelope::Auto) else {
                panic!("{line}: expected invalid");
            };
            assert!(!why.reason.contains(secret), "{line}: {}", why.reason);
            assert!(!why.reason.is_empty());
        }
        // The stored form keeps the value for the operator.
        let Decoded::Invalid(why) = decode(
            EVENT.replace("2024-06-24T13:29:36.484Z", secret).as_bytes(),
            Envelope::Event,
        ) else {
            panic!()
        };
        assert_eq!(
            why.to_string(),
            format!("timestamp: not RFC 3339: \"{secret}\"")
        );
    }

    #[test]
    fn api_form_serializes_args_as_a_string() {
        let e = event(EVENT, Envelope::Event);
        let api = ApiAuditLog::from_body(&e.body, e.ts_ms).unwrap();
        assert_eq!(api.args, "[\"3d5e4ee2-7e5f-468f-b027-276a65518784\"]");
        assert_eq!(api.timestamp, "2024-06-24T13:29:36.484Z");
        let json = serde_json::to_string(&api).unwrap();
        assert!(json.contains("\"organizationId\":\"3d5e4ee2"));
    }

    #[test]
    fn the_api_form_refuses_a_body_decode_never_writes() {
        let e = event(EVENT, Envelope::Event);
        let escaped = e.body.replace("getTeamProjects", "get\\u0054eamProjects");
        assert_eq!(
            ApiAuditLog::from_body(&escaped, e.ts_ms).unwrap().action,
            "getTeamProjects",
            "escapes are read"
        );
        let repeated = e.body.replacen("{", "{\"action\":\"x\",", 1);
        let wrong = e.body.replace(
            "\"actorId\":\"e2eb4315-1ce5-4c5b-b1a1-d6a891c08a56\"",
            "\"actorId\":7",
        );
        let missing = e.body.replace("\"id\":", "\"ix\":");
        for (body, why) in [
            (repeated.as_str(), "duplicate field `action`"),
            (wrong.as_str(), "invalid type: integer `7`"),
            (missing.as_str(), "missing field `id`"),
            ("[\"i\", \"a\", \"o\", \"a\", []]", "not a JSON object"),
            ("{\"id\":", "EOF while parsing"),
        ] {
            let err = ApiAuditLog::from_body(body, e.ts_ms).unwrap_err();
            assert!(err.contains(why), "{body}: {err}");
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes, Envelope::Auto);
        }

        #[test]
        fn valid_events_roundtrip_through_the_api_form(
            action in "[a-zA-Z./]{1,128}",
            org in "[a-f0-9-]{1,40}",
            args in proptest::collection::vec("[ -~]{0,20}", 0..5),
            ms in 0i64..4_000_000_000_000,
        ) {
            let id = Uuid::from_u128(ms as u128 * 7919);
            let line = serde_json::json!({
                "id": id.to_string(), "timestamp": format_timestamp_ms(ms), "action": action,
                "organizationId": org, "actorId": "a", "args": args,
            }).to_string();
            let e = match decode(line.as_bytes(), Envelope::Auto) {
                Decoded::Event(e) => e,
                other => return Err(TestCaseError::fail(format!("{other:?}"))),
            };
            prop_assert_eq!(e.ts_ms, ms);
            let api = ApiAuditLog::from_body(&e.body, e.ts_ms).unwrap();
            let back: Vec<String> = serde_json::from_str(&api.args).unwrap();
            prop_assert_eq!(back, args);
            prop_assert_eq!(api.action, action);
        }
    }
}
