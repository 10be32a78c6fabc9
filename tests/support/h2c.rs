//! A raw HTTP/2 gRPC client over TLS, for what a well-behaved client never
//! does: bodies that never arrive, streams left open, chosen `grpc-timeout`s.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use prost::Message;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};

/// One HTTP/2 connection to castellan.
pub struct Raw {
    pub send: h2::client::SendRequest<Bytes>,
}

const PATH: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

impl Raw {
    pub async fn connect(addr: SocketAddr, root_pem: &str) -> Self {
        Self::try_connect(addr, root_pem).await.unwrap()
    }

    /// As [`Raw::connect`], telling a refused connection.
    pub async fn try_connect(addr: SocketAddr, root_pem: &str) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            castellan::server::tls_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|x| e(&x))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|x| e(&x))?;
        let (send, conn) = h2::client::handshake(tls).await.map_err(|x| e(&x))?;
        tokio::spawn(conn);
        Ok(Self { send })
    }

    /// A request whose length prefix promises more than is ever sent; the
    /// stream stays open. Returns the answer's future and the open stream.
    pub async fn stalled(
        &mut self,
        token: &str,
        grpc_timeout: Option<&str>,
    ) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
        let mut send = self.send.clone().ready().await.unwrap();
        let (answer, mut body) = send
            .send_request(request(token, grpc_timeout), false)
            .unwrap();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&1000u32.to_be_bytes());
        frame.extend_from_slice(&[0u8; 10]);
        body.send_data(Bytes::from(frame), false).unwrap();
        (answer, body)
    }

    /// A whole request for `csr`, with an optional `grpc-timeout`.
    pub async fn complete(
        &mut self,
        token: &str,
        csr: &str,
        grpc_timeout: Option<&str>,
    ) -> h2::client::ResponseFuture {
        let mut send = self.send.clone().ready().await.unwrap();
        let (answer, mut body) = send
            .send_request(request(token, grpc_timeout), false)
            .unwrap();
        let msg = castellan::proto::IstioCertificateRequest {
            csr: csr.to_owned(),
            validity_duration: 600,
            metadata: None,
        }
        .encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&msg);
        body.send_data(Bytes::from(frame), true).unwrap();
        answer
    }
}

fn request(token: &str, grpc_timeout: Option<&str>) -> http::Request<()> {
    let mut b = http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost{PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"));
    if let Some(t) = grpc_timeout {
        b = b.header("grpc-timeout", t);
    }
    b.body(()).unwrap()
}

/// The `grpc-status` of an answer: from its headers (trailers-only) or its
/// trailers.
pub async fn grpc_status(answer: h2::client::ResponseFuture) -> i32 {
    let resp = answer.await.unwrap_or_else(|e| panic!("no answer: {e:?}"));
    if let Some(s) = resp.headers().get("grpc-status") {
        return s.to_str().unwrap().parse().unwrap();
    }
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.unwrap().unwrap();
    trailers["grpc-status"].to_str().unwrap().parse().unwrap()
}
