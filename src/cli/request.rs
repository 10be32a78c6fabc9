//! `castellan request`: what istio-agent does at start-up, from the shell.
//! A fresh key, a CSR for the token's identity, CreateCertificate, and a
//! chain verified against the root the user trusts (never the one returned).

use std::{path::PathBuf, process::ExitCode};

use der::Decode;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use serde::Deserialize;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use x509_cert::ext::pkix::{SubjectAltName, name::GeneralName};

use super::{KeyType, pki::generate_key};
use crate::{
    clock::date,
    proto::{
        IstioCertificateRequest, istio_certificate_service_client::IstioCertificateServiceClient,
    },
    verify,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The CA, e.g. https://127.0.0.1:15012.
    #[arg(long)]
    addr: String,
    /// The name the CA's serving certificate must carry, when it is not the
    /// host of --addr (through `kubectl port-forward`:
    /// castellan.istio-system.svc).
    #[arg(long)]
    server_name: Option<String>,
    /// PEM root certificate(s) to verify the CA and the issued chain with.
    #[arg(long)]
    root: PathBuf,
    /// A service-account token (a file, as Kubernetes projects it).
    #[arg(long)]
    token: PathBuf,
    #[arg(long, value_enum, default_value_t = KeyType::EcP256)]
    key_type: KeyType,
    /// Requested validity in seconds; 0 asks for the CA's default.
    #[arg(long, default_value_t = 0)]
    ttl: i64,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Sent as the `clusterid` header.
    #[arg(long, default_value = "Kubernetes")]
    cluster_id: String,
    /// Sent as the `CertSigner` metadata (istio-agent's
    /// `ISTIO_META_CERT_SIGNER`): the issuer asked for, which castellan
    /// accepts only when the caller's namespace is bound to it.
    #[arg(long, default_value = "")]
    cert_signer: String,
    /// Write cert-chain.pem, key.pem and root-cert.pem here.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub(super) async fn run(args: Args) -> ExitCode {
    match request(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("castellan request: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn request(args: &Args) -> Result<(), String> {
    let root_pem =
        std::fs::read(&args.root).map_err(|e| format!("{}: {e}", args.root.display()))?;
    let token = std::fs::read_to_string(&args.token)
        .map_err(|e| format!("{}: {e}", args.token.display()))?
        .trim()
        .to_owned();
    let identity = identity_of(&token, &args.trust_domain)?;
    let (key, csr) = workload_csr(&identity, args.key_type).map_err(|e| format!("CSR: {e}"))?;
    let mut req = request_for(&csr, args.ttl, &token, &args.cluster_id)?;
    set_cert_signer(&mut req, &args.cert_signer);
    let mut client = connect(&args.addr, args.server_name.as_deref(), &root_pem).await?;
    let response = client
        .create_certificate(req)
        .await
        .map_err(|s| format!("{}: {}", s.code().description(), s.message()))?
        .into_inner();

    let roots = CertificateDer::pem_slice_iter(&root_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", args.root.display()))?;
    let leaf = check_chain(&response.cert_chain, &roots, &identity)?;
    let cert = x509_cert::Certificate::from_der(&leaf).map_err(|e| e.to_string())?;
    let tbs = cert.tbs_certificate();
    println!("identity   {identity}");
    println!("serial     {}", tbs.serial_number());
    println!(
        "not after  {}",
        date(tbs.validity().not_after.to_system_time())
    );
    println!(
        "chain      {} elements, verified against {}",
        response.cert_chain.len(),
        args.root.display()
    );

    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
        let last = response.cert_chain.last().cloned().unwrap_or_default();
        let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
        for (name, contents, secret) in [
            (
                "cert-chain.pem",
                response.cert_chain.concat().as_str(),
                false,
            ),
            ("key.pem", key_pem.as_str(), true),
            ("root-cert.pem", last.as_str(), false),
        ] {
            super::demo::write(&out.join(name), contents, secret)
                .map_err(|e| format!("{name}: {e}"))?;
        }
        println!(
            "wrote      {}/{{cert-chain,key,root-cert}}.pem",
            out.display()
        );
    }
    Ok(())
}

/// A tonic client over TLS that trusts only `root_pem` and expects the
/// server to be `server_name` (by default the host of `addr`).
///
/// # Errors
/// When the address is malformed or the connection fails.
pub async fn connect(
    addr: &str,
    server_name: Option<&str>,
    root_pem: &[u8],
) -> Result<IstioCertificateServiceClient<Channel>, String> {
    let endpoint =
        Endpoint::from_shared(addr.to_owned()).map_err(|e| format!("--addr {addr}: {e}"))?;
    let host = match server_name {
        Some(name) => name.to_owned(),
        None => endpoint
            .uri()
            .host()
            .unwrap_or("localhost")
            .trim_matches(['[', ']'])
            .to_owned(),
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root_pem))
        .domain_name(host);
    let channel = endpoint
        .tls_config(tls)
        .map_err(|e| format!("TLS: {e}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("connecting to {addr}: {}", causes(&e)))?;
    Ok(IstioCertificateServiceClient::new(channel))
}

/// A CreateCertificate request carrying istio-agent's headers and metadata.
///
/// # Errors
/// When the token or cluster id is not a valid header value.
pub fn request_for(
    csr: &str,
    ttl: i64,
    token: &str,
    cluster_id: &str,
) -> Result<tonic::Request<IstioCertificateRequest>, String> {
    let mut metadata = prost_types::Struct::default();
    metadata.fields.insert(
        crate::proto::CERT_SIGNER.into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(String::new())),
        },
    );
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr.to_owned(),
        validity_duration: ttl,
        metadata: Some(metadata),
    });
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token is not a valid header value".to_owned())?;
    req.metadata_mut().insert("authorization", bearer);
    req.metadata_mut().insert(
        "clusterid",
        cluster_id
            .parse()
            .map_err(|_| "bad --cluster-id".to_owned())?,
    );
    Ok(req)
}

/// Names the issuer asked for, as `ISTIO_META_CERT_SIGNER` makes
/// istio-agent do (empty: none).
pub fn set_cert_signer(req: &mut tonic::Request<IstioCertificateRequest>, value: &str) {
    if let Some(m) = req.get_mut().metadata.as_mut() {
        m.fields.insert(
            crate::proto::CERT_SIGNER.into(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(value.to_owned())),
            },
        );
    }
}

/// A key and a CSR shaped as istio-agent makes them: one URI SAN; RSA keys
/// get the `O=` subject Go's template produces, EC keys an empty one.
///
/// # Errors
/// When key generation or CSR encoding fails.
pub fn workload_csr(identity: &str, key_type: KeyType) -> Result<(KeyPair, String), rcgen::Error> {
    let key = generate_key(key_type)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if key_type == KeyType::Rsa2048 {
        dn.push(DnType::OrganizationName, "");
    }
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(identity.try_into()?)];
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key, csr))
}

/// Checks the response shape Istio clients rely on and verifies the leaf;
/// returns the leaf's DER.
fn check_chain(
    chain: &[String],
    roots: &[CertificateDer<'static>],
    identity: &str,
) -> Result<Vec<u8>, String> {
    if chain.len() < 2 {
        return Err(format!(
            "cert_chain has {} elements; Istio needs at least 2",
            chain.len()
        ));
    }
    let first = |pem: &str| -> Result<CertificateDer<'static>, String> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("bad PEM in cert_chain: {e}"))
    };
    let leaf = first(&chain[0])?;
    let intermediates = chain[1..chain.len() - 1]
        .iter()
        .map(|p| first(p))
        .collect::<Result<Vec<_>, _>>()?;
    verify::chain(
        &leaf,
        &intermediates,
        roots,
        verify::Usage::Client,
        std::time::SystemTime::now(),
    )
    .map_err(|e| format!("issued chain does not verify against the given root: {e}"))?;
    let cert = x509_cert::Certificate::from_der(&leaf).map_err(|e| e.to_string())?;
    let uris: Vec<String> = cert
        .tbs_certificate()
        .get_extension::<SubjectAltName>()
        .map_err(|e| e.to_string())?
        .map(|(_, san)| san.0)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| match n {
            GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
            _ => None,
        })
        .collect();
    if uris != [identity] {
        return Err(format!(
            "the certificate names [{}], not `{identity}`",
            uris.join(", ")
        ));
    }
    Ok(leaf.to_vec())
}

#[derive(Deserialize)]
struct TokenClaims {
    sub: Option<String>,
}

/// The SPIFFE ID a token's service account maps to.
fn identity_of(token: &str, trust_domain: &str) -> Result<String, String> {
    let claims: TokenClaims = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|e| format!("the token is not a JWT: {e}"))?;
    let sub = claims.sub.ok_or("the token has no `sub`")?;
    let sa = crate::identity::ServiceAccount::from_username(&sub).map_err(|e| e.to_string())?;
    Ok(format!(
        "spiffe://{trust_domain}/ns/{}/sa/{}",
        sa.namespace, sa.name
    ))
}

/// An error and its causes in words: "transport error: invalid peer
/// certificate: UnknownIssuer", not a debug dump.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}
