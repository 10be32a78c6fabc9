//! The rules a parsed configuration must meet, each failure naming the key
//! and what to change.

use super::{Authn, Config, Error, MAX_DURATION_SECS, Signer};

pub(super) fn invalid(key: &'static str, problem: &str) -> Result<(), Error> {
    Err(Error::Invalid {
        key,
        problem: problem.to_owned(),
    })
}

impl Config {
    pub(super) fn validate(&self) -> Result<(), Error> {
        self.bounded()?;
        self.validate_issuance()?;
        self.validate_server()?;
        self.validate_trust()?;
        self.validate_signer()?;
        self.validate_authn()?;
        self.validate_kubernetes()?;
        self.validate_impersonation()?;
        self.validate_issuers()
    }

    /// What one issuer's own sections must meet (its signer, roots and
    /// record); the rest of the file is the main configuration's.
    pub(super) fn validate_unit(&self) -> Result<(), Error> {
        self.validate_trust()?;
        self.validate_signing()
    }

    /// `[issuance]`: the lifetimes in order.
    fn validate_issuance(&self) -> Result<(), Error> {
        let i = &self.issuance;
        if i.max_ttl_secs == 0 {
            return invalid("issuance.max_ttl_secs", "must be above 0");
        }
        if i.min_ttl_secs == 0 || i.min_ttl_secs > i.max_ttl_secs {
            return invalid(
                "issuance.min_ttl_secs",
                "must be above 0 and at most issuance.max_ttl_secs",
            );
        }
        if i.default_ttl_secs < i.min_ttl_secs || i.default_ttl_secs > i.max_ttl_secs {
            return invalid(
                "issuance.default_ttl_secs",
                "must be between issuance.min_ttl_secs and issuance.max_ttl_secs",
            );
        }
        Ok(())
    }

    /// `[server]` and `[server.tls]`.
    fn validate_server(&self) -> Result<(), Error> {
        if self.server.max_in_flight == 0 {
            return invalid("server.max_in_flight", "must be above 0");
        }
        if self.server.max_connections == 0 {
            return invalid("server.max_connections", "must be above 0");
        }
        if self.server.max_streams_per_connection == 0 {
            return invalid("server.max_streams_per_connection", "must be above 0");
        }
        if self
            .server
            .workers
            .is_some_and(|w| !(1..=super::MAX_WORKERS).contains(&w))
        {
            return invalid(
                "server.workers",
                &format!(
                    "must be between 1 and {} (unset: one per core)",
                    super::MAX_WORKERS
                ),
            );
        }
        if self.server.request_timeout_secs == 0 {
            return invalid("server.request_timeout_secs", "must be above 0");
        }
        let tls = &self.server.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return invalid(
                "server.tls.cert_file",
                "and server.tls.key_file must be set together (or neither, to have castellan issue its own)",
            );
        }
        if tls.cert_file.is_none() && tls.dns_names.is_empty() && tls.ip_addresses.is_empty() {
            return invalid(
                "server.tls.dns_names",
                "is empty: list the host names clients dial (the host of Istio's caAddress), \
                 or set server.tls.cert_file and key_file",
            );
        }
        if tls.ttl_secs < 600 {
            return invalid("server.tls.ttl_secs", "must be at least 600");
        }
        Ok(())
    }

    /// `[trust]`: one store, the record's pace, other CAs' roots.
    // Long: the [trust] rules, one per key, each naming its key and the fix.
    fn validate_trust(&self) -> Result<(), Error> {
        if let Some(t) = &self.trust {
            match (&t.state_file, &t.state_configmap, &self.kubernetes) {
                (Some(_), Some(_), _) | (None, None, _) => {
                    return invalid(
                        "trust.state_file",
                        "or trust.state_configmap: set exactly one (a file for one replica, a \
                         ConfigMap shared by every replica)",
                    );
                }
                (None, Some(_), None) => {
                    return invalid(
                        "trust.state_configmap",
                        "needs a [kubernetes] section: the cluster the ConfigMap is kept in",
                    );
                }
                (Some(_), None, _) | (None, Some(_), Some(_)) => {}
            }
            if let Some(crl) = &t.crl
                && (crl.validity_secs < 10 || crl.validity_secs > MAX_DURATION_SECS)
            {
                return invalid("trust.crl.validity_secs", "must be between 10 and a year");
            }
            if t.record_interval_secs == 0 || t.record_interval_secs > 3600 {
                return invalid(
                    "trust.record_interval_secs",
                    "must be between 1 and 3600 (an hour)",
                );
            }
            let unrecorded = t.max_unrecorded_secs();
            if unrecorded < t.record_interval_secs.saturating_mul(2)
                || unrecorded > MAX_DURATION_SECS
            {
                return Err(Error::Invalid {
                    key: "trust.max_unrecorded_secs",
                    problem: format!(
                        "is {unrecorded} s: it must be at least two record intervals ({} s, \
                         trust.record_interval_secs = {}) and at most a year",
                        t.record_interval_secs.saturating_mul(2),
                        t.record_interval_secs
                    ),
                });
            }
            for e in &t.external {
                if let Err(problem) = e.signs_until_unix() {
                    return invalid("trust.external.signs_until", &problem);
                }
                if e.max_leaf_ttl_secs == 0 || e.max_leaf_ttl_secs > MAX_DURATION_SECS {
                    return invalid(
                        "trust.external.max_leaf_ttl_secs",
                        "must be between 1 and a year: the longest lifetime of that CA's leaves \
                         (istiod: its MAX_WORKLOAD_CERT_TTL, 90 days at most)",
                    );
                }
            }
            if t.soak_secs.is_some_and(|s| s > MAX_DURATION_SECS) {
                return invalid("trust.soak_secs", "must be at most a year (31536000)");
            }
        }
        Ok(())
    }

    /// `[signer]`: its own rules, then what the rest of the file needs of
    /// what it can do.
    fn validate_signer(&self) -> Result<(), Error> {
        let tls = &self.server.tls;
        self.validate_signing()?;
        let caps = self.signer.capabilities();
        if !caps.builds_certificates() && tls.cert_file.is_none() {
            return Err(Error::Invalid {
                key: "server.tls.cert_file",
                problem: format!(
                    "is required with {}: the back end issues SPIFFE certificates only, so \
                     castellan cannot issue its own serving certificate there",
                    caps.name()
                ),
            });
        }
        Ok(())
    }

    /// The signer's own rules and the roots and lifetimes it needs.
    fn validate_signing(&self) -> Result<(), Error> {
        match &self.signer {
            Signer::File(f) => f.validate()?,
            Signer::Pkcs11(p) => p.validate()?,
            Signer::Vault(v) => {
                v.vault.validate()?;
                if let Some(keys) = &v.mint_keys {
                    keys.validate().map_err(Error::MintKeys)?;
                }
            }
        }
        let caps = self.signer.capabilities();
        if caps.needs_configured_roots() && self.ca.roots_file.is_none() {
            return Err(Error::Invalid {
                key: "ca.roots_file",
                problem: format!(
                    "is required with {}: the enterprise root(s) the signing intermediate must \
                     chain to (the back end hands castellan no root it could take its word for)",
                    caps.name()
                ),
            });
        }
        if let Some(ttl_secs) = caps.minted_ttl_secs() {
            self.validate_minted(ttl_secs)?;
        }
        Ok(())
    }

    /// A minted intermediate lives long enough for castellan's own TLS
    /// certificates and for every leaf issued before the next rotation.
    fn validate_minted(&self, ttl_secs: u64) -> Result<(), Error> {
        let (i, tls) = (&self.issuance, &self.server.tls);
        let own_tls = !self.workloads_only && tls.cert_file.is_none()
            || self
                .kubernetes
                .as_ref()
                .is_some_and(|k| k.istiod_cert.is_some());
        let serving = crate::profile::MIN_SERVING_LIFETIME
            .as_secs()
            .saturating_mul(2);
        if own_tls && ttl_secs < serving {
            return Err(Error::Invalid {
                key: "signer.mint.ttl_secs",
                problem: format!(
                    "is {} s: castellan's own TLS certificates (its listener's, istiod's) \
                     need {} s of an intermediate's life at half life; raise it to at \
                     least {serving}, or give the listener server.tls.cert_file and \
                     leave kubernetes.istiod_cert unset",
                    ttl_secs,
                    crate::profile::MIN_SERVING_LIFETIME.as_secs()
                ),
            });
        }
        if ttl_secs < i.max_ttl_secs.saturating_mul(2) {
            return Err(Error::Invalid {
                key: "signer.mint.ttl_secs",
                problem: format!(
                    "is {} s, less than twice issuance.max_ttl_secs ({} s): a leaf issued \
                     just before a rotation would be cut short by the intermediate's \
                     expiry; raise it to at least {} or lower issuance.max_ttl_secs",
                    ttl_secs,
                    i.max_ttl_secs,
                    i.max_ttl_secs.saturating_mul(2)
                ),
            });
        }

        Ok(())
    }

    /// `[[authn]]`: at least one, each valid.
    fn validate_authn(&self) -> Result<(), Error> {
        if self.authn.is_empty() {
            return invalid(
                "authn",
                "is empty: add at least one [[authn]] section (type = \"jwt\")",
            );
        }
        for a in &self.authn {
            match a {
                Authn::Jwt(jwt) => jwt.validate()?,
                Authn::TokenReview(tr) => tr.validate()?,
                Authn::ClientCert(_) => {}
            }
        }
        Ok(())
    }

    /// `[kubernetes]`, and what its writers need of the signer.
    fn validate_kubernetes(&self) -> Result<(), Error> {
        let caps = self.signer.capabilities();
        if let Some(k) = &self.kubernetes {
            k.validate(self.issuance.not_before_skew_secs)?;
            if k.istiod_cert.is_some() && !caps.builds_certificates() {
                return Err(Error::Invalid {
                    key: "kubernetes.istiod_cert",
                    problem: format!(
                        "needs a signer castellan builds certificates with (file, pkcs11, Vault \
                         Transit or mint): {} issues SPIFFE certificates only",
                        caps.name()
                    ),
                });
            }
        }
        Ok(())
    }

    /// `[impersonation]`: node accounts, and the cluster they are read from.
    fn validate_impersonation(&self) -> Result<(), Error> {
        if self.impersonation.max_staleness_secs < 2 {
            return invalid("impersonation.max_staleness_secs", "must be at least 2");
        }
        for account in &self.impersonation.trusted_node_accounts {
            if account.split('/').filter(|p| !p.is_empty()).count() != 2 {
                return invalid(
                    "impersonation.trusted_node_accounts",
                    "entries are `namespace/serviceaccount`, e.g. \"istio-system/ztunnel\"",
                );
            }
        }
        if !self.impersonation.trusted_node_accounts.is_empty()
            && !self
                .authn
                .iter()
                .any(|a| matches!(a, Authn::TokenReview(_)))
        {
            return invalid(
                "impersonation.trusted_node_accounts",
                "needs a [[authn]] type = \"tokenreview\" section: node authorization reads pods from that cluster",
            );
        }
        Ok(())
    }
}

impl Config {
    /// Every duration below [`MAX_DURATION_SECS`], so no time arithmetic
    /// on configured values can overflow.
    fn bounded(&self) -> Result<(), Error> {
        let mut durations = vec![
            ("issuance.default_ttl_secs", self.issuance.default_ttl_secs),
            ("issuance.min_ttl_secs", self.issuance.min_ttl_secs),
            ("issuance.max_ttl_secs", self.issuance.max_ttl_secs),
            (
                "issuance.not_before_skew_secs",
                self.issuance.not_before_skew_secs,
            ),
            (
                "server.request_timeout_secs",
                self.server.request_timeout_secs,
            ),
            (
                "server.shutdown_grace_secs",
                self.server.shutdown_grace_secs,
            ),
            ("server.tls.ttl_secs", self.server.tls.ttl_secs),
            ("ca.reload_interval_secs", self.ca.reload_interval_secs),
            ("authn_cache.max_age_secs", self.authn_cache.max_age_secs),
            (
                "impersonation.max_staleness_secs",
                self.impersonation.max_staleness_secs,
            ),
            (
                "authn_cache.negative_max_age_secs",
                self.authn_cache.negative_max_age_secs,
            ),
        ];
        for a in &self.authn {
            match a {
                Authn::Jwt(j) => {
                    durations.push(("authn.jwks_refresh_secs", j.jwks_refresh_secs));
                    durations.push(("authn.clock_skew_secs", j.clock_skew_secs));
                }
                Authn::TokenReview(t) => durations.push(("authn.timeout_secs", t.timeout_secs)),
                Authn::ClientCert(_) => {}
            }
        }
        for (key, secs) in durations {
            if secs > MAX_DURATION_SECS {
                return Err(Error::Invalid {
                    key,
                    problem: format!("is {secs} s; at most {MAX_DURATION_SECS} (a year)"),
                });
            }
        }
        Ok(())
    }
}
