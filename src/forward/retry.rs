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

/// A failed PostgreSQL operation (the installation store), by class: counted in
/// `audit_relay_postgres_errors_total{class}` and deciding how the shipper retries.
/// Nothing is ever dropped: every class waits and tries again, a permanent one slowly and
/// with readiness failing, because only an operator can fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PgClass {
    /// Could not connect, or the connection broke (server down, restarting, network).
    Connection,
    /// Serialization failure or deadlock: the transaction may simply be run again.
    Serialization,
    /// `too_many_connections`: the server is at `max_connections`.
    TooManyConnections,
    /// The server refused the user or password (`postgres.url`, `postgres.password_file`,
    /// or the IAM token of `postgres.iam_auth`).
    Auth,
    /// TLS could not be set up or the certificate was refused (`postgres.sslmode`,
    /// `postgres.ca_file`).
    Tls,
    /// The database's schema is not this build's (newer, or tables missing).
    Schema,
    /// The database named in the URL does not exist, or a permission is missing.
    Config,
    /// Anything else the server said.
    Other,
}

impl PgClass {
    pub const COUNT: usize = 8;
    pub const ALL: [PgClass; PgClass::COUNT] = [
        PgClass::Connection,
        PgClass::Serialization,
        PgClass::TooManyConnections,
        PgClass::Auth,
        PgClass::Tls,
        PgClass::Schema,
        PgClass::Config,
        PgClass::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            PgClass::Connection => "connection",
            PgClass::Serialization => "serialization",
            PgClass::TooManyConnections => "too_many_connections",
            PgClass::Auth => "auth",
            PgClass::Tls => "tls",
            PgClass::Schema => "schema",
            PgClass::Config => "config",
            PgClass::Other => "other",
        }
    }

    /// Whether it may pass by itself (retry soon) rather than need an operator.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            PgClass::Connection | PgClass::Serialization | PgClass::TooManyConnections
        )
    }

    /// The config key an operator should look at, for a permanent class.
    pub fn key(self) -> Option<&'static str> {
        match self {
            PgClass::Auth => {
                Some("postgres.url (user) / postgres.password_file / postgres.iam_auth")
            }
            PgClass::Tls => Some("postgres.sslmode / postgres.ca_file"),
            PgClass::Config => Some("postgres.url"),
            _ => None,
        }
    }
}

/// Classifies a PostgreSQL failure from its SQLSTATE (when the server sent one) and the
/// client's message (for failures before or outside the protocol: I/O, TLS).
pub fn classify_postgres(sqlstate: Option<&str>, message: &str) -> PgClass {
    match sqlstate {
        Some(code) if code.starts_with("08") => PgClass::Connection,
        Some("57P01" | "57P02" | "57P03") => PgClass::Connection,
        Some("40001" | "40P01") => PgClass::Serialization,
        Some("53300") => PgClass::TooManyConnections,
        Some("28P01" | "28000") => {
            // pg_hba's "no encryption" is a TLS mismatch, not a password problem.
            if message.contains("no encryption") || message.contains("SSL off") {
                PgClass::Tls
            } else {
                PgClass::Auth
            }
        }
        Some("3D000" | "42501") => PgClass::Config,
        Some("42P01" | "42703") => PgClass::Schema,
        Some(_) => PgClass::Other,
        None => {
            let m = message.to_ascii_lowercase();
            if m.contains("tls") || m.contains("ssl") || m.contains("certificate") {
                PgClass::Tls
            } else {
                PgClass::Connection
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

    #[test]
    fn postgres_failures_are_classified_by_sqlstate_then_message() {
        use super::{classify_postgres as c, PgClass::*};
        assert_eq!(c(Some("08006"), "connection failure"), Connection);
        assert_eq!(
            c(
                Some("57P01"),
                "terminating connection due to administrator command"
            ),
            Connection
        );
        assert_eq!(
            c(None, "error connecting to server: Connection refused"),
            Connection
        );
        assert_eq!(
            c(Some("40001"), "could not serialize access"),
            Serialization
        );
        assert_eq!(
            c(Some("53300"), "sorry, too many clients already"),
            TooManyConnections
        );
        assert_eq!(c(Some("28P01"), "password authentication failed"), Auth);
        assert_eq!(c(Some("28000"), "no pg_hba.conf entry for host \"127.0.0.1\", user \"u\", database \"d\", no encryption"), Tls);
        assert_eq!(
            c(
                None,
                "error performing TLS handshake: invalid peer certificate"
            ),
            Tls
        );
        assert_eq!(c(None, "server does not support TLS"), Tls);
        assert_eq!(c(Some("3D000"), "database \"x\" does not exist"), Config);
        assert_eq!(c(Some("42P01"), "relation does not exist"), Schema);
        assert_eq!(c(Some("22P02"), "invalid input syntax"), Other);
        for k in super::PgClass::ALL {
            assert_eq!(
                k.is_transient(),
                matches!(k, Connection | Serialization | TooManyConnections),
                "{k:?}"
            );
            assert_eq!(k.key().is_some(), matches!(k, Auth | Tls | Config), "{k:?}");
        }
    }
}
