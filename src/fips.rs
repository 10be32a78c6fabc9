//! Which cryptographic module castellan runs on, and the FIPS build's
//! promise: built with `--features fips`, castellan uses only the AWS-LC
//! FIPS module (its own signing and verification through aws-lc-rs, every
//! TLS endpoint through rustls's FIPS provider) and refuses to start unless
//! the module passed its power-on self-tests and is in FIPS mode. `serve`
//! and `castellan check` refuse alike, through [`require`].

/// The module this binary was built with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// "AWS-LC FIPS" (the FIPS module) or "AWS-LC".
    pub name: &'static str,
    pub version: &'static str,
    /// The module passed its self-tests and runs in FIPS mode.
    pub fips_mode: bool,
}

/// Why a FIPS build will not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "this is a FIPS build, but the AWS-LC FIPS module is not in FIPS mode ({0}); castellan \
         runs only in FIPS mode: use the binary as built, on a CPU and kernel the module supports"
    )]
    NotFipsMode(&'static str),
    #[error(
        "this is a FIPS build, but {0} is not a FIPS configuration; report this as a castellan bug"
    )]
    NotFipsTls(&'static str),
}

/// Whether this binary is the FIPS build.
pub const BUILD: bool = cfg!(feature = "fips");

/// The module in use now.
pub fn module() -> Module {
    Module {
        name: if BUILD { "AWS-LC FIPS" } else { "AWS-LC" },
        version: version(),
        fips_mode: aws_lc_rs::try_fips_mode().is_ok(),
    }
}

#[cfg(feature = "fips")]
fn version() -> &'static str {
    text(aws_lc_fips_sys::AWSLC_VERSION_NUMBER_STRING)
}

#[cfg(not(feature = "fips"))]
fn version() -> &'static str {
    text(aws_lc_sys::AWSLC_VERSION_NUMBER_STRING)
}

/// A C string constant without its NUL.
fn text(c: &'static [u8]) -> &'static str {
    std::str::from_utf8(c.strip_suffix(&[0]).unwrap_or(c)).unwrap_or("unknown")
}

/// In a FIPS build: the module is in FIPS mode and every TLS configuration
/// castellan builds (`tls`, named in the error) is a FIPS one. In the
/// default build: nothing to require.
///
/// # Errors
/// [`Error`] naming what is not FIPS.
pub fn require(tls: &[(&'static str, bool)]) -> Result<(), Error> {
    if !BUILD {
        return Ok(());
    }
    aws_lc_rs::try_fips_mode().map_err(Error::NotFipsMode)?;
    match tls.iter().find(|(_, fips)| !fips) {
        Some((what, _)) => Err(Error::NotFipsTls(what)),
        None => Ok(()),
    }
}

impl std::fmt::Display for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} (FIPS mode: {})",
            self.name,
            self.version,
            if self.fips_mode { "on" } else { "off" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_is_named_and_its_mode_follows_the_build() {
        let m = module();
        assert!(
            m.version.starts_with(if BUILD { "4." } else { "5." }),
            "{m}"
        );
        assert_eq!(m.fips_mode, BUILD, "{m}");
        assert!(require(&[("x", true)]).is_ok());
        assert_eq!(require(&[("x", false)]).is_err(), BUILD);
    }
}
