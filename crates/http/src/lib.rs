//! HTTP/1.1 plumbing shared by Agora's daemons and CLI: a connection loop for servers,
//! response builders, streamed (chunked RecordIO) bodies, and a small client for JSON calls
//! and RecordIO subscriptions. Knows nothing of masters or agents.
#![forbid(unsafe_code)]

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub use http;
pub use hyper::body::Incoming as IncomingBody;

pub const JSON: &str = "application/json";

/// A response body: a whole buffer, chunks known in advance (sent as they are, with their
/// total length), a stream of chunks fed through a channel, or a bounded one (its writer
/// waits while the client is behind).
pub enum Body {
    Full(Option<Bytes>),
    Chunks(std::collections::VecDeque<Bytes>, u64),
    Stream(mpsc::UnboundedReceiver<Bytes>, Arc<Backlog>),
    Bounded(mpsc::Receiver<Bytes>),
}

/// What a streamed response has queued and its connection not yet taken, shared by the
/// sender ([`StreamTx`]) and the body. Lets the sender tell a slow reader (still taking)
/// from a dead one (taking nothing) without bounding the channel itself.
#[derive(Debug)]
pub struct Backlog {
    bytes: AtomicUsize,
    /// When the connection last took a chunk, in ms since `epoch`.
    last_taken_ms: AtomicU64,
    epoch: std::time::Instant,
    aborted: AtomicBool,
}

impl Backlog {
    fn new() -> Self {
        Backlog {
            bytes: AtomicUsize::new(0),
            last_taken_ms: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            aborted: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn taken(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
        self.last_taken_ms.store(self.now_ms(), Ordering::Relaxed);
    }
}

/// The sending side of a streamed response; each `send` becomes one chunk.
#[derive(Clone, Debug)]
pub struct StreamTx {
    tx: mpsc::UnboundedSender<Bytes>,
    backlog: Arc<Backlog>,
}

impl StreamTx {
    /// Queues a chunk; `Err` when the response is gone (the client went away).
    pub fn send(&self, b: Bytes) -> Result<(), mpsc::error::SendError<Bytes>> {
        let n = b.len();
        self.backlog.bytes.fetch_add(n, Ordering::Relaxed);
        self.tx.send(b).inspect_err(|_| {
            self.backlog.bytes.fetch_sub(n, Ordering::Relaxed);
        })
    }

    /// Bytes queued that the connection has not taken yet.
    pub fn backlog_bytes(&self) -> usize {
        self.backlog.bytes.load(Ordering::Relaxed)
    }

    /// How long since the connection last took a chunk (since the stream began if never).
    pub fn idle_for(&self) -> Duration {
        let last = self.backlog.last_taken_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.backlog.now_ms().saturating_sub(last))
    }

    /// Ends the response now, dropping what is queued; the client sees the stream end.
    pub fn abort(&self) {
        self.backlog.aborted.store(true, Ordering::Relaxed);
        // Wakes the body so it notices.
        let _ = self.tx.send(Bytes::new());
    }

    pub fn is_aborted(&self) -> bool {
        self.backlog.aborted.load(Ordering::Relaxed)
    }

    /// Resolves when the receiving side (the client's connection) is gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            Body::Chunks(chunks, left) => loop {
                match chunks.pop_front() {
                    Some(b) if b.is_empty() => continue,
                    Some(b) => {
                        *left = left.saturating_sub(b.len() as u64);
                        return Poll::Ready(Some(Ok(Frame::data(b))));
                    }
                    None => return Poll::Ready(None),
                }
            },
            Body::Stream(rx, backlog) => loop {
                if backlog.aborted.load(Ordering::Relaxed) {
                    rx.close();
                    return Poll::Ready(None);
                }
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(b)) => {
                        backlog.taken(b.len());
                        if b.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(b))));
                    }
                    other => return other.map(|o| o.map(|b| Ok(Frame::data(b)))),
                }
            },
            Body::Bounded(rx) => loop {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(b)) if b.is_empty() => continue,
                    other => return other.map(|o| o.map(|b| Ok(Frame::data(b)))),
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.is_none(),
            Body::Chunks(c, _) => c.is_empty(),
            Body::Stream(..) | Body::Bounded(_) => false,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Full(Some(b)) => hyper::body::SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => hyper::body::SizeHint::with_exact(0),
            Body::Chunks(_, left) => hyper::body::SizeHint::with_exact(*left),
            Body::Stream(..) | Body::Bounded(_) => hyper::body::SizeHint::default(),
        }
    }
}

fn build(status: StatusCode, content_type: Option<&str>, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Some(ct) = content_type {
        if let Ok(v) = HeaderValue::from_str(ct) {
            r.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
    }
    r
}

/// An empty response with a status (202 Accepted, 200 for /health, ...).
pub fn empty(status: StatusCode) -> Response<Body> {
    build(status, None, Body::Full(None))
}

/// A plain-text response: the error body format of Mesos.
pub fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut m: String = msg.into();
    if !m.ends_with('\n') {
        m.push('\n');
    }
    build(status, Some("text/plain; charset=utf-8"), Body::Full(Some(Bytes::from(m))))
}

/// A JSON response (`Content-Type: application/json`, no charset: mesos-go compares it exactly).
pub fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    match serde_json::to_vec(v) {
        Ok(b) => build(status, Some(JSON), Body::Full(Some(Bytes::from(b)))),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("failed to encode response: {e}")),
    }
}

/// Raw bytes with a content type.
pub fn bytes(status: StatusCode, content_type: &str, b: Vec<u8>) -> Response<Body> {
    build(status, Some(content_type), Body::Full(Some(Bytes::from(b))))
}

/// A body made of chunks that are all there already (sent one after the other, with a
/// `Content-Length` of their sum; nothing is copied into one buffer).
pub fn chunks(status: StatusCode, content_type: &str, chunks: Vec<Bytes>) -> Response<Body> {
    let len = chunks.iter().map(|c| c.len() as u64).sum();
    build(status, Some(content_type), Body::Chunks(chunks.into(), len))
}

/// A streamed (chunked) response; each item sent on the returned channel becomes one chunk.
pub fn stream(status: StatusCode, content_type: &str) -> (StreamTx, Response<Body>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backlog = Arc::new(Backlog::new());
    (StreamTx { tx, backlog: backlog.clone() }, build(status, Some(content_type), Body::Stream(rx, backlog)))
}

/// A streamed (chunked) response written by a producer that waits while `capacity` chunks
/// are queued (`blocking_send` from a blocking thread); a send fails once the client is gone.
pub fn bounded_stream(
    status: StatusCode,
    content_type: &str,
    capacity: usize,
) -> (mpsc::Sender<Bytes>, Response<Body>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (tx, build(status, Some(content_type), Body::Bounded(rx)))
}

/// Sends `on_close` on `to` when the receiving side of a streamed response (the client's
/// connection) goes away. Dropping the returned guard cancels the watch; the watch never
/// keeps the stream open by itself.
pub fn on_stream_closed<M: Send + 'static>(
    tx: &StreamTx,
    on_close: M,
    to: mpsc::UnboundedSender<M>,
) -> tokio::sync::oneshot::Sender<()> {
    let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel::<()>();
    let watched = tx.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = watched.closed() => { let _ = to.send(on_close); }
            _ = cancel_rx => {}
        }
    });
    cancel_tx
}

#[derive(Debug, Error)]
pub enum BodyError {
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    #[error("reading request body: {0}")]
    Read(String),
}

/// Reads a whole request body, up to `limit` bytes.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Err(BodyError::TooLarge(limit))
            } else {
                Err(BodyError::Read(e.to_string()))
            }
        }
    }
}

/// Whether the request's Content-Type is JSON. `Err` carries the response to send:
/// 400 when missing, 415 when it is something else (protobuf is not spoken yet).
#[allow(clippy::result_large_err)]
pub fn require_json(headers: &HeaderMap) -> Result<(), Response<Body>> {
    let Some(ct) = headers.get(http::header::CONTENT_TYPE) else {
        return Err(text(StatusCode::BAD_REQUEST, "Expecting 'Content-Type' to be present"));
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let base = ct.split(';').next().unwrap_or("").trim().to_string();
    if base == JSON {
        Ok(())
    } else if base == "application/x-protobuf" {
        Err(text(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Agora speaks JSON only: use 'Content-Type: application/json'"))
    } else {
        Err(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Expecting 'Content-Type' of application/json or application/x-protobuf, got '{base}'"),
        ))
    }
}

/// Whether the request's Accept allows JSON; `Err` is the 406 to send.
#[allow(clippy::result_large_err)]
pub fn require_json_accept(headers: &HeaderMap) -> Result<(), Response<Body>> {
    let Some(acc) = headers.get(http::header::ACCEPT) else {
        return Ok(());
    };
    let acc = acc.to_str().unwrap_or("").to_ascii_lowercase();
    let ok = acc.split(',').any(|p| {
        let t = p.split(';').next().unwrap_or("").trim();
        t == JSON || t == "*/*" || t == "application/*" || t == "application/recordio" || t.is_empty()
    });
    if ok {
        Ok(())
    } else {
        Err(text(StatusCode::NOT_ACCEPTABLE, format!("Expecting 'Accept' to allow application/json, got '{acc}'")))
    }
}

pub type Handler =
    Arc<dyn Fn(Request<Incoming>, SocketAddr) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync>;

/// Serves HTTP/1.1 on `listener` until the task is dropped, one task per connection.
/// Binds a listener with a deep accept backlog (capped by the kernel's somaxconn): tens of
/// thousands of agents reconnect at once after a master failover.
pub async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(65_535)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{addr}: no address"))))
}

/// Streams one HTTP/2 connection may carry at once (a simulating process puts up to
/// [`H2_AGENTS_PER_CONNECTION`] agents' streams and their calls on one).
const H2_MAX_STREAMS: u32 = 20_000;
const H2_CONNECTION_WINDOW: u32 = 16 << 20;
/// Agents a simulating process puts on one HTTP/2 connection.
pub const H2_AGENTS_PER_CONNECTION: usize = 2_000;

pub async fn serve(listener: TcpListener, handler: Handler) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let h = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let h = h.clone();
                async move { Ok::<_, Infallible>(h(req, peer).await) }
            });
            // HTTP/1.1, or HTTP/2 with prior knowledge (h2c): many agents of one simulating
            // process, or any client that multiplexes, share a connection.
            let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder.http1().keep_alive(true);
            builder.http2().max_concurrent_streams(H2_MAX_STREAMS).initial_connection_window_size(H2_CONNECTION_WINDOW);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("invalid url '{0}'")]
    Url(String),
    #[error("request to {url} failed: {why}")]
    Request { url: String, why: String },
    #[error("request to {url} timed out")]
    Timeout { url: String },
    #[error("{url} answered {status}: {body}")]
    Status { url: String, status: StatusCode, body: String },
    #[error("bad stream from {url}: {why}")]
    Stream { url: String, why: String },
}

type HyperClient = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// A small HTTP client for JSON calls and RecordIO subscriptions.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

/// A reply whose body has been read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An open RecordIO stream.
pub struct RecordStream {
    pub status: StatusCode,
    pub headers: HeaderMap,
    url: String,
    body: Incoming,
    decoder: agora_api::recordio::Decoder,
}

impl RecordStream {
    /// The next record, `None` when the server closed the stream.
    pub async fn next(&mut self) -> Option<Result<Vec<u8>, ClientError>> {
        loop {
            match self.decoder.next_record() {
                Ok(Some(r)) => return Some(Ok(r)),
                Ok(None) => {}
                Err(e) => return Some(Err(ClientError::Stream { url: self.url.clone(), why: e.to_string() })),
            }
            match self.body.frame().await {
                None => return None,
                Some(Err(e)) => return Some(Err(ClientError::Stream { url: self.url.clone(), why: e.to_string() })),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.decoder.feed(&d);
                    }
                }
            }
        }
    }
}

impl Client {
    pub fn new() -> Self {
        Self::build(None, false)
    }

    /// A client whose connections leave from `local` (e.g. one of the 127.0.0.0/8
    /// addresses, so that tens of thousands of simulated agents on one machine do not run
    /// out of ephemeral ports towards one master address).
    pub fn bound_to(local: std::net::IpAddr) -> Self {
        Self::build(Some(local), false)
    }

    /// A client that speaks HTTP/2 with prior knowledge (h2c): all its requests to one
    /// server, long-lived streams included, share one connection.
    pub fn http2() -> Self {
        Self::build(None, true)
    }

    fn build(local: Option<std::net::IpAddr>, h2: bool) -> Self {
        let mut conn = hyper_util::client::legacy::connect::HttpConnector::new();
        conn.set_local_address(local);
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(5)));
        let mut builder = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(30));
        if h2 {
            builder
                .http2_only(true)
                .http2_initial_connection_window_size(H2_CONNECTION_WINDOW)
                .timer(hyper_util::rt::TokioTimer::new())
                .http2_keep_alive_interval(Duration::from_secs(30));
        }
        let inner = builder.build(conn);
        Client { inner }
    }

    fn request(
        url: &str,
        method: http::Method,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let uri: http::Uri = url.parse().map_err(|_| ClientError::Url(url.to_string()))?;
        let mut b = Request::builder().method(method).uri(uri);
        let given = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        if !body.is_empty() && !given("content-type") {
            b = b.header(http::header::CONTENT_TYPE, JSON);
        }
        if !given("accept") {
            b = b.header(http::header::ACCEPT, JSON);
        }
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        b.body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Request { url: url.to_string(), why: e.to_string() })
    }

    async fn send(
        &self,
        url: &str,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, ClientError> {
        match tokio::time::timeout(timeout, self.inner.request(req)).await {
            Err(_) => Err(ClientError::Timeout { url: url.to_string() }),
            Ok(Err(e)) => Err(ClientError::Request { url: url.to_string(), why: error_chain(&e) }),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// POSTs a JSON body and reads the whole reply, whatever its status.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let req = Self::request(url, http::Method::POST, headers, body)?;
        self.finish(url, req, timeout).await
    }

    /// GETs a URL and reads the whole reply.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<Reply, ClientError> {
        let req = Self::request(url, http::Method::GET, &[], Vec::new())?;
        self.finish(url, req, timeout).await
    }

    async fn finish(&self, url: &str, req: Request<Full<Bytes>>, timeout: Duration) -> Result<Reply, ClientError> {
        let fut = async {
            let resp = self.send(url, req, timeout).await?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| ClientError::Request { url: url.to_string(), why: e.to_string() })?
                .to_bytes();
            Ok(Reply { status: parts.status, headers: parts.headers, body })
        };
        match tokio::time::timeout(timeout, fut).await {
            Err(_) => Err(ClientError::Timeout { url: url.to_string() }),
            Ok(r) => r,
        }
    }

    /// POSTs a serialisable call and expects a 2xx status; returns the reply.
    pub async fn call<T: serde::Serialize>(
        &self,
        url: &str,
        headers: &[(&str, String)],
        v: &T,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let body =
            serde_json::to_vec(v).map_err(|e| ClientError::Request { url: url.to_string(), why: e.to_string() })?;
        let r = self.post(url, headers, body, timeout).await?;
        if !r.status.is_success() {
            return Err(ClientError::Status {
                url: url.to_string(),
                status: r.status,
                body: String::from_utf8_lossy(&r.body).trim().to_string(),
            });
        }
        Ok(r)
    }

    /// POSTs a subscription call; on 200 returns the open RecordIO stream.
    pub async fn subscribe<T: serde::Serialize>(
        &self,
        url: &str,
        headers: &[(&str, String)],
        v: &T,
        connect_timeout: Duration,
    ) -> Result<RecordStream, ClientError> {
        let body =
            serde_json::to_vec(v).map_err(|e| ClientError::Request { url: url.to_string(), why: e.to_string() })?;
        self.subscribe_json(url, headers, body, connect_timeout).await
    }

    /// [`Client::subscribe`] with a body already encoded as JSON.
    pub async fn subscribe_json(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
        connect_timeout: Duration,
    ) -> Result<RecordStream, ClientError> {
        let req = Self::request(url, http::Method::POST, headers, body)?;
        let resp = self.send(url, req, connect_timeout).await?;
        let (parts, body) = resp.into_parts();
        if parts.status != StatusCode::OK {
            let text = match tokio::time::timeout(connect_timeout, body.collect()).await {
                Ok(Ok(c)) => String::from_utf8_lossy(&c.to_bytes()).trim().to_string(),
                _ => String::new(),
            };
            return Err(ClientError::Status { url: url.to_string(), status: parts.status, body: text });
        }
        Ok(RecordStream {
            status: parts.status,
            headers: parts.headers,
            url: url.to_string(),
            body,
            decoder: agora_api::recordio::Decoder::default(),
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Routes a request path as libprocess does: trailing slashes stripped, the process prefix
/// (`/master`, `/slave(1)`) optional, the `.json` aliases of old tools accepted, then the
/// longest route that matches on whole path segments.
pub fn route(path: &str, process: &str, routes: &[&'static str]) -> Option<&'static str> {
    let mut p = path.trim_end_matches('/');
    if let Some(rest) = p.strip_prefix(process) {
        if rest.is_empty() || rest.starts_with('/') {
            p = rest;
        }
    }
    let p = p.strip_suffix(".json").unwrap_or(p);
    if p.is_empty() {
        return None;
    }
    routes
        .iter()
        .filter(|r| p == **r || (p.starts_with(**r) && p.as_bytes().get(r.len()) == Some(&b'/')))
        .max_by_key(|r| r.len())
        .copied()
}

/// Parses a query string (or a form body) into decoded key/value pairs.
pub fn parse_query(q: Option<&str>) -> std::collections::HashMap<String, String> {
    let mut m = std::collections::HashMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        m.insert(percent_decode(k), percent_decode(v));
    }
    m
}

/// `+` is a space, `%XX` a byte; a malformed escape is kept as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Normalises a `host:port` or URL into a base URL without a trailing slash.
pub fn base_url(addr: &str) -> String {
    let a = addr.trim().trim_end_matches('/');
    if a.starts_with("http://") || a.starts_with("https://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_is_longest_prefix_on_segments() {
        const R: &[&str] = &["/api/v1/scheduler", "/api/v1", "/state", "/state-summary"];
        assert_eq!(route("/master/api/v1/scheduler", "/master", R), Some("/api/v1/scheduler"));
        assert_eq!(route("/api/v1/operator", "/master", R), Some("/api/v1"));
        assert_eq!(route("/state.json/", "/master", R), Some("/state"));
        assert_eq!(route("/statex", "/master", R), None);
        assert_eq!(route("/masterx/state", "/master", R), None);
        assert_eq!(route("/slave(1)/state", "/slave(1)", R), Some("/state"));
    }

    #[test]
    fn queries_decode() {
        let q = parse_query(Some("a=1&x=hello%20world&y=%zz&z=a+b&t=%4"));
        assert_eq!(q["x"], "hello world");
        assert_eq!(q["y"], "%zz");
        assert_eq!(q["z"], "a b");
        assert_eq!(q["t"], "%4");
    }
}
