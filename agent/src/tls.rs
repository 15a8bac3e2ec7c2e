//! TLS for the HTTP listener, for deployments that expose it beyond the node
//! (`http.tls_cert_file`, `http.tls_key_file`). Handshakes run in tasks of their own, so
//! a client that opens a connection and says nothing cannot hold up a scrape.

use crate::limits::{Bounded, Guarded};
use anyhow::Context;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A handshake that takes longer is dropped.
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the server to take them.
const BACKLOG: usize = 64;

/// Reads the certificate chain and key (PEM) and makes the acceptor; errors name the file.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("http.tls_cert_file {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("http.tls_cert_file {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "http.tls_cert_file {}: no certificate in it",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("http.tls_key_file {}", key.display()))?;
    // ring, as reqwest uses: it builds with a C compiler alone (aws-lc wants cmake). Its
    // lack of post-quantum key exchange is why rustls deprecates it; classical ECDHE is
    // what scrapers speak today.
    #[allow(deprecated)]
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context(
            "http.tls_cert_file and http.tls_key_file do not make a certificate and its key",
        )?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A listener whose connections are TLS streams, for `axum::serve`.
pub struct TlsListener {
    done: mpsc::Receiver<(TlsStream<Guarded<TcpStream>>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Handshakes run on connections the bounded listener gave a place, so a flood of
    /// half-open handshakes is capped like any other.
    pub fn new(mut tcp: Bounded<TcpListener>, acceptor: TlsAcceptor) -> io::Result<TlsListener> {
        use axum::serve::Listener;
        let local = tcp.local_addr()?;
        let (tx, done) = mpsc::channel(BACKLOG);
        tokio::spawn(async move {
            loop {
                // Accept errors (no descriptors) are waited out inside.
                let (stream, peer) = tcp.accept().await;
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_WITHIN, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { done, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<Guarded<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Some(x) = self.done.recv().await {
                return x;
            }
            // The accepting task ended (it never does on its own): nothing more comes.
            std::future::pending::<()>().await;
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
