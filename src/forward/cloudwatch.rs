//! The CloudWatch Logs client: the only code that talks to AWS.
//!
//! Thin I/O shell over the AWS SDK: credentials from the default chain (environment,
//! profile, web identity / IRSA, container and instance metadata), optionally an
//! assumed role; explicit timeouts; the SDK's own retries off, because the forwarder's
//! loop owns retrying (and must see every error to classify and count it).

use super::batch::{OutEvent, RejectReason};
use super::retry::Failure;
use crate::config::CloudWatchConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_cloudwatchlogs::config::http::HttpResponse;
use aws_sdk_cloudwatchlogs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatchlogs::types::LogGroupClass;
use aws_sdk_cloudwatchlogs::Client;

/// One log group + stream.
#[derive(Clone)]
pub struct CloudWatch {
    client: Client,
    group: String,
    stream: String,
    create_group: bool,
    retention_days: Option<i32>,
    kms_key_id: Option<String>,
    tags: std::collections::HashMap<String, String>,
    log_group_class: Option<String>,
    deletion_protection: bool,
    field_index: Vec<String>,
}

/// What CloudWatch said of an accepted call: events it refused one by one, by index
/// into the call's events.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    pub rejected: Vec<(usize, RejectReason)>,
}

/// The SDK client for `cfg`: region, endpoint, timeouts, and the assumed role (its STS
/// session named `session_name`). `sdk_retries`: the SDK's standard retries (a
/// one-off tool), or one attempt per call (the forwarder classifies and retries itself).
pub async fn sdk_client(
    cfg: &CloudWatchConfig,
    session_name: &str,
    sdk_retries: bool,
) -> Result<Client, String> {
    let sdk = sdk_config(cfg, session_name, sdk_retries).await;
    if sdk.region().is_none() {
        return Err(
            "cloudwatch.region: not set, and the environment names none (AWS_REGION, AWS_DEFAULT_REGION or a profile)"
                .to_string(),
        );
    }
    Ok(Client::new(&sdk))
}

/// The AWS configuration of `cfg` (see [`sdk_client`]): its credentials also sign the
/// installation store's IAM tokens. The region may be missing.
pub async fn sdk_config(
    cfg: &CloudWatchConfig,
    session_name: &str,
    sdk_retries: bool,
) -> aws_config::SdkConfig {
    let mut timeouts = TimeoutConfig::builder()
        .connect_timeout(cfg.connect_timeout.0)
        .operation_timeout(cfg.request_timeout.0);
    if !sdk_retries {
        timeouts = timeouts.operation_attempt_timeout(cfg.request_timeout.0);
    }
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts.build());
    if !sdk_retries {
        loader = loader.retry_config(RetryConfig::standard().with_max_attempts(1));
    }
    if let Some(r) = &cfg.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(e) = &cfg.endpoint {
        loader = loader.endpoint_url(e.clone());
    }
    let mut sdk = loader.load().await;
    if let Some(arn) = &cfg.assume_role_arn {
        let mut role = aws_config::sts::AssumeRoleProvider::builder(arn.clone())
            .session_name(session_name)
            .configure(&sdk);
        if let Some(id) = &cfg.external_id {
            role = role.external_id(id.clone());
        }
        let provider = role.build().await;
        sdk = sdk
            .into_builder()
            .credentials_provider(
                aws_sdk_cloudwatchlogs::config::SharedCredentialsProvider::new(provider),
            )
            .build();
    }
    sdk
}

impl CloudWatch {
    /// Builds the client for `stream` (already expanded from its template).
    pub async fn connect(cfg: &CloudWatchConfig, stream: String) -> Result<CloudWatch, String> {
        // One attempt per call: the forwarder's own retry classification decides.
        let client = sdk_client(cfg, "audit-relay", false).await?;
        Ok(CloudWatch {
            client,
            group: cfg.log_group.clone(),
            stream,
            create_group: cfg.create_log_group,
            retention_days: cfg.retention_in_days,
            kms_key_id: cfg.kms_key_id.clone(),
            tags: cfg.tags.clone().into_iter().collect(),
            log_group_class: cfg.log_group_class.clone(),
            deletion_protection: cfg.deletion_protection,
            field_index: cfg.field_index.clone(),
        })
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The SDK client (for the admin commands, e.g. `cloudwatch install-queries`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the log group (if allowed; with its KMS key, tags, log class and
    /// deletion protection) and the stream when missing; sets retention and the field
    /// index policy.
    pub async fn ensure(&self) -> Result<(), Failure> {
        if self.create_group {
            let r = self
                .client
                .create_log_group()
                .log_group_name(&self.group)
                .set_kms_key_id(self.kms_key_id.clone())
                .set_tags((!self.tags.is_empty()).then(|| self.tags.clone()))
                .set_log_group_class(self.log_group_class.as_deref().map(LogGroupClass::from))
                .set_deletion_protection_enabled(self.deletion_protection.then_some(true))
                .send()
                .await;
            match r {
                Ok(_) => tracing::info!(group = %self.group, "log group created"),
                Err(e) if e.code() == Some("ResourceAlreadyExistsException") => {}
                Err(e) => return Err(failure(e)),
            }
            if !self.field_index.is_empty() {
                // Replaces the group's policy: set at every start, like the retention.
                self.client
                    .put_index_policy()
                    .log_group_identifier(&self.group)
                    .policy_document(crate::config::cloudwatch::index_policy(&self.field_index))
                    .send()
                    .await
                    .map_err(failure)?;
            }
        }
        if let Some(days) = self.retention_days {
            self.client
                .put_retention_policy()
                .log_group_name(&self.group)
                .retention_in_days(days)
                .send()
                .await
                .map_err(failure)?;
        }
        let r = self
            .client
            .create_log_stream()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .send()
            .await;
        match r {
            Ok(_) => {
                tracing::info!(group = %self.group, stream = %self.stream, "log stream created");
                Ok(())
            }
            Err(e) if e.code() == Some("ResourceAlreadyExistsException") => Ok(()),
            Err(e) => Err(failure(e)),
        }
    }

    /// One PutLogEvents call with events already sorted by time.
    ///
    /// The relay writes the JSON body itself ([`put_body`], one buffer, the messages
    /// escaped by [`crate::json`] as serde_json would) and hands it to the SDK just
    /// before signing: the SDK's own serializer would need a copy of every message
    /// (`InputLogEvent`) and escapes them several times slower (measured in
    /// docs/benchmarks.md, issue 11). The SDK still signs (SigV4 over this body), sends
    /// and parses the answer.
    pub async fn put(&self, events: &[OutEvent]) -> Result<PutOutcome, Failure> {
        let body = bytes::Bytes::from(put_body(&self.group, &self.stream, events));
        let length = body.len().to_string();
        let out = self
            .client
            .put_log_events()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .customize()
            .mutate_request(move |req| {
                *req.body_mut() = body.clone().into();
                req.headers_mut().insert("content-length", length.clone());
            })
            .send()
            .await
            .map_err(failure)?;
        let mut outcome = PutOutcome::default();
        if let Some(info) = out.rejected_log_events_info() {
            outcome.rejected = rejected_indices(
                events.len(),
                info.too_new_log_event_start_index(),
                info.too_old_log_event_end_index(),
                info.expired_log_event_end_index(),
            );
        }
        Ok(outcome)
    }
}

impl CloudWatch {
    /// The stream's newest messages (by timestamp; up to 10,000 or 1 MB), as
    /// `(timestamp, message)`; one call, no retry (a hint, not a requirement).
    pub async fn newest(&self) -> Result<Vec<(i64, String)>, String> {
        let page = self
            .client
            .get_log_events()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .start_from_head(false)
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
        Ok(page
            .events()
            .iter()
            .map(|e| {
                (
                    e.timestamp().unwrap_or_default(),
                    e.message().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    /// Hands every message of the stream, oldest first, to `f` as `(timestamp, message)`,
    /// a page at a time (for `verify --cloudwatch`; memory stays one page). A failed call
    /// is tried again a few times. Returns the number of messages.
    pub async fn read_each(&self, mut f: impl FnMut(i64, &str)) -> Result<u64, String> {
        let mut n = 0u64;
        let mut token: Option<String> = None;
        loop {
            let mut attempt = 0;
            let page = loop {
                let r = self
                    .client
                    .get_log_events()
                    .log_group_name(&self.group)
                    .log_stream_name(&self.stream)
                    .start_from_head(true)
                    .set_next_token(token.clone())
                    .send()
                    .await;
                match r {
                    Ok(p) => break p,
                    Err(e) if attempt < 5 => {
                        attempt += 1;
                        tracing::warn!(error = %DisplayErrorContext(&e), attempt, "GetLogEvents failed; trying again");
                        tokio::time::sleep(std::time::Duration::from_millis(500 * attempt)).await;
                    }
                    Err(e) => {
                        return Err(format!(
                            "reading {}/{}: {}",
                            self.group,
                            self.stream,
                            DisplayErrorContext(&e)
                        ))
                    }
                }
            };
            let events = page.events();
            for e in events {
                n += 1;
                f(
                    e.timestamp().unwrap_or_default(),
                    e.message().unwrap_or_default(),
                );
            }
            let next = page.next_forward_token().map(str::to_string);
            // The end is the same token again (an empty page may come before it).
            if next.is_none() || next == token {
                return Ok(n);
            }
            token = next;
        }
    }
}

/// The JSON body of a PutLogEvents call (what the SDK's serializer writes for the same
/// input, but for key order and escaping details: `logGroupName`, `logStreamName`,
/// `logEvents` of `{"timestamp", "message"}` in the given order), compact as
/// serde_json writes it.
pub fn put_body(group: &str, stream: &str, events: &[OutEvent]) -> Vec<u8> {
    use crate::json::write_str;
    use std::io::Write;
    // Each message's quotes are escaped: ~7 % more than its length, for ~40 quotes.
    let size: usize = events.iter().map(|e| e.message.len() * 17 / 16 + 48).sum();
    let mut buf = Vec::with_capacity(size + group.len() + stream.len() + 64);
    buf.extend_from_slice(b"{\"logGroupName\":");
    write_str(&mut buf, group);
    buf.extend_from_slice(b",\"logStreamName\":");
    write_str(&mut buf, stream);
    buf.extend_from_slice(b",\"logEvents\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write!(buf, "{{\"timestamp\":{},\"message\":", e.ts_ms).expect("writing to memory");
        write_str(&mut buf, &e.message);
        buf.push(b'}');
    }
    buf.extend_from_slice(b"]}");
    buf
}

/// Expands `rejectedLogEventsInfo` into event indices: `tooNewLogEventStartIndex` is
/// inclusive, the two end indices are exclusive (as AWS documents them).
pub fn rejected_indices(
    n: usize,
    too_new_start: Option<i32>,
    too_old_end: Option<i32>,
    expired_end: Option<i32>,
) -> Vec<(usize, RejectReason)> {
    let clamp = |v: i32| (v.max(0) as usize).min(n);
    let mut reasons: Vec<Option<RejectReason>> = vec![None; n];
    if let Some(end) = expired_end {
        for r in reasons.iter_mut().take(clamp(end)) {
            *r = Some(RejectReason::Expired);
        }
    }
    if let Some(end) = too_old_end {
        for r in reasons.iter_mut().take(clamp(end)) {
            r.get_or_insert(RejectReason::TooOld);
        }
    }
    if let Some(start) = too_new_start {
        for r in reasons.iter_mut().skip(clamp(start)) {
            *r = Some(RejectReason::TooNew);
        }
    }
    reasons
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| r.map(|r| (i, r)))
        .collect()
}

/// Maps an SDK error to the plain description the retry policy classifies.
fn failure<E>(err: SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let text = DisplayErrorContext(&err).to_string();
    match &err {
        SdkError::TimeoutError(_) => Failure::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => Failure::Timeout,
        SdkError::DispatchFailure(d) if d.is_io() => Failure::Connection(text),
        SdkError::ResponseError(_) => Failure::Connection(text),
        SdkError::ServiceError(s) => Failure::Service {
            code: s.err().code().map(str::to_string),
            status: Some(s.raw().status().as_u16()),
            message: s.err().message().unwrap_or_default().to_string(),
        },
        _ if text.contains("credentials") || text.contains("identity") => {
            Failure::NoCredentials(text)
        }
        SdkError::DispatchFailure(_) => Failure::Connection(text),
        _ => Failure::Other(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RejectReason::*;

    #[test]
    fn the_put_body_carries_every_message_exactly() {
        let messages = [
            r#"{"id":"a","args":["x \"quoted\" \\ back"]}"#.to_string(),
            "tab\tnewline\ncontrol\u{1}\u{1f} unicode é 漢字 🙂 </script>".to_string(),
            "\u{7f}\u{2028}\u{2029}".to_string(),
        ];
        let events: Vec<OutEvent> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| OutEvent {
                seq: i as i64 + 1,
                ts_ms: 1_700_000_000_000 + i as i64,
                message: m.clone(),
            })
            .collect();
        let body = put_body("/group \"g\"", "stream/1", &events);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["logGroupName"], "/group \"g\"");
        assert_eq!(v["logStreamName"], "stream/1");
        let got = v["logEvents"].as_array().unwrap();
        assert_eq!(got.len(), 3);
        for (g, e) in got.iter().zip(&events) {
            assert_eq!(g["timestamp"], e.ts_ms);
            assert_eq!(g["message"].as_str().unwrap(), e.message);
            assert_eq!(g.as_object().unwrap().len(), 2);
        }
        assert_eq!(v.as_object().unwrap().len(), 3);
        // Byte for byte what serde_json writes for the same structure.
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Body<'a> {
            log_group_name: &'a str,
            log_stream_name: &'a str,
            log_events: Vec<Event<'a>>,
        }
        #[derive(serde::Serialize)]
        struct Event<'a> {
            timestamp: i64,
            message: &'a str,
        }
        let reference = serde_json::to_vec(&Body {
            log_group_name: "/group \"g\"",
            log_stream_name: "stream/1",
            log_events: events
                .iter()
                .map(|e| Event {
                    timestamp: e.ts_ms,
                    message: &e.message,
                })
                .collect(),
        })
        .unwrap();
        assert_eq!(body, reference);
        let empty = put_body("g", "s", &[]);
        assert_eq!(
            std::str::from_utf8(&empty).unwrap(),
            r#"{"logGroupName":"g","logStreamName":"s","logEvents":[]}"#
        );
    }

    #[test]
    fn rejected_info_maps_to_indices() {
        assert_eq!(
            rejected_indices(6, Some(4), Some(2), None),
            vec![(0, TooOld), (1, TooOld), (4, TooNew), (5, TooNew)]
        );
        assert_eq!(
            rejected_indices(3, None, Some(1), Some(2)),
            vec![(0, Expired), (1, Expired)]
        );
        assert_eq!(rejected_indices(3, Some(7), Some(-1), None), vec![]);
    }
}
