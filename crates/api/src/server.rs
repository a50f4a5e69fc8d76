//! The HTTP listener: connection caps, header and body deadlines, graceful stop, and the
//! contract's error body on the answers the HTTP parser writes by itself.
//!
//! A client without a key must not be able to take the service down, so every connection costs
//! a slot that is given back when it closes, headers must arrive within a deadline (which also
//! closes idle keep-alive connections), and a node past its cap answers 503 at once instead of
//! running out of file descriptors.

use crate::error::ApiError;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// Limits of the HTTP edge. Every one is configurable; the defaults suit a node serving API
/// clients directly. Behind a reverse proxy (every connection from one address) raise or turn
/// off `max_connections_per_ip`.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// A request's headers must arrive within this; also how long an idle keep-alive connection
    /// is kept (the deadline starts when the server waits for the next request).
    pub header_read_timeout: Duration,
    /// Longest pause between two pieces of a request body.
    pub body_idle_timeout: Duration,
    /// Longest time to read a whole JSON body (at most 64 KiB, so a slow sender is a stalling
    /// one).
    pub body_read_timeout: Duration,
    /// Open connections the node serves at once; past it new ones get 503 and are closed.
    pub max_connections: usize,
    /// Open connections from one client address; 0 = no per-address cap.
    pub max_connections_per_ip: usize,
    /// How long a stop waits for in-flight requests before closing their connections.
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(20),
            body_idle_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_connections_per_ip: 256,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Open connections, in all and per client address.
struct Slots {
    max: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A held connection slot, given back on drop.
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Slots {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let from_ip = open.1.get(&ip).copied().unwrap_or(0);
        if open.0 >= self.max || (self.max_per_ip > 0 && from_ip >= self.max_per_ip) {
            return None;
        }
        open.0 += 1;
        open.1.insert(ip, from_ip + 1);
        Some(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// (at most [`HttpLimits::shutdown_grace`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let slots = Arc::new(Slots {
        max: limits.max_connections.max(1),
        max_per_ip: limits.max_connections_per_ip,
        open: Mutex::new((0, HashMap::new())),
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // One flat buffer per write, so the parser's own error answers can be recognised whole.
        .writev(false);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = slots.take(peer.ip()) else {
            refuse(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = app
            .clone()
            .map_request(move |mut req: axum::http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        let conn = http.serve_connection(
            TokioIo::new(ErrorShapeIo::new(stream)),
            TowerToHyperService::new(service),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!("in-flight requests still running after the shutdown grace; closing");
        }
    }
    Ok(())
}

/// Past a cap: the contract's 503, written without waiting (a socket's send buffer takes it),
/// and the connection closed at once so it holds no descriptor.
fn refuse(stream: TcpStream) {
    metrics::counter!("outdial_http_connections_refused_total").increment(1);
    let _ = stream.try_write(&ApiError::TooManyConnections.raw_response());
}

/// Accept errors are mostly the descriptor limit (EMFILE/ENFILE) or a connection reset before
/// it was taken; either way the listener stays up, and backs off briefly on the former so the
/// loop does not spin.
async fn accept_failed(e: &io::Error) {
    match e.kind() {
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset => {}
        _ => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The HTTP parser answers requests it cannot read (400, 414, 431) by itself, with an empty
/// body. This wrapper sees those answers go out and gives them the contract's error body, so
/// every answer a client gets has the same shape.
struct ErrorShapeIo<T> {
    inner: T,
    pending: Vec<u8>,
    sent: usize,
}

impl<T> ErrorShapeIo<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            sent: 0,
        }
    }
}

/// The contract's version of an automatic parser answer, if `head` is one: a whole response
/// head with an empty body (our own error answers always carry one).
fn shaped_parser_answer(head: &[u8]) -> Option<Vec<u8>> {
    let error = match head.get(..13)? {
        b"HTTP/1.1 400 " => ApiError::MalformedRequest,
        b"HTTP/1.1 414 " => ApiError::UriTooLong,
        b"HTTP/1.1 431 " => ApiError::HeadersTooLarge,
        _ => return None,
    };
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = std::str::from_utf8(&head[..end]).ok()?.to_ascii_lowercase();
    (end + 4 == head.len() && text.contains("\r\ncontent-length: 0")).then(|| error.raw_response())
}

impl<T: AsyncWrite + Unpin> ErrorShapeIo<T> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ErrorShapeIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ErrorShapeIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(shaped) = shaped_parser_answer(buf) {
            this.pending = shaped;
            // The caller's bytes are taken; what is left of ours goes out on the next write,
            // flush or shutdown.
            if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The client's address, as the listener saw it.
pub fn peer_ip(req: &axum::http::Request<axum::body::Body>) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_answers_get_the_error_shape_and_ours_are_left_alone() {
        let canned = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Fri, 04 Dec 2026 12:00:00 GMT\r\n\r\n";
        let shaped = String::from_utf8(shaped_parser_answer(canned).unwrap()).unwrap();
        assert!(shaped.starts_with("HTTP/1.1 431 "), "{shaped}");
        assert!(shaped.ends_with(
            r#"{"error":{"message":"request headers too large","type":"invalid_request"}}"#
        ));
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 70\r\n\r\n";
        assert!(shaped_parser_answer(ours).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(shaped_parser_answer(ok).is_none());
    }

    #[test]
    fn slots_cap_the_node_and_each_address() {
        let slots = Arc::new(Slots {
            max: 3,
            max_per_ip: 2,
            open: Mutex::new((0, HashMap::new())),
        });
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(a).unwrap();
        assert!(slots.take(a).is_none(), "third from one address");
        let _b1 = slots.take(b).unwrap();
        assert!(slots.take(b).is_none(), "node cap");
        drop(a1);
        assert!(
            slots.take(b).is_some(),
            "a closed connection gives its slot back"
        );
    }
}
