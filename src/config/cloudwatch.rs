//! `[cloudwatch]`: forwarding the spool to CloudWatch Logs.

use super::{ByteSize, HumanDuration, Problem};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Retention values CloudWatch Logs accepts, in days.
pub const RETENTION_DAYS: [i32; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// The AWS regions this build knows (commercial, GovCloud, China, ISO partitions), as
/// of its writing. A name of the right form that is not here is refused unless
/// `endpoint` is set (see [`region`]).
pub const KNOWN_REGIONS: [&str; 44] = [
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "cn-north-1",
    "cn-northwest-1",
    "eu-central-1",
    "eu-central-2",
    "eu-isoe-west-1",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "mx-central-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-gov-east-1",
    "us-gov-west-1",
    "us-iso-east-1",
    "us-iso-west-1",
    "us-isob-east-1",
    "us-isof-east-1",
    "us-isof-south-1",
    "us-west-1",
    "us-west-2",
];

/// Checks a region name: its form (`<area>[-<partition>]-<direction>-<number>`, e.g.
/// `us-east-1`, `us-gov-west-1`), then that it is one of [`KNOWN_REGIONS`]. With an
/// endpoint override (an emulator, or the endpoint of a region newer than this build)
/// only the form is checked.
pub fn region(r: &str, endpoint_set: bool) -> Result<(), String> {
    const DIRECTIONS: [&str; 9] = [
        "north",
        "south",
        "east",
        "west",
        "central",
        "northeast",
        "northwest",
        "southeast",
        "southwest",
    ];
    let parts: Vec<&str> = r.split('-').collect();
    let well_formed = match parts.as_slice() {
        [area, middle @ .., direction, number] => {
            area.len() == 2
                && area.bytes().all(|b| b.is_ascii_lowercase())
                && middle.len() <= 1
                && middle
                    .iter()
                    .all(|m| ["gov", "iso", "isob", "isoe", "isof"].contains(m))
                && DIRECTIONS.contains(direction)
                && !number.is_empty()
                && number.len() <= 2
                && number.bytes().all(|b| b.is_ascii_digit())
                && !number.starts_with('0')
        }
        _ => false,
    };
    if !well_formed {
        return Err(format!(
            "{r:?} is not an AWS region name (the form is like us-east-1, eu-west-2, us-gov-west-1)"
        ));
    }
    if !endpoint_set && !KNOWN_REGIONS.contains(&r) {
        return Err(format!(
            "{r:?} is not an AWS region this build knows; check the name (e.g. eu-west-1). A region newer than this build: set cloudwatch.endpoint to its CloudWatch Logs endpoint (https://logs.{r}.amazonaws.com), then only the name's form is checked"
        ));
    }
    Ok(())
}

/// Event fields a static field may not shadow.
const EVENT_FIELDS: [&str; 8] = [
    "id",
    "timestamp",
    "action",
    "organizationId",
    "actorId",
    "args",
    "truncated",
    "type",
];

/// `[cloudwatch]`. Without this section events stay in the spool only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudWatchConfig {
    /// Forward at all. Default `true` when the section is present.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// AWS region. Default: the SDK's chain (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// Endpoint URL override, for emulators (e.g. `http://127.0.0.1:4566`).
    pub endpoint: Option<String>,
    /// Log group name. Required.
    pub log_group: String,
    /// Log stream name; `{hostname}`, `{pod}`, `{namespace}` are replaced from
    /// `HOSTNAME` (or the kernel's host name), `POD_NAME`, `POD_NAMESPACE`.
    /// Default `"{hostname}"`.
    #[serde(default = "default_stream")]
    pub log_stream: String,
    /// Create the log group when it does not exist. Default `true`.
    #[serde(default = "yes")]
    pub create_log_group: bool,
    /// Retention set on the log group, in days; one of the values CloudWatch allows.
    /// Default: not set (the group's own setting stays).
    pub retention_in_days: Option<i32>,
    /// KMS key ARN for a log group the relay creates. Optional.
    pub kms_key_id: Option<String>,
    /// Tags for a log group the relay creates.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Log class of a log group the relay creates: `"STANDARD"` or
    /// `"INFREQUENT_ACCESS"`. Default: not set (CloudWatch's default, STANDARD).
    pub log_group_class: Option<String>,
    /// Turn on deletion protection for a log group the relay creates. Default `false`.
    #[serde(default)]
    pub deletion_protection: bool,
    /// Fields of the group's field index policy (PutIndexPolicy), set whenever the relay
    /// ensures a group it may create (`create_log_group`), like `retention_in_days`.
    /// E.g. `["organizationId", "actorId", "action", "id"]`. Default: none (no call).
    #[serde(default)]
    pub field_index: Vec<String>,
    /// Fields added to every message (e.g. `cluster = "eu-1"`).
    #[serde(default)]
    pub static_fields: BTreeMap<String, String>,
    /// A batch is sent when full or when its first event has waited this long.
    /// Default `"1s"`, between 10ms and 60s.
    #[serde(default = "default_batch_wait")]
    pub max_batch_wait: HumanDuration,
    /// Largest message sent whole (bytes, plus 26 of overhead); a larger event is sent
    /// as a stub with its identifying fields and `"truncated": true`. Default `"1MiB"`
    /// (AWS's limit today; `"256KiB"` on older setups).
    #[serde(default = "default_max_event")]
    pub max_event_bytes: ByteSize,
    /// Role to assume with STS on top of the default credentials. Optional.
    pub assume_role_arn: Option<String>,
    /// External id for `assume_role_arn`. Optional.
    pub external_id: Option<String>,
    /// Time to establish a connection. Default `"5s"`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Time for one call, answer included. Default `"30s"`.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// Longest wait between retries of a failing call. Default `"30s"`.
    #[serde(default = "default_backoff_max")]
    pub backoff_max: HumanDuration,
    /// Spread organizations over this many streams (`<log_stream>-0` …), by a hash of
    /// `organizationId`: each organization's order holds, throughput grows with one
    /// call in flight per stream. 1 to 64; default 1 (the stream is `log_stream`).
    #[serde(default = "one")]
    pub streams: u32,
    /// Wait before retrying after a credentials or permission error. Default `"60s"`.
    #[serde(default = "default_auth_retry")]
    pub auth_retry_interval: HumanDuration,
    /// The InvalidParameter breaker: when bisection reaches this many single events in a
    /// row that CloudWatch refuses the same way, the problem is the stream's, not the
    /// events': forwarding to that stream stops (nothing more is marked rejected, the
    /// cursor stays), `/readyz` fails, and one event is sent as a probe every
    /// `invalid_probe_interval` until one is accepted. 2 to 1000; default 5.
    #[serde(default = "default_invalid_breaker")]
    pub invalid_breaker_after: u32,
    /// How often a stopped stream (see `invalid_breaker_after`) is probed. Default `"60s"`.
    #[serde(default = "default_auth_retry")]
    pub invalid_probe_interval: HumanDuration,
    /// How far in the future CloudWatch takes an event. An event further ahead is held
    /// (not rejected) and sent in a call of its own once it is within this; only one
    /// more than 24 h beyond it is rejected as `too_new`. Default `"2h"` (AWS's rule
    /// today), between 1s and 2h.
    #[serde(default = "default_max_future")]
    pub max_future: HumanDuration,
}

fn default_max_future() -> HumanDuration {
    HumanDuration(Duration::from_secs(2 * 3600))
}

fn default_invalid_breaker() -> u32 {
    5
}

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn default_stream() -> String {
    "{hostname}".into()
}
fn default_batch_wait() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_max_event() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_backoff_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_auth_retry() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

/// The log classes a relay may create a group with (DELIVERY is for AWS's vended logs).
pub const LOG_GROUP_CLASSES: [&str; 2] = ["STANDARD", "INFREQUENT_ACCESS"];

/// Most fields a field index policy may hold (CloudWatch's limit today).
pub const MAX_INDEX_FIELDS: usize = 20;

/// The policy document of PutIndexPolicy for `fields`.
pub fn index_policy(fields: &[String]) -> String {
    serde_json::json!({ "Fields": fields }).to_string()
}

/// Where the stream template takes its values.
pub struct StreamVars {
    pub hostname: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
}

impl StreamVars {
    /// From `HOSTNAME` (else the kernel's host name), `POD_NAME`, `POD_NAMESPACE`.
    pub fn from_env() -> StreamVars {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        StreamVars {
            hostname: var("HOSTNAME").or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            }),
            pod: var("POD_NAME"),
            namespace: var("POD_NAMESPACE"),
        }
    }
}

/// Expands `{hostname}`, `{pod}`, `{namespace}` in a stream template.
pub fn expand_stream(template: &str, vars: &StreamVars) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in {template:?}"))?
            + open;
        let (value, env) = match &rest[open + 1..close] {
            "hostname" => (&vars.hostname, "HOSTNAME"),
            "pod" => (&vars.pod, "POD_NAME"),
            "namespace" => (&vars.namespace, "POD_NAMESPACE"),
            other => {
                return Err(format!(
                    "unknown placeholder {{{other}}}; use {{hostname}}, {{pod}} or {{namespace}}"
                ))
            }
        };
        let value = value.as_deref().ok_or_else(|| {
            format!(
                "{{{}}} needs the {env} environment variable",
                &rest[open + 1..close]
            )
        })?;
        out.push_str(value);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    if out.is_empty() || out.len() > 512 || out.contains([':', '*']) {
        return Err(format!(
            "stream name {out:?} must be 1 to 512 characters without ':' or '*'"
        ));
    }
    Ok(out)
}

/// Checks `[cloudwatch]`, naming each problem's key.
pub fn validate(c: &CloudWatchConfig, problems: &mut Vec<Problem>) {
    let mut bad = |key: &str, message: String| {
        problems.push(Problem {
            key: format!("cloudwatch.{key}"),
            message,
        })
    };
    let g = &c.log_group;
    if g.is_empty() {
        bad("log_group", "must not be empty".into());
    } else if g.len() > 512
        || !g
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "._-/#".contains(ch))
    {
        bad(
            "log_group",
            format!("{g:?} must be 1 to 512 characters of a-z, A-Z, 0-9, '.', '_', '-', '/', '#'"),
        );
    }
    // Syntax only: the variables are read at run time.
    let any = StreamVars {
        hostname: Some("h".into()),
        pod: Some("p".into()),
        namespace: Some("n".into()),
    };
    if let Err(e) = expand_stream(&c.log_stream, &any) {
        bad("log_stream", e);
    }
    if let Some(d) = c.retention_in_days {
        if !RETENTION_DAYS.contains(&d) {
            bad(
                "retention_in_days",
                format!(
                    "must be one of {RETENTION_DAYS:?} (the values CloudWatch accepts), got {d}"
                ),
            );
        }
    }
    if let Some(class) = &c.log_group_class {
        if !LOG_GROUP_CLASSES.contains(&class.as_str()) {
            bad(
                "log_group_class",
                format!("must be one of {LOG_GROUP_CLASSES:?}, got {class:?}"),
            );
        }
    }
    if !c.create_log_group {
        for (key, set) in [
            ("log_group_class", c.log_group_class.is_some()),
            ("deletion_protection", c.deletion_protection),
            ("field_index", !c.field_index.is_empty()),
        ] {
            if set {
                bad(
                    key,
                    "applies to a group the relay creates: needs cloudwatch.create_log_group = true".into(),
                );
            }
        }
    }
    if c.field_index.len() > MAX_INDEX_FIELDS {
        bad(
            "field_index",
            format!(
                "at most {MAX_INDEX_FIELDS} fields, got {}",
                c.field_index.len()
            ),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for f in &c.field_index {
        if f.is_empty() || f.len() > 100 || f.starts_with('@') {
            bad(
                "field_index",
                format!(
                    "{f:?} must be a message field name of 1 to 100 characters (not @-prefixed)"
                ),
            );
        } else if !seen.insert(f) {
            bad("field_index", format!("{f:?} is listed twice"));
        }
    }
    if let Some(e) = &c.endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            bad(
                "endpoint",
                format!("must be an http:// or https:// URL, got {e:?}"),
            );
        }
    }
    if let Some(r) = &c.region {
        if let Err(e) = region(r, c.endpoint.is_some()) {
            bad("region", e);
        }
    }
    if c.external_id.is_some() && c.assume_role_arn.is_none() {
        bad("external_id", "needs cloudwatch.assume_role_arn".into());
    }
    if let Some(a) = &c.assume_role_arn {
        if !a.starts_with("arn:") {
            bad("assume_role_arn", format!("not an ARN: {a:?}"));
        }
    }
    for k in c.static_fields.keys() {
        if EVENT_FIELDS.contains(&k.as_str()) || k.is_empty() {
            bad(
                &format!("static_fields.{k}"),
                "must not be empty or the name of an event field".into(),
            );
        }
    }
    if !(1..=64).contains(&c.streams) {
        bad(
            "streams",
            format!("must be between 1 and 64, got {}", c.streams),
        );
    }
    let ms = |d: HumanDuration| d.0.as_millis() as u64;
    if !(10..=60_000).contains(&ms(c.max_batch_wait)) {
        bad(
            "max_batch_wait",
            format!("must be between 10ms and 60s, got {}", c.max_batch_wait),
        );
    }
    if !(1_000..=7_200_000).contains(&ms(c.max_future)) {
        bad(
            "max_future",
            format!("must be between 1s and 2h, got {}", c.max_future),
        );
    }
    if !(2..=1000).contains(&c.invalid_breaker_after) {
        bad(
            "invalid_breaker_after",
            format!(
                "must be between 2 and 1000, got {}",
                c.invalid_breaker_after
            ),
        );
    }
    if !(1024..=1 << 20).contains(&c.max_event_bytes.0) {
        bad(
            "max_event_bytes",
            format!(
                "must be between 1024 and 1048576 bytes, got {}",
                c.max_event_bytes.0
            ),
        );
    }
    for (key, d) in [
        ("connect_timeout", c.connect_timeout),
        ("request_timeout", c.request_timeout),
        ("backoff_max", c.backoff_max),
        ("auth_retry_interval", c.auth_retry_interval),
        ("invalid_probe_interval", c.invalid_probe_interval),
    ] {
        if !(100..=3_600_000).contains(&ms(d)) {
            bad(key, format!("must be between 100ms and 1h, got {d}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> StreamVars {
        StreamVars {
            hostname: Some("node-1".into()),
            pod: Some("server-abc".into()),
            namespace: None,
        }
    }

    #[test]
    fn stream_templates_expand() {
        assert_eq!(expand_stream("{hostname}", &vars()).unwrap(), "node-1");
        assert_eq!(
            expand_stream("audit/{pod}-x", &vars()).unwrap(),
            "audit/server-abc-x"
        );
        assert!(expand_stream("{namespace}", &vars())
            .unwrap_err()
            .contains("POD_NAMESPACE"));
        assert!(expand_stream("{node}", &vars())
            .unwrap_err()
            .contains("unknown placeholder"));
        assert!(expand_stream("{pod", &vars())
            .unwrap_err()
            .contains("unclosed"));
        assert!(expand_stream("a:b", &vars()).is_err());
    }

    #[test]
    fn regions_by_form_and_by_name() {
        for ok in ["us-east-1", "eu-west-3", "us-gov-west-1", "cn-northwest-1"] {
            assert_eq!(region(ok, false), Ok(()), "{ok}");
        }
        assert!(region("eu-west-9", false)
            .unwrap_err()
            .contains("not an AWS region this build knows"));
        assert_eq!(
            region("eu-west-9", true),
            Ok(()),
            "the form only, with an endpoint"
        );
        for bad in [
            "us-east1",
            "useast-1",
            "US-EAST-1",
            "us-east-01",
            "",
            "us-space-1",
        ] {
            assert!(
                region(bad, true)
                    .unwrap_err()
                    .contains("not an AWS region name"),
                "{bad}"
            );
        }
    }
}
