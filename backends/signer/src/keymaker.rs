//! Fresh signing keys for a back end that certifies keys castellan makes
//! (minted intermediates): where the key is made — in memory, inside an
//! HSM — is one back end, who certifies it is another, and neither knows
//! the other.

use std::{sync::Arc, time::Duration};

use crate::{Error, KeyAlgorithm, KeySigner};

/// Makes a new key each time it is asked.
#[async_trait::async_trait]
pub trait KeyMaker: Send + Sync + std::fmt::Debug {
    /// A new key of `algorithm`, ready to sign. Keys this maker made more
    /// than `stale_after` ago can no longer be in any replica's use and may
    /// be removed meanwhile (a token's space is finite).
    ///
    /// # Errors
    /// [`Error::Config`] for what an operator must fix (an algorithm the
    /// maker cannot make), [`Error::Unavailable`] when the key store cannot
    /// be reached.
    async fn make(
        &self,
        algorithm: KeyAlgorithm,
        stale_after: Duration,
    ) -> Result<Arc<dyn KeySigner>, Error>;

    /// Where keys are made, for messages.
    fn describe(&self) -> String;
}
