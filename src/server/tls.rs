//! The TLS side of the listener: what castellan offers (so every Istio client
//! mode, FIPS and post-quantum included, can connect) and the accept loop
//! that hands finished handshakes to the gRPC server.

use std::{io, sync::Arc, time::Duration};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::{CryptoProvider, aws_lc_rs},
    server::{ResolvesServerCert, WebPkiClientVerifier},
};
use rustls_pki_types::CertificateDer;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The suites and groups castellan offers.
///
/// - TLS 1.3 with AES-GCM: ztunnel accepts nothing else.
/// - TLS 1.2 with ECDHE and AES-GCM: istio-agent with
///   `COMPLIANCE_POLICY=fips-140-2` speaks only TLS 1.2, P-256.
/// - X25519MLKEM768 first: `COMPLIANCE_POLICY=pqc` offers only that group.
pub fn provider() -> CryptoProvider {
    use aws_lc_rs::{cipher_suite as cs, kx_group as kx};
    CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        kx_groups: vec![kx::X25519MLKEM768, kx::X25519, kx::SECP256R1, kx::SECP384R1],
        ..aws_lc_rs::default_provider()
    }
}

/// A server configuration that asks for, but does not require, a client
/// certificate chaining to `client_roots` (VM renewal presents one).
///
/// # Errors
/// When the roots cannot be used as trust anchors.
pub(super) fn server_config(
    certs: Arc<dyn ResolvesServerCert>,
    client_roots: &[CertificateDer<'static>],
) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(provider());
    let mut roots = RootCertStore::empty();
    for r in client_roots {
        roots.add(r.clone())?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .allow_unauthenticated()
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts connections and completes TLS handshakes concurrently, so one
/// slow client cannot hold up the others; yields finished TLS streams.
/// Closes the listening socket once `stop` turns true.
pub(super) fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    mut stop: watch::Receiver<bool>,
) -> (
    ReceiverStream<io::Result<TlsStream<TcpStream>>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(256);
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.wait_for(|stop| *stop) => break,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Without NODELAY every unary call waits ~40 ms on Nagle + delayed ACK.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "TCP_NODELAY not set");
            }
            let acceptor = acceptor.clone();
            let conn_tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = conn_tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    (ReceiverStream::new(rx), task)
}
