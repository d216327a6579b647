//! RDS IAM authentication (`postgres.iam_auth`): the password of each new connection is
//! a short-lived token, a SigV4-presigned `connect` request for the database user, signed
//! with the relay's AWS credentials (the chain CloudWatch uses, and its
//! `cloudwatch.assume_role_arn`). RDS checks the signature and the IAM policy
//! (`rds-db:connect`); no password is stored anywhere.
//!
//! A token is valid for 15 minutes and is checked only when a connection logs in; one is
//! made at most every [`REUSE_FOR`] and shared by the connections made meanwhile.

use super::PgError;
use crate::config::postgres::PostgresConfig;
use crate::forward::retry::PgClass;
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How long a token is valid, as signed (RDS's maximum).
const EXPIRES_IN: Duration = Duration::from_secs(900);
/// How long one token is handed out for new connections (well inside its 15 minutes).
const REUSE_FOR: Duration = Duration::from_secs(600);
/// The key naming this feature in errors.
const KEY: &str = "postgres.iam_auth";

/// The last token made, per (`postgres.url`, `postgres.iam_region`): one in practice.
type TokenKey = (String, Option<String>);
static TOKENS: Mutex<Vec<(TokenKey, String, Instant)>> = Mutex::new(Vec::new());

/// Characters left as they are in a SigV4 query value (RFC 3986 unreserved).
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

/// The token for `user` at `host:port`: the presigned URL without its scheme, as the AWS
/// SDKs' `generate_db_auth_token` makes it.
pub fn sign_token(
    host: &str,
    port: u16,
    user: &str,
    region: &str,
    credentials: Credentials,
    at: SystemTime,
) -> Result<String, String> {
    use aws_sigv4::http_request::{
        sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    };
    let identity = credentials.into();
    let mut settings = SigningSettings::default();
    settings.expires_in = Some(EXPIRES_IN);
    settings.signature_location = SignatureLocation::QueryParams;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("rds-db")
        .time(at)
        .settings(settings)
        .build()
        .map_err(|e| e.to_string())?;
    let mut token = format!("{host}:{port}/?Action=connect&DBUser={}", encode(user));
    let url = format!("https://{token}");
    let request = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(request, &params.into())
        .map_err(|e| e.to_string())?
        .into_parts();
    for (name, value) in instructions.params() {
        token.push('&');
        token.push_str(name);
        token.push('=');
        token.push_str(&encode(value));
    }
    Ok(token)
}

/// The endpoint and user of `postgres.url` (its first host).
fn target(cfg: &PostgresConfig) -> Result<(String, u16, String), PgError> {
    let bad = |m: String| PgError::new(PgClass::Config, "postgres.url", m);
    let pg: tokio_postgres::Config = cfg
        .url
        .parse()
        .map_err(|e: tokio_postgres::Error| bad(e.to_string()))?;
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => return Err(bad("IAM authentication needs a TCP host name".into())),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let user = pg
        .get_user()
        .ok_or_else(|| bad("names no user; IAM authentication signs a token for one".into()))?
        .to_string();
    Ok((host, port, user))
}

/// A token for `cfg`'s connections: the one made less than [`REUSE_FOR`] ago, or a new
/// one signed with fresh credentials. A failure names `postgres.iam_auth` (credentials)
/// or `postgres.iam_region`.
pub async fn token(cfg: &PostgresConfig) -> Result<String, PgError> {
    let key = (cfg.url.clone(), cfg.iam_region.clone());
    if let Some((_, t, _)) = TOKENS
        .lock()
        .expect("tokens")
        .iter()
        .find(|(k, _, made)| *k == key && made.elapsed() < REUSE_FOR)
    {
        return Ok(t.clone());
    }
    let (host, port, user) = target(cfg)?;
    let sdk = aws_config(cfg).await;
    let region = cfg
        .iam_region
        .clone()
        .or_else(|| sdk.region().map(|r| r.to_string()))
        .ok_or_else(|| {
            PgError::new(
                PgClass::Config,
                "postgres.iam_region",
                "not set, and neither cloudwatch.region nor the environment (AWS_REGION) names one",
            )
        })?;
    let provider = sdk.credentials_provider().ok_or_else(|| {
        PgError::new(
            PgClass::Auth,
            KEY,
            "no AWS credentials provider to sign the token with",
        )
    })?;
    let credentials = provider.provide_credentials().await.map_err(|e| {
        PgError::new(
            PgClass::Auth,
            KEY,
            format!("no AWS credentials to sign the token with: {e}"),
        )
    })?;
    let made = Instant::now();
    let t = sign_token(&host, port, &user, &region, credentials, SystemTime::now())
        .map_err(|e| PgError::new(PgClass::Auth, KEY, format!("signing the token: {e}")))?;
    let mut tokens = TOKENS.lock().expect("tokens");
    tokens.retain(|(k, _, _)| *k != key);
    tokens.push((key, t.clone(), made));
    Ok(t)
}

/// The AWS configuration whose credentials sign the token: CloudWatch's (its region,
/// endpoint-free, and its assumed role), or the environment's when there is no
/// `[cloudwatch]`.
async fn aws_config(cfg: &PostgresConfig) -> aws_config::SdkConfig {
    match &cfg.aws {
        Some(cw) => crate::forward::cloudwatch::sdk_config(cw, "audit-relay-rds", true).await,
        None => {
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .load()
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// The AWS SDK for Rust's own vector for `generate_db_auth_token` (aws-sdk-rds,
    /// `auth_token.rs`, test `signing_works`).
    #[test]
    fn the_token_is_the_one_the_aws_sdks_make() {
        let t = sign_token(
            "prod-instance.us-east-1.rds.amazonaws.com",
            3306,
            "peccy",
            "us-east-1",
            Credentials::new("akid", "secret", None, None, "test"),
            UNIX_EPOCH + Duration::from_secs(1_724_709_600),
        )
        .unwrap();
        assert_eq!(t, "prod-instance.us-east-1.rds.amazonaws.com:3306/?Action=connect&DBUser=peccy&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=akid%2F20240826%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=dd0cba843009474347af724090233265628ace491ea17ce3eb3da098b983ad89");
    }

    #[test]
    fn session_credentials_carry_their_token_and_users_are_encoded() {
        let t = sign_token(
            "db.internal",
            5432,
            "audit relay+1",
            "eu-west-1",
            Credentials::new("AKID", "secret", Some("a/b+c=".into()), None, "test"),
            UNIX_EPOCH + Duration::from_secs(1_724_709_600),
        )
        .unwrap();
        assert!(
            t.starts_with("db.internal:5432/?Action=connect&DBUser=audit%20relay%2B1&"),
            "{t}"
        );
        assert!(t.contains("&X-Amz-Security-Token=a%2Fb%2Bc%3D"), "{t}");
        assert!(t.contains("%2Feu-west-1%2Frds-db%2Faws4_request"), "{t}");
    }
}
