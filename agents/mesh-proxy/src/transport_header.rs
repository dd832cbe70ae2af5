//! The transport header a client proxy writes right after the mTLS handshake: `TRLS`, version 1,
//! a reserved byte, and the target port (u16, big-endian). The connection may have reached the
//! peer's inbound listener directly (its `proxy_inbound_port`), so the original port travels
//! inside the encrypted stream rather than in the redirect.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const MAGIC: [u8; 4] = *b"TRLS";
pub const VERSION: u8 = 1;
pub const LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("transport header magic is {0:02x?}, expected TRLS")]
    BadMagic([u8; 4]),
    #[error("transport header version {0} is not supported (expected {VERSION})")]
    Version(u8),
    #[error("transport header names port 0")]
    ZeroPort,
    #[error("connection ended after {got} of the transport header's {LEN} bytes")]
    Short { got: usize },
    #[error("transport header incomplete after {timeout:?} ({got} of {LEN} bytes)")]
    Timeout { got: usize, timeout: Duration },
    #[error("reading the transport header: {0}")]
    Io(#[from] io::Error),
}

pub fn encode(port: u16) -> [u8; LEN] {
    let [hi, lo] = port.to_be_bytes();
    let [m0, m1, m2, m3] = MAGIC;
    [m0, m1, m2, m3, VERSION, 0, hi, lo]
}

/// The target port. The reserved byte is ignored so that a later version can use it without
/// breaking version-1 readers.
pub fn decode(header: &[u8; LEN]) -> Result<u16, HeaderError> {
    let [m0, m1, m2, m3, version, _reserved, hi, lo] = *header;
    if [m0, m1, m2, m3] != MAGIC {
        return Err(HeaderError::BadMagic([m0, m1, m2, m3]));
    }
    if version != VERSION {
        return Err(HeaderError::Version(version));
    }
    match u16::from_be_bytes([hi, lo]) {
        0 => Err(HeaderError::ZeroPort),
        port => Ok(port),
    }
}

/// Reads and decodes the header; a peer that sends less than the header within `timeout` is
/// refused rather than holding the connection open.
pub async fn read<S: AsyncRead + Unpin>(io: &mut S, timeout: Duration) -> Result<u16, HeaderError> {
    let mut header = [0u8; LEN];
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    while got < LEN {
        match tokio::time::timeout_at(deadline, io.read(&mut header[got..])).await {
            Err(_elapsed) => return Err(HeaderError::Timeout { got, timeout }),
            Ok(Ok(0)) => return Err(HeaderError::Short { got }),
            Ok(Ok(n)) => got += n,
            Ok(Err(e)) => return Err(HeaderError::Io(e)),
        }
    }
    decode(&header)
}

pub async fn write<S: AsyncWrite + Unpin>(io: &mut S, port: u16) -> io::Result<()> {
    io.write_all(&encode(port)).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for port in [1, 80, 8080, 65535] {
            assert_eq!(decode(&encode(port)).expect("valid header"), port);
        }
        assert_eq!(&encode(0x1f90), b"TRLS\x01\x00\x1f\x90");
    }

    #[test]
    fn typed_decode_errors() {
        assert!(matches!(decode(b"HTTP\x01\x00\x00\x50"), Err(HeaderError::BadMagic(m)) if &m == b"HTTP"));
        assert!(matches!(decode(b"TRLS\x02\x00\x00\x50"), Err(HeaderError::Version(2))));
        assert!(matches!(decode(b"TRLS\x01\x00\x00\x00"), Err(HeaderError::ZeroPort)));
        assert_eq!(decode(b"TRLS\x01\x07\x00\x50").expect("reserved byte is ignored"), 80);
    }

    #[tokio::test]
    async fn read_across_partial_writes() {
        let (mut client, mut server) = tokio::io::duplex(16);
        let reader = tokio::spawn(async move { read(&mut server, Duration::from_secs(30)).await });
        for b in encode(5432) {
            client.write_all(&[b]).await.expect("write");
        }
        assert_eq!(reader.await.expect("join").expect("header"), 5432);
    }

    #[tokio::test]
    async fn short_read_and_timeout() {
        let (mut client, mut server) = tokio::io::duplex(16);
        client.write_all(b"TRL").await.expect("write");
        drop(client);
        assert!(matches!(read(&mut server, Duration::from_secs(30)).await, Err(HeaderError::Short { got: 3 })));

        let (mut client, mut server) = tokio::io::duplex(16);
        client.write_all(b"TRLS\x01").await.expect("write");
        let result = read(&mut server, Duration::from_millis(50)).await;
        assert!(matches!(result, Err(HeaderError::Timeout { got: 5, .. })), "{result:?}");
    }
}
