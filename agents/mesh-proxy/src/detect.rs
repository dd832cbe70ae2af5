//! Protocol detection from a connection's first bytes.
//!
//! A transparently redirected connection carries no protocol hint, so the proxy reads what the
//! client sends first and decides: a TLS ClientHello (a peer proxy's mTLS, or the app's own TLS),
//! the HTTP/2 preface, an HTTP/1.x request line, or something else (proxied as opaque TCP). The
//! bytes read are not lost: [`PrefixedIo`] replays them to whoever handles the connection next.
//!
//! Detection waits for the client to speak; a server-speaks-first protocol never does, so its
//! ports skip detection (`opaque_ports`) and the detect timeout is the safety net for the others.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How much detection reads at most. A request line longer than this is treated as not HTTP, so
/// a client cannot make the proxy buffer without bound before anything is decided.
pub const MAX_DETECT_BYTES: usize = 16 * 1024;

/// Longest method token accepted; real methods are short, and binary protocols that happen to
/// start with token bytes are told apart sooner.
const MAX_METHOD_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tls,
    Http1,
    Http2,
    Opaque,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    Decided(Protocol),
    NeedMore,
}

/// Classifies the first bytes of a connection. Pure: the same prefix always gives the same
/// answer, and a prefix that could still become several protocols asks for more.
pub fn classify(buf: &[u8]) -> Detection {
    match buf {
        [] => Detection::NeedMore,
        // A TLS handshake record of any 3.x version: the record header is 0x16 0x03 <minor>.
        [0x16] => Detection::NeedMore,
        [0x16, 0x03, ..] => Detection::Decided(Protocol::Tls),
        _ if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) => Detection::NeedMore,
        _ if buf.starts_with(H2_PREFACE) => Detection::Decided(Protocol::Http2),
        _ => classify_http1(buf),
    }
}

/// `method SP request-target SP HTTP/1.x` (RFC 9112 §3).
fn classify_http1(buf: &[u8]) -> Detection {
    const OPAQUE: Detection = Detection::Decided(Protocol::Opaque);
    let method_len = buf.iter().position(|&b| !is_tchar(b)).unwrap_or(buf.len());
    if method_len > MAX_METHOD_LEN {
        return OPAQUE;
    }
    let Some(&after_method) = buf.get(method_len) else { return Detection::NeedMore };
    if method_len == 0 || after_method != b' ' {
        return OPAQUE;
    }
    let rest = &buf[method_len + 1..];
    let target_len = rest.iter().position(|&b| !is_visible(b)).unwrap_or(rest.len());
    let Some(&after_target) = rest.get(target_len) else { return Detection::NeedMore };
    if target_len == 0 || after_target != b' ' {
        return OPAQUE;
    }
    let version = &rest[target_len + 1..];
    const HTTP1: &[u8] = b"HTTP/1.";
    let common = version.len().min(HTTP1.len());
    if version[..common] != HTTP1[..common] {
        return OPAQUE;
    }
    match version.get(HTTP1.len()) {
        None => Detection::NeedMore,
        Some(minor) if minor.is_ascii_digit() => Detection::Decided(Protocol::Http1),
        Some(_) => OPAQUE,
    }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_visible(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

/// Reads from `io` until [`classify`] decides, the peer stops sending (EOF), `timeout` passes or
/// [`MAX_DETECT_BYTES`] are buffered; the undecided cases are opaque. Returns the protocol and
/// every byte read, which the caller must replay (see [`PrefixedIo`]).
pub async fn detect<S: AsyncRead + Unpin>(io: &mut S, timeout: Duration) -> io::Result<(Protocol, Bytes)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Detection::Decided(protocol) = classify(&buf) {
            return Ok((protocol, buf.freeze()));
        }
        if buf.len() >= MAX_DETECT_BYTES {
            return Ok((Protocol::Opaque, buf.freeze()));
        }
        // Never read past the cap: the limit is on memory, not only on the decision.
        let mut limited = (&mut *io).take((MAX_DETECT_BYTES - buf.len()) as u64);
        match tokio::time::timeout_at(deadline, limited.read_buf(&mut buf)).await {
            Err(_elapsed) => return Ok((Protocol::Opaque, buf.freeze())),
            Ok(Ok(0)) => return Ok((Protocol::Opaque, buf.freeze())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// A stream whose first reads return `prefix` (the bytes detection consumed), then the stream's
/// own bytes. Writes go straight to the stream.
#[derive(Debug)]
pub struct PrefixedIo<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> PrefixedIo<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        PrefixedIo { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefixedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn decided(p: Protocol) -> Detection {
        Detection::Decided(p)
    }

    /// Feeds `input` one byte at a time and returns the first decision with the number of bytes
    /// it took, as a slow client would send them.
    fn classify_bytewise(input: &[u8]) -> (Detection, usize) {
        for n in 0..=input.len() {
            if let d @ Detection::Decided(_) = classify(&input[..n]) {
                return (d, n);
            }
        }
        (Detection::NeedMore, input.len())
    }

    #[test]
    fn tls_client_hello() {
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00]), decided(Protocol::Tls));
        assert_eq!(classify(&[0x16]), Detection::NeedMore);
        assert_eq!(classify_bytewise(&[0x16, 0x03, 0x03, 0x00, 0x10]), (decided(Protocol::Tls), 2));
        assert_eq!(classify(&[0x16, 0x04]), decided(Protocol::Opaque));
    }

    #[test]
    fn http2_preface_byte_at_a_time() {
        let mut input = H2_PREFACE.to_vec();
        input.extend_from_slice(b"\x00\x00\x12\x04");
        assert_eq!(classify_bytewise(&input), (decided(Protocol::Http2), H2_PREFACE.len()));
    }

    #[test]
    fn http2_preface_lookalike_is_not_http2() {
        // A PRI request line that is not the preface is an (odd) HTTP/1.1 request.
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n"), decided(Protocol::Http1));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nXX"), decided(Protocol::Opaque));
    }

    #[test]
    fn http1_request_lines() {
        for line in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"POST /orders?id=3 HTTP/1.0\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"CONNECT db.shop:5432 HTTP/1.1\r\n",
            b"GET http://web.shop.svc:8080/x HTTP/1.1\r\n",
            b"M-SEARCH * HTTP/1.1\r\n",
        ] {
            assert_eq!(classify(line), decided(Protocol::Http1), "{}", String::from_utf8_lossy(line));
            let (detection, used) = classify_bytewise(line);
            assert_eq!(detection, decided(Protocol::Http1));
            assert!(used <= line.len());
        }
    }

    #[test]
    fn http1_needs_the_version() {
        assert_eq!(classify(b"GET"), Detection::NeedMore);
        assert_eq!(classify(b"GET /index.html"), Detection::NeedMore);
        assert_eq!(classify(b"GET /index.html HTTP/1"), Detection::NeedMore);
        assert_eq!(classify(b"GET /index.html HTTP/1."), Detection::NeedMore);
    }

    #[test]
    fn not_http() {
        for input in [
            &b"\x00\x00\x00\x2c\x00\x03"[..], // a MySQL-ish binary packet
            b"*1\r\n$4\r\nPING\r\n",          // Redis RESP
            b"GET foo\r\n",                   // Redis inline command
            b"GET / HTTP/2.0\r\n",            // not an HTTP/1 version
            b" GET / HTTP/1.1\r\n",           // empty method
            b"GET  / HTTP/1.1\r\n",           // empty target
            b"GE\x01T / HTTP/1.1\r\n",        // control byte in the method
            b"SSH-2.0-OpenSSH_9.6\r\n",       // CR ends the token, not a space
            b"HELO mail.example.com\r\n",     // SMTP command
        ] {
            assert_eq!(classify_bytewise(input).0, decided(Protocol::Opaque), "{}", String::from_utf8_lossy(input));
        }
        assert_eq!(classify(&[b'A'; MAX_METHOD_LEN + 1]), decided(Protocol::Opaque));
    }

    #[tokio::test]
    async fn detect_replays_what_it_read() {
        let (mut client, server) = tokio::io::duplex(64);
        const REQUEST: &[u8] = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        let writer = tokio::spawn(async move {
            for b in REQUEST {
                client.write_all(&[*b]).await.expect("write");
            }
            client
        });
        let mut server = server;
        let (protocol, prefix) = detect(&mut server, Duration::from_secs(30)).await.expect("detect");
        assert_eq!(protocol, Protocol::Http1);
        let _client = writer.await.expect("writer");
        let mut replay = PrefixedIo::new(prefix, server);
        let mut all = vec![0u8; REQUEST.len()];
        replay.read_exact(&mut all).await.expect("read replay");
        assert_eq!(all, REQUEST);
    }

    #[tokio::test(start_paused = true)]
    async fn detect_times_out_to_opaque_when_the_client_is_silent() {
        let (_client, mut server) = tokio::io::duplex(64);
        let (protocol, prefix) = detect(&mut server, Duration::from_millis(200)).await.expect("detect");
        assert_eq!((protocol, prefix.len()), (Protocol::Opaque, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn detect_times_out_on_a_partial_request_line() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET /slow").await.expect("write");
        let (protocol, prefix) = detect(&mut server, Duration::from_millis(200)).await.expect("detect");
        assert_eq!((protocol, &prefix[..]), (Protocol::Opaque, &b"GET /slow"[..]));
    }

    #[tokio::test]
    async fn detect_stops_at_eof_and_at_the_cap() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET").await.expect("write");
        drop(client);
        let (protocol, prefix) = detect(&mut server, Duration::from_secs(30)).await.expect("detect");
        assert_eq!((protocol, &prefix[..]), (Protocol::Opaque, &b"GET"[..]));

        let (mut client, mut server) = tokio::io::duplex(MAX_DETECT_BYTES * 2);
        let mut long = b"GET /".to_vec();
        long.resize(MAX_DETECT_BYTES + 100, b'a');
        client.write_all(&long).await.expect("write");
        let (protocol, prefix) = detect(&mut server, Duration::from_secs(30)).await.expect("detect");
        assert_eq!((protocol, prefix.len()), (Protocol::Opaque, MAX_DETECT_BYTES));
    }
}
