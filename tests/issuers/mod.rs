//! Several issuers in one castellan: each namespace's workloads are signed
//! by the issuer bound to it, whatever `CertSigner` says; each issuer's
//! chain ends at its own roots (and those it trusts); one issuer's rotation
//! leaves the others untouched.

use std::{path::Path, time::Duration};

use castellan::cli::request;
use tonic::Code;

use crate::{
    kubernetes::{san, token, with_kube},
    support::{
        TestCa, csr, eventually, id, issuer_of,
        kube::FakeKube,
        pki::{self, Ca, KeyAlg},
        pki_certs, verify,
    },
};

mod backends;
mod mesh;
mod operations;
mod routing;

/// An `[[issuers]]` entry signing from files under its own intermediate of
/// `root`, re-read every second.
fn file_issuer(dir: &Path, name: &str, root: &Ca, binding: &str) -> String {
    write_intermediate(dir, name, root, "1");
    format!(
        "[[issuers]]\nname = \"{name}\"\n{binding}\n[issuers.signer]\ntype = \"file\"\ndir = \"{}\"\n[issuers.ca]\nreload_interval_secs = 1\n",
        dir.join(name).display()
    )
}

/// A new intermediate of `root` in `dir/name` (Istio's cacerts layout).
fn write_intermediate(dir: &Path, name: &str, root: &Ca, generation: &str) {
    let int = root.intermediate(
        &format!("{name} Intermediate {generation}"),
        KeyAlg::EcP256,
        |_| {},
    );
    pki::write_cacerts(&dir.join(name), &int, &[&int, root], &root.pem);
}

/// Sends a CSR for `ns/sa` with its own token, naming `cert_signer`.
async fn send(
    ca: &TestCa,
    kube: &FakeKube,
    ns: &str,
    sa: &str,
    cert_signer: &str,
) -> Result<Vec<String>, tonic::Status> {
    let (_, csr) = csr::istio_agent(&id(ns, sa));
    let t = token(ca, kube, ns, sa, None);
    let mut req = request::request_for(&csr, 3600, &t, "Kubernetes").unwrap();
    request::set_cert_signer(&mut req, cert_signer);
    ca.client()
        .await
        .create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain)
}

/// The subjects of the certificates in a response's root element.
fn roots_in(chain: &[String]) -> std::collections::BTreeSet<Vec<u8>> {
    pki_certs(chain.last().unwrap())
}

struct Tenants {
    kube: FakeKube,
    ca: TestCa,
    payments: Ca,
    edge: Ca,
    dir: tempfile::TempDir,
}

/// The main issuer (files, "Test Root") serving every other namespace;
/// `payments` under its own root, accepting Istio's RA-form CertSigner;
/// `edge` (istio-ingress) under a third root, trusting `payments`.
async fn tenants() -> Tenants {
    let kube = FakeKube::start().await;
    kube.put_pod(
        "istio-system",
        "ztunnel-n1",
        "zt-uid-1",
        "ztunnel",
        "node-1",
        "Running",
    );
    kube.put_pod("payments", "api-1", "api-uid", "api", "node-1", "Running");
    let dir = tempfile::tempdir().unwrap();
    let payments = Ca::root("Payments Root", KeyAlg::EcP256);
    let edge = Ca::root("Edge Root", KeyAlg::EcP384);
    let extra = format!(
        "[impersonation]\ntrusted_node_accounts = [\"istio-system/ztunnel\"]\n{}{}",
        file_issuer(
            dir.path(),
            "payments",
            &payments,
            "namespaces = [\"payments\"]\ncert_signers = [\"clusterissuers.istio.io/payments\"]",
        ),
        file_issuer(
            dir.path(),
            "edge",
            &edge,
            "namespaces = [\"istio-ingress\"]\ntrusts = [\"payments\"]",
        ),
    );
    let ca = with_kube(&kube, "", &extra).await;
    Tenants {
        kube,
        ca,
        payments,
        edge,
        dir,
    }
}

/// `[issuers.trust]` for the issuer just written: its own record, and a
/// CRL set completed by its root's CRL.
fn record(dir: &Path, name: &str, root: &Ca) -> String {
    let crl = dir.join(format!("{name}-root-crl.pem"));
    std::fs::write(&crl, root.crl(time::Duration::days(7), &[])).unwrap();
    format!(
        "[issuers.trust]\nstate_file = \"{}\"\nrecord_interval_secs = 1\n[issuers.trust.crl]\nvalidity_secs = 600\nupstream_files = [\"{}\"]\n",
        dir.join(format!("{name}-state.json")).display(),
        crl.display()
    )
}

fn configmap(kube: &FakeKube, ns: &str, name: &str, key: &str) -> Option<String> {
    kube.object(castellan_testkit::kube::Kind::ConfigMap, ns, name)
        .and_then(|cm| cm["data"][key].as_str().map(str::to_owned))
}

/// `[signer]` TOML rewritten as the last `[[issuers]]` entry's.
fn as_issuer_signer(signer: &str) -> String {
    signer.replace("[signer", "[issuers.signer")
}
