//! HTTP(S) transport for registries: hyper 1 (hyper-util's pooled client) over a connector
//! that speaks plain TCP or TLS via rustls.
//!
//! TLS choice: rustls with the `ring` provider (no cmake/aws-lc build, the lean option)
//! and the *system* trust store via `rustls-native-certs` rather than compiled-in
//! `webpki-roots`: agents talk to private registries whose CAs operators install on the
//! host, and a compiled-in Mozilla list would ignore them. Extra CA files can be added.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Builds the rustls client config: system roots plus PEM files in `extra_ca`.
pub fn tls_config(extra_ca: &[std::path::PathBuf]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "loading a system CA certificate failed");
    }
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    for path in extra_ca {
        for cert in read_pem_certs(path)? {
            roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(cfg)
}

fn read_pem_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect();
    let certs = certs.map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificates", path.display()));
    }
    Ok(certs)
}

/// Connects TCP (with a timeout) and, for `https` URIs, TLS.
#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
}

impl Connector {
    pub fn new(tls: rustls::ClientConfig, connect_timeout: Duration) -> Connector {
        Connector { tls: tokio_rustls::TlsConnector::from(Arc::new(tls)), connect_timeout }
    }
}

/// A plain or TLS stream.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = BoxFuture<io::Result<TokioIo<Stream>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let https = match uri.scheme_str() {
                Some("https") => true,
                Some("http") => false,
                other => return Err(io::Error::other(format!("unsupported URL scheme {other:?}"))),
            };
            let host = uri.host().ok_or_else(|| io::Error::other("URL without host"))?.to_string();
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let bare = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let tcp =
                tokio::time::timeout(this.connect_timeout, TcpStream::connect((bare.as_str(), port))).await.map_err(
                    |_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {host}:{port} timed out")),
                )??;
            let _ = tcp.set_nodelay(true);
            if !https {
                return Ok(TokioIo::new(Stream::Plain(tcp)));
            }
            let name = rustls::pki_types::ServerName::try_from(bare)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls =
                tokio::time::timeout(this.connect_timeout, this.tls.connect(name, tcp)).await.map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, format!("TLS handshake with {host}:{port} timed out"))
                })??;
            Ok(TokioIo::new(Stream::Tls(Box::new(tls))))
        })
    }
}

pub type Body = http_body_util::Empty<bytes::Bytes>;
pub type Client = hyper_util::client::legacy::Client<Connector, Body>;

/// A pooled client over [`Connector`].
pub fn client(connector: Connector) -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(8)
        .build(connector)
}
