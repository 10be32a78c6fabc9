//! `[[issuers]]` and `[binding]`: several certificate authorities in one
//! castellan, each bound to the namespaces whose workloads it signs for.
//! The top-level `[signer]`, `[ca]` and `[trust]` are the main issuer
//! (named `default`), which also signs castellan's own serving certificate
//! and istiod's; without a `[binding]` it serves every namespace no other
//! issuer is bound to. Each issuer becomes a whole configuration of its own
//! (its signer, roots and record; everything else shared), so it starts as
//! the same unit a single-issuer castellan does.

#[path = "issuer_rules.rs"]
mod rules;

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Ca, Config, Error, Signer, Trust};

/// The main issuer's name, in metrics, logs and `--issuer`.
pub const MAIN_ISSUER: &str = "default";

/// Which workloads an issuer signs for.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Binding {
    /// Namespaces bound to this issuer, by name.
    pub namespaces: Vec<String>,
    /// …and by label: every namespace carrying all these labels (a name
    /// bound elsewhere wins; two label bindings matching one namespace
    /// refuse its requests). Needs `[kubernetes]`, to watch namespaces.
    pub namespace_labels: BTreeMap<String, String>,
    /// `CertSigner` values a request from a bound namespace may carry:
    /// bare names (`payments`) or Istio's RA form (`<domain>/<name>`, which
    /// also accepts the bare `<name>` istio-agent sends). The issuer's own
    /// name is always accepted; no `CertSigner` uses the binding.
    pub cert_signers: Vec<String>,
    /// Other issuers whose roots this issuer's workloads also receive (a
    /// shared gateway, a migration): the response's root element and the
    /// namespaces' trust bundle hold both.
    pub trusts: Vec<String>,
}

/// One `[[issuers]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSection {
    /// Its name: in metrics (`issuer`), logs and `castellan revoke --issuer`.
    pub name: String,
    /// As [`Binding::namespaces`].
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// As [`Binding::namespace_labels`].
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
    /// As [`Binding::cert_signers`].
    #[serde(default)]
    pub cert_signers: Vec<String>,
    /// As [`Binding::trusts`].
    #[serde(default)]
    pub trusts: Vec<String>,
    /// The trust-bundle ConfigMap (and ClusterTrustBundle) name its
    /// namespaces read, for a control plane of its own (Istio's
    /// `values.global.trustBundleName`). Unset:
    /// `kubernetes.trust_bundle.configmap_name`.
    pub bundle_name: Option<String>,
    pub signer: Signer,
    #[serde(default)]
    pub ca: Ca,
    pub trust: Option<Trust>,
}

/// One issuer as castellan starts it: its name, its binding (`None`: the
/// main issuer serving every unbound namespace) and the configuration its
/// unit starts from.
#[derive(Clone, Debug)]
pub struct Unit {
    pub name: String,
    pub binding: Option<Binding>,
    /// Its own trust-bundle name, if not the main one's.
    pub bundle_name: Option<String>,
    pub config: Config,
}

// === impl Config ===

impl Config {
    /// Every issuer, the main one first.
    pub fn units(&self) -> Vec<Unit> {
        let mut units = vec![Unit {
            name: MAIN_ISSUER.to_owned(),
            binding: self.binding.clone(),
            bundle_name: None,
            config: self.clone(),
        }];
        for section in &self.issuers {
            let mut config = self.clone();
            config.signer = section.signer.clone();
            config.ca = section.ca.clone();
            config.trust = section.trust.clone();
            // Only the main issuer signs castellan's and istiod's certificates.
            if let Some(k) = &mut config.kubernetes {
                k.istiod_cert = None;
            }
            config.issuers = Vec::new();
            config.binding = None;
            config.workloads_only = true;
            units.push(Unit {
                name: section.name.clone(),
                binding: Some(Binding {
                    namespaces: section.namespaces.clone(),
                    namespace_labels: section.namespace_labels.clone(),
                    cert_signers: section.cert_signers.clone(),
                    trusts: section.trusts.clone(),
                }),
                bundle_name: section.bundle_name.clone(),
                config,
            });
        }
        units
    }

    /// The issuer rules: names, bindings that decide each namespace once,
    /// `trusts` naming issuers without a loop, no key shared, and each
    /// issuer's own sections valid.
    pub(super) fn validate_issuers(&self) -> Result<(), Error> {
        if self.issuers.is_empty() {
            return match &self.binding {
                Some(b) if !b.trusts.is_empty() => rules::issuer_rule(
                    "binding.trusts",
                    "names other issuers, and no [[issuers]] is configured".into(),
                ),
                _ => Ok(()),
            };
        }
        let units = self.units();
        let names = rules::names(&units)?;
        rules::bindings(&units, self.kubernetes.is_some())?;
        rules::trusts(&units, &names)?;
        rules::shared_keys(&units)?;
        rules::shared_records(&units)?;
        rules::bundle_names(&units, self.kubernetes.as_ref())?;
        for (unit, section) in units.iter().skip(1).zip(&self.issuers) {
            unit.config
                .validate_unit()
                .map_err(|source| Error::Issuer {
                    name: section.name.clone(),
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }
}
