//! Reloading the query API's keys while it runs (on SIGHUP): the JWT keys (JWKS file and
//! HS256 secret), the operator tokens of `[[api.tokens]]`, and the TLS certificate and key.
//!
//! Everything is read and checked first and put in use only when all of it is good, so a
//! bad file keeps the running keys. Everything else in the config (ports, limits, the
//! issuer and audience aside, which travel with the keys) takes a restart.

use super::auth::{Authenticator, SharedAuthenticator};
use super::tls::{self, SharedTls};
use crate::config::api::ApiConfig;

/// Puts new keys, tokens and a new certificate in use.
pub struct Reloader {
    auth: SharedAuthenticator,
    tls: Option<SharedTls>,
}

impl Reloader {
    pub(super) fn new(auth: SharedAuthenticator, tls: Option<SharedTls>) -> Reloader {
        Reloader { auth, tls }
    }

    /// Reads what `new` names and puts it in use; returns what was reloaded (for the
    /// log: names and counts, no secret), or why nothing was.
    pub fn reload(&self, new: Option<&ApiConfig>) -> Result<String, String> {
        let Some(new) = new else {
            return Err(
                "the config has no [api] section now: the query API keeps running with its keys; a restart stops it"
                    .into(),
            );
        };
        let auth = Authenticator::from_config(new)?;
        let mut notes = Vec::new();
        let certificate = match (&self.tls, &new.tls_cert, &new.tls_key) {
            (Some(_), Some(cert), Some(key)) => Some((
                tls::server_config(cert, key).map_err(|e| format!("{e:#}"))?,
                cert.display().to_string(),
            )),
            (None, None, None) => None,
            (Some(_), _, _) => {
                notes.push("api.tls_cert and api.tls_key are gone: the API stays on TLS with its certificate until a restart");
                None
            }
            (None, _, _) => {
                notes.push("api.tls_cert and api.tls_key are new: the API stays on plain HTTP until a restart");
                None
            }
        };
        let mut what = auth.describe();
        self.auth.replace(auth);
        if let (Some(shared), Some((config, path))) = (&self.tls, certificate) {
            *shared.write().expect("TLS config") = config;
            what.push_str(&format!(", TLS certificate {path}"));
        }
        for n in notes {
            what.push_str("; ");
            what.push_str(n);
        }
        Ok(what)
    }
}
