//! Retry classification: what a failed CloudWatch call means and what to do next.
//!
//! The one place that decides. Input is a plain description of the failure (so the
//! table is tested without the SDK); the forwarder maps SDK errors into it. Nothing
//! here ever says "drop": an event leaves the spool only by being accepted or rejected
//! one by one.

use std::fmt;

/// A failed call, as the forwarder observed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The service answered with an error code (modeled or not) and/or an HTTP status.
    Service {
        code: Option<String>,
        status: Option<u16>,
        message: String,
    },
    /// No answer in time.
    Timeout,
    /// Could not connect, or the connection broke before an answer.
    Connection(String),
    /// Credentials could not be loaded at all (before any request).
    NoCredentials(String),
    /// Anything else the client reported.
    Other(String),
    /// The forwarder could not read what it needs from the spool (its cursor, an
    /// organization's id for its stream): nothing is sent or skipped until it can.
    SpoolRead(String),
}

/// The kind of error, as counted in metrics and named in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Throttling,
    ServerError,
    Timeout,
    Connection,
    ResourceNotFound,
    InvalidParameter,
    Credentials,
    Permission,
    Unknown,
    SpoolRead,
}

impl ErrorKind {
    pub const COUNT: usize = 10;
    pub const ALL: [ErrorKind; ErrorKind::COUNT] = [
        ErrorKind::Throttling,
        ErrorKind::ServerError,
        ErrorKind::Timeout,
        ErrorKind::Connection,
        ErrorKind::ResourceNotFound,
        ErrorKind::InvalidParameter,
        ErrorKind::Credentials,
        ErrorKind::Permission,
        ErrorKind::Unknown,
        ErrorKind::SpoolRead,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::Throttling => "throttling",
            ErrorKind::ServerError => "server_error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::ResourceNotFound => "resource_not_found",
            ErrorKind::InvalidParameter => "invalid_parameter",
            ErrorKind::Credentials => "credentials",
            ErrorKind::Permission => "permission",
            ErrorKind::Unknown => "unknown",
            ErrorKind::SpoolRead => "spool_read",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAction {
    /// Send the same call again after a capped exponential backoff with full jitter.
    Backoff,
    /// Create the log group and/or stream, then send the same call again.
    Recreate,
    /// The call holds something CloudWatch refuses: split it to find the event(s).
    Bisect,
    /// Retry only after a long delay, report not ready, log at most once a minute.
    LongDelay,
}

/// Classifies a failure. Unknown failures are retried: losing an audit event is worse
/// than retrying a call that cannot succeed (which the logs and metrics will show).
pub fn classify(f: &Failure) -> (ErrorKind, RetryAction) {
    use ErrorKind as K;
    use RetryAction as A;
    match f {
        Failure::Timeout => (K::Timeout, A::Backoff),
        Failure::Connection(_) => (K::Connection, A::Backoff),
        Failure::NoCredentials(_) => (K::Credentials, A::LongDelay),
        Failure::Other(_) => (K::Unknown, A::Backoff),
        Failure::SpoolRead(_) => (K::SpoolRead, A::Backoff),
        Failure::Service { code, status, .. } => {
            match code.as_deref() {
                Some(
                    "ThrottlingException"
                    | "Throttling"
                    | "TooManyRequestsException"
                    | "RequestLimitExceeded"
                    | "LimitExceededException",
                ) => return (K::Throttling, A::Backoff),
                Some("ServiceUnavailableException" | "InternalFailure" | "ServiceUnavailable") => {
                    return (K::ServerError, A::Backoff)
                }
                Some("ResourceNotFoundException") => return (K::ResourceNotFound, A::Recreate),
                Some("InvalidParameterException" | "SerializationException") => {
                    return (K::InvalidParameter, A::Bisect)
                }
                Some(
                    "UnrecognizedClientException"
                    | "InvalidSignatureException"
                    | "ExpiredTokenException"
                    | "ExpiredToken"
                    | "InvalidClientTokenId"
                    | "MissingAuthenticationToken"
                    | "IncompleteSignature"
                    | "SignatureDoesNotMatch",
                ) => return (K::Credentials, A::LongDelay),
                Some("AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation") => {
                    return (K::Permission, A::LongDelay)
                }
                _ => {}
            }
            match status {
                Some(429) => (K::Throttling, A::Backoff),
                Some(413) => (K::InvalidParameter, A::Bisect),
                Some(401) => (K::Credentials, A::LongDelay),
                Some(403) => (K::Permission, A::LongDelay),
                Some(s) if *s >= 500 => (K::ServerError, A::Backoff),
                _ => (K::Unknown, A::Backoff),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(code: Option<&str>, status: Option<u16>) -> Failure {
        Failure::Service {
            code: code.map(str::to_string),
            status,
            message: "m".into(),
        }
    }

    #[test]
    fn kinds_index_their_metric_slot() {
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k}");
        }
    }

    #[test]
    fn classification_table() {
        use ErrorKind as K;
        use RetryAction as A;
        let table: Vec<(Failure, K, A)> = vec![
            (
                svc(Some("ThrottlingException"), Some(400)),
                K::Throttling,
                A::Backoff,
            ),
            (
                svc(Some("ServiceUnavailableException"), Some(503)),
                K::ServerError,
                A::Backoff,
            ),
            (svc(None, Some(500)), K::ServerError, A::Backoff),
            (svc(None, Some(502)), K::ServerError, A::Backoff),
            (svc(None, Some(429)), K::Throttling, A::Backoff),
            (Failure::Timeout, K::Timeout, A::Backoff),
            (
                Failure::Connection("reset".into()),
                K::Connection,
                A::Backoff,
            ),
            (
                svc(Some("ResourceNotFoundException"), Some(400)),
                K::ResourceNotFound,
                A::Recreate,
            ),
            (
                svc(Some("InvalidParameterException"), Some(400)),
                K::InvalidParameter,
                A::Bisect,
            ),
            (svc(None, Some(413)), K::InvalidParameter, A::Bisect),
            (
                svc(Some("UnrecognizedClientException"), Some(400)),
                K::Credentials,
                A::LongDelay,
            ),
            (
                svc(Some("ExpiredTokenException"), Some(400)),
                K::Credentials,
                A::LongDelay,
            ),
            (
                svc(Some("AccessDeniedException"), Some(400)),
                K::Permission,
                A::LongDelay,
            ),
            (svc(None, Some(403)), K::Permission, A::LongDelay),
            (
                Failure::NoCredentials("no provider".into()),
                K::Credentials,
                A::LongDelay,
            ),
            (svc(Some("SomethingNew"), Some(400)), K::Unknown, A::Backoff),
            (Failure::Other("?".into()), K::Unknown, A::Backoff),
            (
                Failure::SpoolRead("no such table: orgs".into()),
                K::SpoolRead,
                A::Backoff,
            ),
        ];
        for (f, kind, action) in table {
            assert_eq!(classify(&f), (kind, action), "{f:?}");
        }
    }
}
