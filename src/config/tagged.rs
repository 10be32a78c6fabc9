//! The `[signer]` and `[[authn]]` sections, chosen by their `type` key.
//! serde's own tagged enums buffer the section and report a wrong value at
//! the section header without naming the key; here the section is read
//! whole, then the chosen type's fields one by one, so an error names the
//! key (`signer.pool_size`).

use serde::{Deserialize, Deserializer, de::Error as _};

use super::{Authn, Signer, VaultSigner};

/// Reads `table` as `T`, naming the key at fault in `section`.
fn fields<'de, T: Deserialize<'de>, E: serde::de::Error>(
    section: &str,
    table: toml::Table,
) -> Result<T, E> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." || path.is_empty() {
            section.to_owned()
        } else {
            format!("{section}.{path}")
        };
        E::custom(format!(
            "`{key}`: {}",
            super::human(&e.into_inner().to_string())
        ))
    })
}

/// The section's `type`, removed from it.
fn kind<E: serde::de::Error>(
    section: &str,
    table: &mut toml::Table,
    kinds: &str,
) -> Result<String, E> {
    match table.remove("type") {
        Some(toml::Value::String(t)) => Ok(t),
        Some(other) => Err(E::custom(format!(
            "`{section}.type` must be a string ({kinds}), not {}",
            other.type_str()
        ))),
        None => Err(E::custom(format!(
            "`{section}.type` is missing: say which kind this section is ({kinds})"
        ))),
    }
}

impl<'de> Deserialize<'de> for Signer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const KINDS: &str = "\"file\", \"pkcs11\" or \"vault\"";
        let mut table = toml::Table::deserialize(d)?;
        match kind::<D::Error>("signer", &mut table, KINDS)?.as_str() {
            "file" => Ok(Self::File(fields("signer", table)?)),
            "pkcs11" => Ok(Self::Pkcs11(fields("signer", table)?)),
            "vault" => {
                let mint_keys = mint_keys::<D::Error>(&mut table)?;
                Ok(Self::Vault(Box::new(VaultSigner {
                    vault: fields("signer", table)?,
                    mint_keys,
                })))
            }
            other => Err(D::Error::custom(format!(
                "`signer.type` = \"{other}\" is not a signer: use {KINDS}"
            ))),
        }
    }
}

/// `[signer.mint.pkcs11]`, taken out of the Vault section: where minted
/// keys are made is the PKCS#11 back end's to read, not Vault's.
fn mint_keys<E: serde::de::Error>(
    table: &mut toml::Table,
) -> Result<Option<castellan_pkcs11::KeyStore>, E> {
    let Some(toml::Value::Table(mint)) = table.get_mut("mint") else {
        return Ok(None);
    };
    match mint.remove("pkcs11") {
        None => Ok(None),
        Some(toml::Value::Table(keys)) => fields("signer.mint.pkcs11", keys).map(Some),
        Some(other) => Err(E::custom(format!(
            "`signer.mint.pkcs11` must be a section ([signer.mint.pkcs11]), not {}",
            other.type_str()
        ))),
    }
}

impl<'de> Deserialize<'de> for Authn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const KINDS: &str = "\"jwt\", \"tokenreview\" or \"client_cert\"";
        let mut table = toml::Table::deserialize(d)?;
        match kind::<D::Error>("authn", &mut table, KINDS)?.as_str() {
            "jwt" => Ok(Self::Jwt(fields("authn", table)?)),
            "tokenreview" => Ok(Self::TokenReview(fields("authn", table)?)),
            "client_cert" => Ok(Self::ClientCert(fields("authn", table)?)),
            other => Err(D::Error::custom(format!(
                "`authn.type` = \"{other}\" is not an authenticator: use {KINDS}"
            ))),
        }
    }
}
