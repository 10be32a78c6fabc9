//! Independent verdicts on what castellan returns: webpki against the
//! test's own root (never the response's), and `openssl verify -x509_strict`
//! against the chain the response carries.

use std::{io::Write, process::Command};

use rustls_pki_types::{CertificateDer, UnixTime, pem::PemObject};

/// Whether the leaf of `chain` verifies, for both TLS usages, through the
/// intermediates of `chain` to `root_der`.
pub fn webpki(chain: &[String], root_der: &[u8]) -> Result<(), String> {
    let parse =
        |p: &String| CertificateDer::from_pem_slice(p.as_bytes()).map_err(|e| e.to_string());
    let leaf = parse(chain.first().ok_or("empty chain")?)?;
    let ints = chain[1..chain.len().saturating_sub(1)]
        .iter()
        .map(parse)
        .collect::<Result<Vec<_>, _>>()?;
    let root = CertificateDer::from(root_der.to_vec());
    let anchor = webpki::anchor_from_trusted_cert(&root).map_err(|e| format!("{e:?}"))?;
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| format!("{e:?}"))?;
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            std::slice::from_ref(&anchor),
            &ints,
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .map_err(|e| format!("{e:?}"))?;
    }
    Ok(())
}

/// `openssl verify -x509_strict` of the leaf with the response's own
/// intermediates (untrusted) and root element (trusted).
pub fn openssl_strict(chain: &[String]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let (leaf, rest) = chain.split_first().ok_or("empty chain")?;
    let (roots, ints) = rest.split_last().ok_or("no root element")?;
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path
    };
    let leaf = write("leaf.pem", leaf);
    let ints = write("ints.pem", &ints.concat());
    let roots = write("roots.pem", roots);
    let mut cmd = Command::new("openssl");
    cmd.args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
        .arg(&roots);
    if !rest[..rest.len() - 1].is_empty() {
        cmd.arg("-untrusted").arg(&ints);
    }
    let out = cmd.arg(&leaf).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Both verdicts; panics with the reason if a returned chain is bad.
pub fn assert_good(chain: &[String], root_der: &[u8], what: &str) {
    if let Err(e) = webpki(chain, root_der) {
        panic!("{what}: castellan returned a leaf that does not verify (webpki): {e}");
    }
    if let Err(e) = openssl_strict(chain) {
        panic!("{what}: castellan returned a leaf openssl refuses: {e}");
    }
}

/// Envoy's verdict, as `openssl verify -crl_check_all` gives it: the leaf
/// of `chain` (a response: leaf, intermediates, root element) through its
/// intermediates to `roots`, with the CRL file `crls` — a current CRL
/// needed for every CA of the chain, the root's included.
pub fn envoy(chain: &[String], roots: &str, crls: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f);
    std::fs::write(p("leaf.pem"), &chain[0]).unwrap();
    std::fs::write(p("ints.pem"), chain[1..chain.len() - 1].concat()).unwrap();
    std::fs::write(p("roots.pem"), roots).unwrap();
    std::fs::write(p("crl.pem"), crls).unwrap();
    let out = Command::new("openssl")
        .args(["verify", "-x509_strict", "-crl_check_all", "-CAfile"])
        .arg(p("roots.pem"))
        .arg("-untrusted")
        .arg(p("ints.pem"))
        .arg("-CRLfile")
        .arg(p("crl.pem"))
        .arg(p("leaf.pem"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(())
    } else {
        Err(text)
    }
}

/// ztunnel's verdict: rustls-webpki with ztunnel's revocation policy —
/// every CA of the chain checked, the first CRL whose issuer *name*
/// matches taken, an issuer with no CRL allowed, expiry ignored.
pub fn ztunnel(chain: &[String], root_der: &[u8], crls: &str) -> Result<(), String> {
    use rustls_pki_types::CertificateRevocationListDer;
    let parse =
        |p: &String| CertificateDer::from_pem_slice(p.as_bytes()).map_err(|e| e.to_string());
    let leaf = parse(&chain[0])?;
    let ints = chain[1..chain.len() - 1]
        .iter()
        .map(parse)
        .collect::<Result<Vec<_>, _>>()?;
    let crls: Vec<webpki::CertRevocationList<'static>> =
        CertificateRevocationListDer::pem_slice_iter(crls.as_bytes())
            .map(|der| {
                let der = der.map_err(|e| e.to_string())?;
                webpki::OwnedCertRevocationList::from_der(der.as_ref())
                    .map(webpki::CertRevocationList::from)
                    .map_err(|e| format!("{e:?}"))
            })
            .collect::<Result<_, String>>()?;
    let refs: Vec<&webpki::CertRevocationList<'_>> = crls.iter().collect();
    let revocation = webpki::RevocationOptionsBuilder::new(&refs)
        .map_err(|e| format!("{e:?}"))?
        .with_depth(webpki::RevocationCheckDepth::Chain)
        .with_status_policy(webpki::UnknownStatusPolicy::Allow)
        .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
        .build();
    let root = CertificateDer::from(root_der.to_vec());
    let anchor = webpki::anchor_from_trusted_cert(&root).map_err(|e| format!("{e:?}"))?;
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| format!("{e:?}"))?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        std::slice::from_ref(&anchor),
        &ints,
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        Some(revocation),
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("{e:?}"))
}
