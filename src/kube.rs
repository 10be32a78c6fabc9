//! Connecting to a Kubernetes API server: from a kubeconfig file, or the
//! standard resolution (in-cluster service account, `KUBECONFIG`, `~/.kube/config`).

use std::{path::Path, time::Duration};

use kube::{
    Client,
    config::{KubeConfigOptions, Kubeconfig},
};

/// Why a cluster cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: std::path::PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration (not in a cluster, no KUBECONFIG): {0}")]
    Infer(kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    Client(kube::Error),
}

/// A client for one cluster; `timeout` bounds every read and write.
///
/// # Errors
/// When the kubeconfig cannot be read or names no usable cluster.
pub async fn client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    timeout: Duration,
) -> Result<Client, Error> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let mut config = match kubeconfig {
        Some(path) => {
            let err = |source| Error::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(err)?
        }
        None => kube::Config::infer().await.map_err(Error::Infer)?,
    };
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    Client::try_from(config).map_err(Error::Client)
}

/// Whether a failed API call is the server's (or the network's) fault, so
/// the caller should retry, rather than a verdict.
pub fn is_unavailable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        _ => true,
    }
}
