//! The gRPC front end as it is put together: the service behind the door
//! (admission), one server per serving worker with castellan's HTTP/2
//! limits, and the accept loop that hands each TLS connection to a worker.

use std::{sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_rustls::TlsAcceptor;

use super::{Error, accept, admission, limits, service::CaService, shards, stopped};
use crate::{
    config::Config, issue::Pipeline, metrics::Metrics,
    proto::istio_certificate_service_server::IstioCertificateServiceServer,
};

/// Starts the serving workers and the accept loop on `listener`; both stop
/// when `shutdown` turns true (requests in flight finish).
///
/// # Errors
/// When the serving workers cannot be started.
pub(super) fn serve(
    config: &Config,
    pipeline: Pipeline,
    metrics: &Metrics,
    tls: rustls::ServerConfig,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> Result<(shards::Serving, JoinHandle<()>), Error> {
    let service = CaService::new(pipeline, metrics.clone(), config.request_timeout());
    let door = admission::AdmissionLayer::new(
        config.server.max_in_flight,
        config.request_timeout(),
        metrics.clone(),
    );
    let stream_limit = config.server.max_streams_per_connection;
    let until = shutdown.clone();
    let (shards, server) = shards::Shards::start(config.server.workers(), metrics, |incoming| {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(60)))
            .max_concurrent_streams(stream_limit)
            .initial_stream_window_size(limits::STREAM_WINDOW)
            .initial_connection_window_size(limits::CONNECTION_WINDOW)
            .http2_max_header_list_size(limits::MAX_HEADER_LIST)
            .layer(door.clone())
            .add_service(
                IstioCertificateServiceServer::new(service.clone())
                    .max_decoding_message_size(limits::MAX_MESSAGE),
            )
            .serve_with_incoming_shutdown(incoming, stopped(until.clone()))
    })
    .map_err(Error::Workers)?;
    let connections = limits::connections(config.server.max_connections);
    let accept = accept::incoming(
        listener,
        TlsAcceptor::from(Arc::new(tls)),
        accept::Limits {
            connections,
            // Unfinished handshakes can never take every connection slot.
            handshakes: limits::MAX_HANDSHAKES.min(connections / 2).max(1),
        },
        metrics.clone(),
        shutdown,
        shards,
    );
    Ok((server, accept))
}
