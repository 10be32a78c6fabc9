//! For lifecycle tests that put castellan days or weeks ahead on a manual
//! clock: a PKI made on that clock (a root, an enterprise CA of any life),
//! and a back end that makes a new intermediate under that CA at every
//! load, as mint mode does — keys in memory, signing as the file signer.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use castellan_signer::{Backend, Fingerprint, Loaded, Material, Source, async_trait};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::CertificateDer;
use spiffe::TrustDomain;

use super::Rules;
use crate::clock::Clock;
use crate::metrics::IntegrityCounters;

/// A CA made with rcgen, dated on a test's clock.
pub(crate) struct TestCa {
    pub(crate) params: CertificateParams,
    pub(crate) key: KeyPair,
    pub(crate) der: CertificateDer<'static>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

impl TestCa {
    /// A CA named `cn` valid from `from` for `life`, signed by `issuer`
    /// (self-signed when `None`).
    pub(crate) fn new(
        cn: &str,
        from: SystemTime,
        life: Duration,
        path_len: Option<u8>,
        issuer: Option<&Self>,
    ) -> Self {
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let mut params =
            CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(path_len.map_or(
            BasicConstraints::Unconstrained,
            BasicConstraints::Constrained,
        ));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.use_authority_key_identifier_extension = issuer.is_some();
        params.not_before = (from - Duration::from_secs(60)).into();
        params.not_after = (from + life).into();
        let cert = match issuer {
            Some(i) => params.signed_by(&key, &Issuer::from_params(&i.params, &i.key)),
            None => params.self_signed(&key),
        }
        .unwrap_or_else(|e| panic!("{e}"));
        Self {
            der: cert.der().clone(),
            params,
            key,
        }
    }

    /// A CRL this CA signed, valid from `from` until `until`, PEM.
    pub(crate) fn crl(&self, from: SystemTime, until: SystemTime) -> String {
        rcgen::CertificateRevocationListParams {
            this_update: from.into(),
            next_update: until.into(),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&Issuer::from_params(&self.params, &self.key))
        .and_then(|c| c.pem())
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Mints a new intermediate of `life` under `parent` at every load, on
/// `clock` — whatever the parent's own end (as a Vault issuer with
/// `leaf_not_after_behavior = permit` would).
#[derive(Debug)]
pub(crate) struct Minting {
    pub(crate) parent: Arc<TestCa>,
    pub(crate) root: CertificateDer<'static>,
    pub(crate) life: Duration,
    pub(crate) clock: Clock,
    pub(crate) minted: AtomicU64,
}

#[async_trait]
impl Source for Minting {
    fn describe(&self) -> String {
        "a test minter".into()
    }

    async fn load(&self) -> Result<Loaded, castellan_signer::Error> {
        let n = self.minted.fetch_add(1, Ordering::Relaxed);
        let int = TestCa::new(
            &format!("castellan test generation {n}"),
            self.clock.now(),
            self.life,
            Some(0),
            Some(&self.parent),
        );
        let key = castellan_file::FileKey::from_pem(
            int.key.serialize_pem().as_bytes(),
            std::path::Path::new("generation key"),
        )
        .map_err(castellan_signer::Error::config)?;
        Ok(Loaded {
            backend: Backend::Signs(castellan_file::key_signer(key)),
            material: Material {
                cert: int.der.clone(),
                chain: vec![self.parent.der.clone()],
                roots: vec![self.root.clone()],
                cert_source: format!("generation {n}"),
                fingerprint: None,
                upstream_crls: Vec::new(),
            },
        })
    }

    async fn fingerprint(&self) -> Result<Option<Fingerprint>, castellan_signer::Error> {
        Ok(None)
    }

    fn self_rotating(&self) -> bool {
        true
    }
}

/// The rules a day-long-leaf castellan judges by, on `clock`.
pub(crate) fn rules(clock: Clock, max_ttl: Duration, min_ttl: Duration) -> Rules {
    let metrics = crate::metrics::Metrics::new().unwrap_or_else(|e| panic!("{e}"));
    let counters: IntegrityCounters = metrics.ca_counters();
    Rules {
        trust_domain: TrustDomain::new("cluster.local").unwrap_or_else(|e| panic!("{e}")),
        default_ttl: max_ttl,
        min_ttl,
        max_ttl,
        roots: None,
        counters,
        waived: Vec::new(),
        trust: None,
        crl: None,
        clock,
    }
}

/// A fresh key's SubjectPublicKeyInfo, to certify.
pub(crate) fn spki() -> Vec<u8> {
    let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    rcgen::PublicKeyData::subject_public_key_info(&key)
}
