//! Finding the signing material on disk, in either of the layouts Kubernetes
//! users already have, and reading it as one consistent set.

use std::path::{Path, PathBuf};

use castellan_signer::Fingerprint;
use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

use crate::{Config, Error, FileKey};

/// The files one signing set is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub chain: Option<PathBuf>,
    pub root: Option<PathBuf>,
}

/// One signing set as read from disk, not yet judged fit for use.
#[derive(Debug)]
pub struct Material {
    pub key: FileKey,
    /// The signing certificate: the first certificate of the cert file.
    pub cert: CertificateDer<'static>,
    /// Every other certificate of the cert and chain files, in file order,
    /// without duplicates and without the signing certificate.
    pub chain: Vec<CertificateDer<'static>>,
    /// The certificates of the root file, if there is one.
    pub roots: Vec<CertificateDer<'static>>,
    /// SHA-256 over every file read, to notice when they change.
    pub fingerprint: Fingerprint,
}

// === impl Paths ===

impl Paths {
    /// Resolves the configuration to concrete files.
    ///
    /// # Errors
    /// [`Error::NoPaths`] when neither a directory nor cert+key are set;
    /// [`Error::UnknownLayout`] when the directory holds neither layout.
    pub fn resolve(config: &Config) -> Result<Self, Error> {
        match (&config.dir, &config.cert_file, &config.key_file) {
            (_, Some(cert), Some(key)) => Ok(Self {
                cert: cert.clone(),
                key: key.clone(),
                chain: config.chain_file.clone(),
                root: config.root_file.clone(),
            }),
            (Some(dir), None, None) => Self::detect(dir),
            _ => Err(Error::Config(crate::ConfigError::NoPaths)),
        }
    }

    fn detect(dir: &Path) -> Result<Self, Error> {
        let present = |name: &str| dir.join(name).exists().then(|| dir.join(name));
        if let (Some(cert), Some(key)) = (present("ca-cert.pem"), present("ca-key.pem")) {
            return Ok(Self {
                cert,
                key,
                chain: present("cert-chain.pem"),
                root: present("root-cert.pem"),
            });
        }
        if let (Some(cert), Some(key)) = (present("tls.crt"), present("tls.key")) {
            return Ok(Self {
                cert,
                key,
                chain: None,
                root: present("ca.crt"),
            });
        }
        Err(Error::UnknownLayout(dir.to_owned()))
    }

    /// SHA-256 over the contents of every file, cheap enough to poll: a
    /// Kubernetes Secret update swaps all files at once through a symlink, so
    /// comparing contents (not modification times) is what notices it.
    ///
    /// # Errors
    /// [`Error::Read`] when a file cannot be read.
    pub fn fingerprint(&self) -> Result<Fingerprint, Error> {
        Ok(self.read_all()?.1)
    }

    /// Reads and parses every file.
    ///
    /// # Errors
    /// Any [`Error`] naming the file at fault.
    pub fn load(&self) -> Result<Material, Error> {
        let (contents, fingerprint) = self.read_all()?;
        let [cert_pem, key_pem, chain_pem, root_pem] = contents;
        let mut certs = parse_certs(&cert_pem, &self.cert)?;
        let cert = certs.remove(0);
        if let Some(path) = &self.chain {
            certs.extend(parse_certs(&chain_pem, path)?);
        }
        let mut chain: Vec<CertificateDer<'static>> = Vec::with_capacity(certs.len());
        for c in certs {
            if c != cert && !chain.contains(&c) {
                chain.push(c);
            }
        }
        let roots = match &self.root {
            Some(path) => parse_certs(&root_pem, path)?,
            None => Vec::new(),
        };
        Ok(Material {
            key: FileKey::from_pem(&key_pem, &self.key)?,
            cert,
            chain,
            roots,
            fingerprint,
        })
    }

    fn read_all(&self) -> Result<(Contents, Fingerprint), Error> {
        let read = |path: Option<&PathBuf>| -> Result<Zeroizing<Vec<u8>>, Error> {
            match path {
                Some(p) => std::fs::read(p)
                    .map(Zeroizing::new)
                    .map_err(|source| Error::Read {
                        path: p.clone(),
                        source,
                    }),
                None => Ok(Zeroizing::new(Vec::new())),
            }
        };
        let contents = [
            read(Some(&self.cert))?,
            read(Some(&self.key))?,
            read(self.chain.as_ref())?,
            read(self.root.as_ref())?,
        ];
        let fingerprint = Fingerprint::of(contents.iter().map(|c| c.as_slice()));
        Ok((contents, fingerprint))
    }
}

/// The cert, key, chain and root files, in that order; absent files are empty.
type Contents = [Zeroizing<Vec<u8>>; 4];

fn parse_certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    Ok(castellan_signer::parse_certs(pem, path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_needs_dir_or_cert_and_key() {
        assert!(matches!(
            Paths::resolve(&Config::default()),
            Err(Error::Config(crate::ConfigError::NoPaths))
        ));
        let only_cert = Config {
            cert_file: Some("c".into()),
            ..Config::default()
        };
        assert!(matches!(
            Paths::resolve(&only_cert),
            Err(Error::Config(crate::ConfigError::NoPaths))
        ));
        let explicit = Config {
            cert_file: Some("c".into()),
            key_file: Some("k".into()),
            root_file: Some("r".into()),
            ..Config::default()
        };
        let p = Paths::resolve(&explicit).unwrap();
        assert_eq!((p.chain, p.root), (None, Some(PathBuf::from("r"))));
    }

    #[test]
    fn detects_either_layout() {
        let dir = std::env::temp_dir().join(format!("castellan-layout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = Config {
            dir: Some(dir.clone()),
            ..Config::default()
        };
        assert!(matches!(Paths::resolve(&cfg), Err(Error::UnknownLayout(_))));
        for f in ["tls.crt", "tls.key", "ca.crt"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let p = Paths::resolve(&cfg).unwrap();
        assert_eq!(p.cert, dir.join("tls.crt"));
        assert_eq!(p.root, Some(dir.join("ca.crt")));
        for f in [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem",
        ] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let p = Paths::resolve(&cfg).unwrap();
        assert_eq!(
            p.cert,
            dir.join("ca-cert.pem"),
            "cacerts wins when both are present"
        );
        assert_eq!(p.chain, Some(dir.join("cert-chain.pem")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
