//! The TLS side of the listener: what castellan offers, so every Istio
//! client mode — FIPS and post-quantum included — can connect, and how a
//! presented client certificate is verified against the roots in use.

use std::sync::Arc;

use rustls::{
    RootCertStore, ServerConfig,
    crypto::{CryptoProvider, aws_lc_rs},
    server::{ResolvesServerCert, WebPkiClientVerifier, danger::ClientCertVerifier},
};
use rustls_pki_types::CertificateDer;

/// The suites and groups castellan offers.
///
/// - TLS 1.3 with AES-GCM: ztunnel accepts nothing else.
/// - TLS 1.2 with ECDHE and AES-GCM: istio-agent with
///   `COMPLIANCE_POLICY=fips-140-2` speaks only TLS 1.2, P-256.
/// - X25519MLKEM768 first: `COMPLIANCE_POLICY=pqc` offers only that group.
///
/// The FIPS build offers P-256 and P-384 only: X25519 is not an approved
/// group, and rustls counts X25519MLKEM768 as approved whenever the module is
/// in FIPS mode, which the module's own service indicator (not exposed by
/// aws-lc-rs) cannot confirm for ML-KEM, so castellan does not offer it.
/// Every other choice is the FIPS provider's (its signature algorithms and
/// key loading check FIPS mode too).
pub fn provider() -> CryptoProvider {
    use aws_lc_rs::{cipher_suite as cs, kx_group as kx};
    let cipher_suites = vec![
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ];
    let kx_groups = if crate::fips::BUILD {
        vec![kx::SECP256R1, kx::SECP384R1]
    } else {
        vec![kx::X25519MLKEM768, kx::X25519, kx::SECP256R1, kx::SECP384R1]
    };
    // With `fips`, rustls's aws-lc-rs provider is its FIPS provider
    // (`default_fips_provider` is this same provider).
    CryptoProvider {
        cipher_suites,
        kx_groups,
        ..aws_lc_rs::default_provider()
    }
}

/// Makes [`provider`] the process's default, so that every TLS client
/// castellan's libraries build (Vault, Kubernetes, JWKS) uses it: in the
/// FIPS build, the FIPS provider. The first call wins; later ones (tests
/// starting several servers in one process) change nothing.
pub(super) fn install_default() {
    let _ = provider().install_default();
}

/// A server configuration that asks for, but does not require, a client
/// certificate chaining to the current roots (VM renewal presents one).
///
/// # Errors
/// When the protocol versions cannot be set.
pub(super) fn server_config(
    certs: Arc<dyn ResolvesServerCert>,
    client_roots: Arc<ClientRoots>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(client_roots)
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No session tickets: agents keep one connection for months of
    // renewals, a restarted castellan forgets every session anyway, and a
    // storm of new agents has none to resume — each ticket was two more
    // records and a session-cache insert per handshake, for nothing.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(config)
}

/// Client-certificate verification against the roots in use now: when a
/// reload changes the root bundle, the next handshake is judged by the new
/// one.
#[derive(Debug)]
pub(super) struct ClientRoots {
    current: arc_swap::ArcSwap<Arc<dyn ClientCertVerifier>>,
}

impl ClientRoots {
    /// # Errors
    /// When the roots cannot be used as trust anchors.
    pub(super) fn new(roots: &[CertificateDer<'static>]) -> Result<Self, rustls::Error> {
        Ok(Self {
            current: arc_swap::ArcSwap::from_pointee(verifier(roots)?),
        })
    }

    /// Judges later handshakes by `roots`.
    ///
    /// # Errors
    /// When the roots cannot be used; the previous ones stay in force.
    pub(super) fn update(&self, roots: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        self.current.store(Arc::new(verifier(roots)?));
        Ok(())
    }

    fn now(&self) -> Arc<Arc<dyn ClientCertVerifier>> {
        self.current.load_full()
    }
}

fn verifier(
    roots: &[CertificateDer<'static>],
) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone())?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(store), Arc::new(provider()))
        .allow_unauthenticated()
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))
}

impl ClientCertVerifier for ClientRoots {
    fn offer_client_auth(&self) -> bool {
        self.now().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.now().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // Hints borrow from the verifier, which a swap may drop: send none
        // (clients then offer whatever certificate they have).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.now()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.now().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.now().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.now().supported_verify_schemes()
    }
}
