//! Getting and keeping a Vault token: log in (or read the token file), renew
//! at about two thirds of the TTL, and log in again when the token cannot be
//! renewed or renewal stops extending it (max TTL reached). Never per request.

use std::{
    path::PathBuf,
    sync::{Arc, Weak},
    time::Duration,
};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::{Auth, Error, client::Vault, setting};

/// A root or periodic token without TTL is still checked this often (a
/// token file may have been replaced).
const NO_TTL_RECHECK: Duration = Duration::from_secs(60);
/// A token is looked at again at least this often, whatever its TTL.
const MAX_RECHECK: Duration = Duration::from_secs(24 * 3600);
/// After a failed renewal or login, try again this soon.
const RETRY: Duration = Duration::from_secs(2);

/// A Vault token and what Vault said about its life.
#[derive(Clone)]
pub(crate) struct Token {
    secret: Arc<Zeroizing<String>>,
    /// Zero: no expiry (root tokens).
    ttl: Duration,
    renewable: bool,
    obtained: Instant,
}

/// The configured login method.
pub(crate) enum Login {
    Token {
        file: Option<PathBuf>,
    },
    Kubernetes {
        role: String,
        jwt_file: PathBuf,
        mount: String,
    },
    Approle {
        role_id: RoleId,
        secret_id_file: PathBuf,
        mount: String,
    },
}

pub(crate) enum RoleId {
    Inline(String),
    File(PathBuf),
}

// === impl Token ===

impl Token {
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    pub(crate) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.secret, &other.secret) || *self.secret == *other.secret
    }

    pub(crate) fn from_auth(auth: &Value) -> Result<Self, Error> {
        let secret = auth["client_token"]
            .as_str()
            .ok_or_else(|| Error::Invalid("login answer without auth.client_token".into()))?;
        Ok(Self {
            secret: Arc::new(Zeroizing::new(secret.to_owned())),
            ttl: Duration::from_secs(auth["lease_duration"].as_u64().unwrap_or(0)),
            renewable: auth["renewable"].as_bool().unwrap_or(false),
            obtained: Instant::now(),
        })
    }

    /// When to act next: two thirds into the TTL, jittered by ±10%.
    fn next_check(&self) -> Instant {
        if self.ttl.is_zero() {
            return Instant::now() + NO_TTL_RECHECK;
        }
        let mut b = [0u8; 1];
        let _ = aws_lc_rs::rand::fill(&mut b);
        let f = 0.6 + 0.13 * f64::from(b[0]) / 255.0;
        // Vault's lease duration is outside input: a huge one is a day.
        let wait = self.ttl.min(MAX_RECHECK).mul_f64(f);
        self.obtained
            .checked_add(wait)
            .unwrap_or_else(|| Instant::now() + MAX_RECHECK)
    }
}

// === impl Login ===

impl Login {
    pub(crate) fn from_config(auth: &Auth) -> Result<Self, Error> {
        Ok(match auth {
            Auth::Token { token_file } => Self::Token {
                file: token_file.clone(),
            },
            Auth::Kubernetes {
                role,
                jwt_file,
                mount,
            } => Self::Kubernetes {
                role: role.clone(),
                jwt_file: jwt_file.clone(),
                mount: mount.clone(),
            },
            Auth::Approle {
                role_id,
                role_id_file,
                secret_id_file,
                mount,
            } => Self::Approle {
                role_id: match (role_id, role_id_file) {
                    (Some(id), None) => RoleId::Inline(id.clone()),
                    (None, Some(f)) => RoleId::File(f.clone()),
                    _ => {
                        return Err(Error::Config(
                            "auth: set exactly one of role_id and role_id_file".into(),
                        ));
                    }
                },
                secret_id_file: secret_id_file.clone(),
                mount: mount.clone(),
            },
        })
    }

    /// Whether a new token can be had by logging in (not a fixed token).
    fn can_login(&self) -> bool {
        !matches!(self, Self::Token { .. })
    }

    /// Obtains a token: reads it (token method, then asks Vault about it)
    /// or logs in. Files are re-read every time, so rotated credentials work.
    pub(crate) async fn login(&self, vault: &Vault) -> Result<Token, Error> {
        match self {
            Self::Token { file } => {
                let secret = match file {
                    Some(path) => read(path).await?,
                    None => {
                        Zeroizing::new(setting(None, &["VAULT_TOKEN", "BAO_TOKEN"]).ok_or_else(
                            || Error::Config("auth: set token_file (or VAULT_TOKEN)".into()),
                        )?)
                    }
                };
                let mut token = Token {
                    secret: Arc::new(Zeroizing::new(secret.trim().to_owned())),
                    ttl: Duration::ZERO,
                    renewable: false,
                    obtained: Instant::now(),
                };
                let info = vault
                    .call_as(Some(&token), Method::GET, "auth/token/lookup-self", None)
                    .await?;
                token.ttl = Duration::from_secs(info["data"]["ttl"].as_u64().unwrap_or(0));
                token.renewable = info["data"]["renewable"].as_bool().unwrap_or(false);
                Ok(token)
            }
            Self::Kubernetes {
                role,
                jwt_file,
                mount,
            } => {
                let jwt = read(jwt_file).await?;
                let answer = vault
                    .call_anonymous(
                        &format!("auth/{mount}/login"),
                        &json!({"role": role, "jwt": jwt.trim()}),
                    )
                    .await?;
                tracing::info!(%mount, %role, "logged in to Vault (kubernetes)");
                Token::from_auth(&answer["auth"])
            }
            Self::Approle {
                role_id,
                secret_id_file,
                mount,
            } => {
                let role_id = match role_id {
                    RoleId::Inline(id) => Zeroizing::new(id.clone()),
                    RoleId::File(f) => read(f).await?,
                };
                let secret_id = read(secret_id_file).await?;
                let answer = vault
                    .call_anonymous(
                        &format!("auth/{mount}/login"),
                        &json!({"role_id": role_id.trim(), "secret_id": secret_id.trim()}),
                    )
                    .await?;
                tracing::info!(%mount, "logged in to Vault (approle)");
                Token::from_auth(&answer["auth"])
            }
        }
    }
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Token { .. } => "token",
            Self::Kubernetes { .. } => "kubernetes",
            Self::Approle { .. } => "approle",
        })
    }
}

async fn read(path: &PathBuf) -> Result<Zeroizing<String>, Error> {
    tokio::fs::read_to_string(path)
        .await
        .map(Zeroizing::new)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// Keeps the token alive while the client lives.
pub(crate) fn spawn_renewal(vault: Weak<Vault>) {
    tokio::spawn(async move {
        loop {
            let next = match vault.upgrade() {
                Some(v) => match v.token().await {
                    Some(t) => t.next_check(),
                    None => Instant::now() + RETRY,
                },
                None => return,
            };
            tokio::time::sleep_until(next).await;
            let Some(v) = vault.upgrade() else {
                return;
            };
            if let Err(e) = refresh(&v).await {
                tracing::warn!(error = %e, "Vault token refresh failed; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    });
}

/// Renews the token, or logs in again when renewal cannot help.
async fn refresh(vault: &Vault) -> Result<(), Error> {
    let Some(token) = vault.token().await else {
        vault.relogin(None).await?;
        return Ok(());
    };
    let login = vault.login_method();
    if token.renewable && !token.ttl.is_zero() {
        match vault
            .call(
                Method::POST,
                "auth/token/renew-self",
                Some(&json!({"increment": format!("{}s", token.ttl.as_secs())})),
            )
            .await
        {
            Ok(answer) => {
                let renewed = Token::from_auth(&answer["auth"])?;
                // Renewal that no longer gives back the full period means the
                // token reached its max TTL: a fresh login is due.
                let capped = renewed.ttl.saturating_add(Duration::from_secs(1)) < token.ttl;
                if capped && login.can_login() {
                    tracing::info!(ttl = ?renewed.ttl, "Vault token at its max TTL; logging in again");
                    vault.relogin(Some(&token)).await?;
                } else {
                    let ttl = renewed.ttl;
                    vault
                        .set_token(Token {
                            secret: token.secret.clone(),
                            ..renewed
                        })
                        .await;
                    tracing::debug!(?ttl, "Vault token renewed");
                }
                return Ok(());
            }
            Err(e) if !login.can_login() => return Err(e),
            Err(e) => tracing::warn!(error = %e, "Vault token renewal failed; logging in again"),
        }
    }
    if login.can_login() || token.ttl.is_zero() || !token.renewable {
        // Login methods get a new token; the token method re-reads its file.
        vault.relogin(Some(&token)).await?;
    }
    Ok(())
}
