//! TLS for the query API (`api.tls_cert`, `api.tls_key`): rustls with the aws-lc-rs
//! provider the AWS SDK already builds.
//!
//! Handshakes run in their own tasks (a slow client cannot hold up others), at most
//! [`READY_CONNECTIONS`] at once; finished connections are handed to
//! [`super::server::serve`] through [`TlsListener`], so the server, its limits and its
//! graceful shutdown are the same as for plain HTTP.

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the server to take them.
const READY_CONNECTIONS: usize = 64;

/// The server config from the PEM files; errors name the config key.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("api.tls_cert: cannot read {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "api.tls_cert: no certificate (PEM \"CERTIFICATE\") in {}",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
                "api.tls_key: cannot read a private key (PEM PKCS#8, RSA or EC) from {}",
                key.display()
            )
        })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("api.tls_cert: TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("api.tls_key: does not match the certificate in api.tls_cert")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server config in use, replaced on reload (SIGHUP): each new handshake takes the
/// one in place when it starts; open connections keep theirs.
pub type SharedTls = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// A [`SharedTls`] holding `config`.
pub fn shared(config: Arc<rustls::ServerConfig>) -> SharedTls {
    Arc::new(RwLock::new(config))
}

/// TLS connections for `axum::serve`, handshaken by a task that stops with `stop`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(
        listener: TcpListener,
        config: SharedTls,
        stop: CancellationToken,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_CONNECTIONS);
        // Handshakes in progress hold descriptors before the server's connection cap
        // sees them: bound them too.
        let handshakes = Arc::new(tokio::sync::Semaphore::new(READY_CONNECTIONS));
        tokio::spawn(async move {
            loop {
                let permit = tokio::select! {
                    _ = stop.cancelled() => return,
                    p = handshakes.clone().acquire_owned() => p.expect("never closed"),
                };
                let (tcp, addr) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of descriptors and the like: wait instead of spinning.
                            tracing::warn!(error = %e, "query API: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = TlsAcceptor::from(config.read().expect("TLS config").clone());
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, peer = %addr, "query API: TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(peer = %addr, "query API: TLS handshake timed out")
                        }
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The acceptor stopped: so is the server, which stops calling accept.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
