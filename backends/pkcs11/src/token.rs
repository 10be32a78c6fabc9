//! Finding things on the token: the module, the slot holding the token
//! (by label or serial, never by slot number), logging in, the key and its
//! public half, a certificate object.

use cryptoki::{
    context::Pkcs11,
    error::{Error as CkError, RvError},
    object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle},
    session::{Session, UserType},
    slot::Slot,
    types::AuthPin,
};

use crate::{Config, Error, encoding};

/// The process's context for the configured module (`module.rs`), the
/// configured token's slot in it, and the module's epoch.
pub(crate) fn connect(config: &Config) -> Result<(Pkcs11, Slot, u64), Error> {
    let (ctx, epoch) = crate::module::context(&config.module)?;
    let slot = find_slot(&ctx, config)?;
    Ok((ctx, slot, epoch))
}

/// The slot holding the configured token.
pub(crate) fn find_slot(ctx: &Pkcs11, config: &Config) -> Result<Slot, Error> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| Error::Unavailable(format!("C_GetSlotList: {e}")))?;
    let mut seen = Vec::new();
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        let (label, serial) = (info.label().trim(), info.serial_number().trim());
        let label_ok = config.token_label.as_deref().is_none_or(|l| l == label);
        let serial_ok = config.token_serial.as_deref().is_none_or(|s| s == serial);
        if label_ok && serial_ok {
            return Ok(slot);
        }
        seen.push(format!("\"{label}\" (serial {serial})"));
    }
    Err(Error::Unavailable(format!(
        "no token {} in {}; tokens present: {}",
        describe(&[
            ("labelled", config.token_label.as_deref()),
            ("with serial", config.token_serial.as_deref()),
        ]),
        config.module.display(),
        if seen.is_empty() {
            "none".to_owned()
        } else {
            seen.join(", ")
        }
    )))
}

/// Logs the application in; already being logged in is success.
pub(crate) fn login(session: &Session, pin: &AuthPin) -> Result<(), Error> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(
            RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange,
            _,
        )) => Err(Error::Config(
            "the token rejected the PIN (CKR_PIN_INCORRECT): check pin_file / pin_env".into(),
        )),
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(Error::Config(
            "the user PIN is locked (CKR_PIN_LOCKED): unlock it with the SO PIN".into(),
        )),
        Err(e) => Err(Error::Unavailable(format!("C_Login: {e}"))),
    }
}

/// The template selecting the configured key (or its public half).
fn key_template(config: &Config, class: ObjectClass) -> Result<Vec<Attribute>, Error> {
    let mut t = vec![Attribute::Class(class)];
    if let Some(label) = &config.key_label {
        t.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = &config.key_id {
        t.push(Attribute::Id(hex(id)?));
    }
    Ok(t)
}

/// The one private key matching the configuration.
pub(crate) fn find_key(session: &Session, config: &Config) -> Result<ObjectHandle, Error> {
    let found = session
        .find_objects(&key_template(config, ObjectClass::PRIVATE_KEY)?)
        .map_err(|e| Error::Unavailable(format!("C_FindObjects: {e}")))?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::Config(format!(
            "no private key {} on the token (is the PIN for the right token?)",
            key_names(config)
        ))),
        many => Err(Error::Config(format!(
            "{} private keys {}; set key_id too",
            many.len(),
            key_names(config)
        ))),
    }
}

/// What kind of key it is, and its SubjectPublicKeyInfo when the token
/// publishes one (EC keys need their public object; RSA private keys carry
/// modulus and exponent).
pub(crate) enum KeyKind {
    Ec {
        curve: der::asn1::ObjectIdentifier,
        spki: Option<Vec<u8>>,
    },
    Rsa {
        spki: Vec<u8>,
    },
}

pub(crate) fn describe_key(
    session: &Session,
    key: ObjectHandle,
    config: &Config,
) -> Result<KeyKind, Error> {
    let attrs = session
        .get_attributes(
            key,
            &[
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
            ],
        )
        .map_err(|e| Error::Unavailable(format!("C_GetAttributeValue: {e}")))?;
    let (mut kind, mut params, mut modulus, mut exponent) = (None, None, None, None);
    for a in attrs {
        match a {
            Attribute::KeyType(k) => kind = Some(k),
            Attribute::EcParams(p) => params = Some(p),
            Attribute::Modulus(m) => modulus = Some(m),
            Attribute::PublicExponent(e) => exponent = Some(e),
            _ => {}
        }
    }
    let der = |e: der::Error| Error::Config(format!("key attributes: {e}"));
    match (kind, params, modulus, exponent) {
        (Some(KeyType::EC), Some(params), _, _) => {
            use der::Decode;
            let curve: der::asn1::ObjectIdentifier =
                der::asn1::ObjectIdentifier::from_der(&params).map_err(der)?;
            let point = public_ec_point(session, config)?;
            let spki = point
                .map(|p| encoding::ec_spki(&params, &p))
                .transpose()
                .map_err(der)?;
            Ok(KeyKind::Ec { curve, spki })
        }
        (Some(KeyType::RSA), _, Some(m), Some(e)) => Ok(KeyKind::Rsa {
            spki: encoding::rsa_spki(&m, &e).map_err(der)?,
        }),
        (kind, ..) => Err(Error::Config(format!(
            "unsupported key type ({}); use EC P-256/P-384 or RSA",
            kind.map_or_else(|| "not stated".to_owned(), |k| k.to_string())
        ))),
    }
}

/// `labelled "ca-key" with id 01`, from the settings that are set.
fn key_names(config: &Config) -> String {
    describe(&[
        ("labelled", config.key_label.as_deref()),
        ("with id", config.key_id.as_deref()),
    ])
}

fn describe(parts: &[(&str, Option<&str>)]) -> String {
    parts
        .iter()
        .filter_map(|(what, v)| v.map(|v| format!("{what} \"{v}\"")))
        .collect::<Vec<_>>()
        .join(" and ")
}

fn public_ec_point(session: &Session, config: &Config) -> Result<Option<Vec<u8>>, Error> {
    let found = session
        .find_objects(&key_template(config, ObjectClass::PUBLIC_KEY)?)
        .map_err(|e| Error::Unavailable(format!("C_FindObjects: {e}")))?;
    let [public] = found.as_slice() else {
        return Ok(None);
    };
    let attrs = session
        .get_attributes(*public, &[AttributeType::EcPoint])
        .map_err(|e| Error::Unavailable(format!("C_GetAttributeValue: {e}")))?;
    Ok(attrs.into_iter().find_map(|a| match a {
        Attribute::EcPoint(p) => Some(p),
        _ => None,
    }))
}

/// The DER of the certificate object labelled `label`.
pub(crate) fn certificate(session: &Session, label: &str) -> Result<Vec<u8>, Error> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(|e| Error::Unavailable(format!("C_FindObjects: {e}")))?;
    let [cert] = found.as_slice() else {
        return Err(Error::Config(format!(
            "{} certificate objects labelled `{label}` on the token",
            found.len()
        )));
    };
    let attrs = session
        .get_attributes(*cert, &[AttributeType::Value])
        .map_err(|e| Error::Unavailable(format!("C_GetAttributeValue: {e}")))?;
    attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::Value(v) => Some(v),
            _ => None,
        })
        .ok_or_else(|| Error::Config(format!("certificate `{label}` has no value")))
}

/// `CKA_ID` bytes from hex, optionally `0x`-prefixed.
pub(crate) fn hex(text: &str) -> Result<Vec<u8>, crate::ConfigError> {
    let bad = || crate::ConfigError::KeyIdNotHex(text.to_owned());
    let digits = text.strip_prefix("0x").unwrap_or(text).as_bytes();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return Err(bad());
    }
    digits
        .chunks_exact(2)
        .map(|pair| {
            let nibble = |c: u8| char::from(c).to_digit(16);
            match (nibble(pair[0]), nibble(pair[1])) {
                (Some(h), Some(l)) => u8::try_from(h * 16 + l).map_err(|_| bad()),
                _ => Err(bad()),
            }
        })
        .collect()
}

/// The user PIN from `pin_file` or `pin_env`, held as a secret.
pub(crate) fn read_pin(config: &Config) -> Result<AuthPin, Error> {
    let pin = match (&config.pin_file, &config.pin_env) {
        (Some(path), None) => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("pin_file {}: {e}", path.display())))?,
            );
            text.trim_end_matches(['\n', '\r']).to_owned()
        }
        (None, Some(var)) => {
            std::env::var(var).map_err(|_| Error::Config(format!("pin_env: ${var} is not set")))?
        }
        _ => {
            return Err(Error::Config(
                "set exactly one of pin_file and pin_env".into(),
            ));
        }
    };
    Ok(AuthPin::new(pin.into()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_ids_are_hex_bytes_and_never_panic() {
        assert_eq!(super::hex("0a1B").unwrap(), [0x0a, 0x1b]);
        assert_eq!(super::hex("0x01").unwrap(), [0x01]);
        for bad in ["", "0", "zz", "0g", "é1", "1é", "€€", "0x"] {
            assert!(super::hex(bad).is_err(), "{bad:?}");
        }
    }
}
