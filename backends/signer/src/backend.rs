//! What a back end provides: a [`Source`] that loads it, and one of two
//! kinds of [`Backend`] — a key that signs what castellan built, or an
//! issuer that makes the leaf itself.

use std::{sync::Arc, time::Duration};

use rustls_pki_types::CertificateDer;

use crate::{Error, Fingerprint, KeyAlgorithm, queue::QueueStats};

/// A configured back end: loads its key and certificates, and notices when
/// they change. One per process, kept across reloads, so connections,
/// logins and HSM sessions are made once.
#[async_trait::async_trait]
pub trait Source: Send + Sync + std::fmt::Debug {
    /// Where the signing certificate comes from (a path, a Vault issuer, a
    /// token object), for messages.
    fn describe(&self) -> String;

    /// Loads the key (or connects to the issuer) and reads the certificates.
    ///
    /// # Errors
    /// [`Error::Config`] for what an operator must fix,
    /// [`Error::Unavailable`] when the back end cannot be reached.
    async fn load(&self) -> Result<Loaded, Error>;

    /// A digest of the material as it is now, to compare with what was
    /// loaded; `None` when it cannot be told now (an unreachable Vault) or
    /// is never polled (a certificate object on a token).
    ///
    /// # Errors
    /// When the material cannot be read.
    async fn fingerprint(&self) -> Result<Option<Fingerprint>, Error>;

    /// True when every [`Source::load`] makes new material (a key generated
    /// and certified on the spot): castellan then replaces the signing CA
    /// on a schedule of its own instead of polling [`Source::fingerprint`].
    fn self_rotating(&self) -> bool {
        false
    }

    /// The CRLs of the CAs above the signing certificate that this back end
    /// can fetch (DER): for a minted intermediate, the CRL of the Vault
    /// issuer that certified it. Clients that check CRLs check every CA of
    /// the chain, so castellan publishes these beside its own.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the back end cannot be reached.
    async fn upstream_crls(&self) -> Result<Vec<Vec<u8>>, Error> {
        Ok(Vec::new())
    }
}

/// What a [`Source`] loaded, not yet judged fit for use.
#[derive(Debug)]
pub struct Loaded {
    pub backend: Backend,
    pub material: Material,
}

/// The two kinds of back end.
#[derive(Clone, Debug)]
pub enum Backend {
    /// castellan builds every certificate; the back end signs it.
    Signs(Arc<dyn KeySigner>),
    /// The back end issues the leaf from the CSR; castellan decides the
    /// identity and checks the result.
    Issues(Arc<dyn LeafIssuer>),
}

/// Certificates that came with a signing key.
#[derive(Clone, Debug)]
pub struct Material {
    pub cert: CertificateDer<'static>,
    /// Other certificates offered as the chain, in any order.
    pub chain: Vec<CertificateDer<'static>>,
    /// The roots that came with the material (used when `ca.roots_file` is unset).
    pub roots: Vec<CertificateDer<'static>>,
    /// Names the signing certificate in messages.
    pub cert_source: String,
    /// Changes whenever the material does; `None` for sources not polled.
    pub fingerprint: Option<Fingerprint>,
    /// CRLs of the CAs above the signing certificate the back end fetched
    /// with it (DER; see [`Source::upstream_crls`]).
    pub upstream_crls: Vec<Vec<u8>>,
}

/// A key that signs DER TBSCertificates.
#[async_trait::async_trait]
pub trait KeySigner: Send + Sync + std::fmt::Debug {
    /// The signature it makes, which fixes the certificate's `signatureAlgorithm`.
    fn algorithm(&self) -> KeyAlgorithm;

    /// Signs `tbs`. Blocking work (an HSM call, RSA) must not run on the
    /// caller's async worker.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the key cannot be reached now.
    async fn sign(&self, tbs: &[u8]) -> Result<Signature, Error>;

    /// False while the back end is known not to work (castellan then fails
    /// requests at once instead of waiting for it).
    fn healthy(&self) -> bool;

    /// Checks the back end without traffic and repairs what it can
    /// (reconnects, logs in again). castellan calls it every few seconds.
    async fn probe(&self);

    /// castellan found a signature that does not verify under the
    /// certificate: look the key up again (by label, id, version), so that
    /// the right key can be found once it is back.
    async fn reresolve(&self) {}

    /// The key's DER SubjectPublicKeyInfo, when the back end can tell.
    fn public_key_der(&self) -> Option<Vec<u8>>;

    /// The line requests wait in for this key, when the back end bounds
    /// its calls (see [`crate::queue`]).
    fn queue(&self) -> Option<Arc<QueueStats>> {
        None
    }
}

/// A signature and which key made it, as far as the back end knows.
#[derive(Clone, Debug)]
pub struct Signature {
    /// The signature as a certificate carries it (DER for ECDSA).
    pub value: Vec<u8>,
    pub key: KeyBinding,
}

/// How sure a back end can be that a signature came from the key it
/// loaded. castellan verifies every signature it cannot tie to a key it
/// has already proven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyBinding {
    /// Made with the key as resolved for the n-th time (a key in memory is
    /// resolved once; an HSM key again whenever its handle is looked up
    /// anew). A handle names one object, whose key material cannot change,
    /// so castellan proves each resolution once.
    Resolved(u64),
    /// Each call names the key anew (a remote key by name and version), so
    /// any signature may come from another key.
    PerCall,
}

/// A back end that issues leaves itself.
#[async_trait::async_trait]
pub trait LeafIssuer: Send + Sync + std::fmt::Debug {
    /// Issues a leaf for `order`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the issuer cannot be reached;
    /// [`Error::Failed`] when it refuses.
    async fn issue(&self, order: &LeafOrder<'_>) -> Result<IssuedLeaf, Error>;

    /// As [`KeySigner::healthy`].
    fn healthy(&self) -> bool;

    /// As [`KeySigner::probe`].
    async fn probe(&self);

    /// The back end's own CRL for the issuer, DER, when it keeps one
    /// (castellan cannot sign one with a key it never holds).
    ///
    /// # Errors
    /// As [`LeafIssuer::issue`].
    async fn crl(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(None)
    }

    /// As [`KeySigner::queue`].
    fn queue(&self) -> Option<Arc<QueueStats>> {
        None
    }
}

/// What castellan asks an issuing back end for.
#[derive(Clone, Copy, Debug)]
pub struct LeafOrder<'a> {
    /// The requester's CSR, PEM: the issuer takes its public key.
    pub csr_pem: &'a str,
    /// The one URI SAN the leaf must carry (castellan's decision).
    pub uri_san: &'a str,
    pub ttl: Duration,
}

/// What an issuing back end returned, before castellan checks it.
#[derive(Clone, Debug)]
pub struct IssuedLeaf {
    pub der: Vec<u8>,
    /// What the back end said that an operator should know.
    pub warnings: Vec<String>,
}
