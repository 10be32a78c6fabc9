//! The crypto ceiling: how many (CSR verification + leaf signature) pairs
//! this machine's cores can do per second with the same key types, with
//! nothing else around them: the bound any CA's issuance rate sits under.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use aws_lc_rs::{
    rand::SystemRandom,
    rsa::KeySize,
    signature::{
        self, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, RsaKeyPair, UnparsedPublicKey,
        VerificationAlgorithm,
    },
};
use der::{Decode, Encode};
use x509_cert::request::CertReq;

use spiffe::TrustDomain;

use crate::{
    ca::{self, CaHandle, Rules},
    cli::KeyType,
    config,
    identity::ServiceAccount,
    issuer::Issuer,
    policy::{self, TtlRules},
};

/// Operations per second.
#[derive(Debug)]
pub(super) struct Ceiling {
    pub(super) verify_per_core: f64,
    pub(super) sign_per_core: f64,
    pub(super) issuances_per_core: f64,
    pub(super) issuances_all_cores: f64,
    /// The server's crypto in one TLS 1.3 handshake with a new client
    /// (X25519 key share, ECDSA P-256 CertificateVerify), on one core.
    pub(super) handshakes_per_core: f64,
}

/// A typical TBSCertificate is about this long.
const TBS_LEN: usize = 420;

pub(super) async fn measure(
    csr_pem: &str,
    ca: KeyType,
    threads: usize,
    each: Duration,
) -> Result<Ceiling, String> {
    let (_, der) = der::pem::decode_vec(csr_pem.as_bytes()).map_err(|e| e.to_string())?;
    let req = CertReq::from_der(&der).map_err(|e| e.to_string())?;
    let message = req.info.to_der().map_err(|e| e.to_string())?;
    let sig = req.signature.raw_bytes().to_vec();
    let key = req.info.public_key.subject_public_key.raw_bytes().to_vec();
    let rsa = req.info.public_key.algorithm.oid == const_oid::db::rfc5912::RSA_ENCRYPTION;
    let verify_alg: &'static dyn VerificationAlgorithm = if rsa {
        &signature::RSA_PKCS1_2048_8192_SHA256
    } else {
        &signature::ECDSA_P256_SHA256_ASN1
    };
    let signer = Signer::new(ca)?;
    let csr = (message, sig, key);

    let verify = per_second(each, || {
        let _ = UnparsedPublicKey::new(verify_alg, &csr.2).verify(&csr.0, &csr.1);
    });
    let sign = per_second(each, || signer.sign());
    let pair = |_: usize| {
        let signer = Signer::new(ca);
        let csr = csr.clone();
        tokio::task::spawn_blocking(move || {
            let Ok(signer) = signer else { return 0.0 };
            per_second(each, || {
                let _ = UnparsedPublicKey::new(verify_alg, &csr.2).verify(&csr.0, &csr.1);
                signer.sign();
            })
        })
    };
    let single = pair(0).await.map_err(|e| e.to_string())?;
    let mut all = 0.0;
    for h in (0..threads).map(pair).collect::<Vec<_>>() {
        all += h.await.map_err(|e| e.to_string())?;
    }
    Ok(Ceiling {
        verify_per_core: verify,
        sign_per_core: sign,
        issuances_per_core: single,
        issuances_all_cores: all,
        handshakes_per_core: handshakes(each)?,
    })
}

/// Full handshakes per second on one core, counting only the server's
/// public-key work: an X25519 key pair and agreement with the client's
/// share, and one ECDSA P-256 signature over the transcript (the serving
/// key's type). Symmetric crypto and hashing are left out: a floor.
fn handshakes(each: Duration) -> Result<f64, String> {
    use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey as Peer, X25519};
    let rng = SystemRandom::new();
    let client = EphemeralPrivateKey::generate(&X25519, &rng).map_err(|e| e.to_string())?;
    let client_share = client.compute_public_key().map_err(|e| e.to_string())?;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|e| e.to_string())?;
    let serving = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
        .map_err(|e| e.to_string())?;
    // TLS 1.3's CertificateVerify input: 64 spaces, the context string, a
    // zero byte and the transcript hash.
    let mut signed = vec![0x20; 64];
    signed.extend_from_slice(b"TLS 1.3, server CertificateVerify\0");
    signed.extend_from_slice(&[0x5a; 32]);
    Ok(per_second(each, || {
        let Ok(server) = EphemeralPrivateKey::generate(&X25519, &rng) else {
            return;
        };
        let _ = server.compute_public_key();
        let _ = agreement::agree_ephemeral(
            server,
            Peer::new(&X25519, client_share.as_ref()),
            (),
            |_secret| Ok(()),
        );
        let _ = serving.sign(&rng, &signed);
    }))
}

/// Requests per second through castellan's own pipeline for `csrs`, signed
/// with the material in `ca_dir`, on one task: the work a request costs
/// apart from TLS, HTTP/2 and gRPC.
pub(super) async fn pipeline(
    ca_dir: &Path,
    csrs: &[String],
    each: Duration,
) -> Result<f64, String> {
    let trust_domain = TrustDomain::new("cluster.local").map_err(|e| e.to_string())?;
    let source = ca::source_for(
        &config::Signer::File(castellan_file::Config {
            dir: Some(ca_dir.to_owned()),
            ..Default::default()
        }),
        &trust_domain,
        config::Issuance::default().max_ttl_secs,
    );
    let issuance = config::Issuance::default();
    let rules = Rules {
        trust_domain: trust_domain.clone(),
        default_ttl: Duration::from_secs(issuance.default_ttl_secs),
        min_ttl: Duration::from_secs(issuance.min_ttl_secs),
        max_ttl: Duration::from_secs(issuance.max_ttl_secs),
        roots: None,
        counters: crate::metrics::Metrics::new()
            .map_err(|e| e.to_string())?
            .ca_counters(),
        waived: Vec::new(),
        trust: None,
        crl: None,
        clock: crate::clock::Clock::system(),
    };
    let ca = CaHandle::load(source, rules)
        .await
        .map_err(|e| e.to_string())?;
    let issuer = Issuer::new(
        Arc::new(ca),
        Duration::from_secs(issuance.not_before_skew_secs),
        Duration::from_secs(issuance.min_ttl_secs),
    );
    let ttl = TtlRules::from(&issuance);
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < each {
        let csr = crate::csr::verify(&csrs[n % csrs.len()]).map_err(|e| e.to_string())?;
        let uri = csr.uri().unwrap_or_default().to_owned();
        let (ns, sa) = uri
            .strip_prefix("spiffe://cluster.local/ns/")
            .and_then(|rest| rest.split_once("/sa/"))
            .ok_or("unexpected identity")?;
        let account = ServiceAccount {
            namespace: ns.to_owned(),
            name: sa.to_owned(),
        };
        let identity = account
            .spiffe_id(&trust_domain)
            .map_err(|e| e.to_string())?;
        let approved = policy::check(csr, &identity, 0, &ttl).map_err(|e| e.to_string())?;
        issuer.issue(&approved).await.map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn per_second(each: Duration, mut op: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < each {
        for _ in 0..32 {
            op();
        }
        n += 32;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

enum Signer {
    Ec(EcdsaKeyPair, SystemRandom),
    Rsa(RsaKeyPair, SystemRandom),
}

impl Signer {
    fn new(kind: KeyType) -> Result<Self, String> {
        Ok(match kind {
            KeyType::EcP256 => Self::Ec(
                EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
                    .map_err(|e| e.to_string())?,
                SystemRandom::new(),
            ),
            KeyType::Rsa2048 => Self::Rsa(
                RsaKeyPair::generate(KeySize::Rsa2048).map_err(|e| e.to_string())?,
                SystemRandom::new(),
            ),
        })
    }

    fn sign(&self) {
        let tbs = [0x5a; TBS_LEN];
        match self {
            Self::Ec(k, rng) => {
                let _ = k.sign(rng, &tbs);
            }
            Self::Rsa(k, rng) => {
                let mut out = vec![0; k.public_modulus_len()];
                let _ = k.sign(&signature::RSA_PKCS1_SHA256, rng, &tbs, &mut out);
            }
        }
    }
}
