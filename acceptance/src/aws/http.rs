//! Just enough HTTP/1.1 to poll moto and to make a raw EC2 query call, so the
//! launcher needs no HTTP client crate.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A status code and the body, undecoded beyond UTF-8 (lossy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// One request on a fresh connection, read until the server closes it.
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;

    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;

    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> io::Result<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, format!("not an HTTP response: {:.200}", text));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(invalid)?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("HTTP/1."))
        .and_then(|rest| rest.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(invalid)?;
    Ok(HttpResponse { status, body: body.to_owned() })
}

/// `application/x-www-form-urlencoded`, as the AWS query protocol expects.
pub(crate) fn form_encode(pairs: &[(&str, &str)]) -> String {
    fn encode(text: &str, out: &mut String) {
        for byte in text.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(char::from(byte)),
                _ => out.push_str(&format!("%{byte:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode(name, &mut out);
        out.push('=');
        encode(value, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let response = parse(b"HTTP/1.1 400 BAD REQUEST\r\nContent-Length: 3\r\n\r\nabc").expect("valid response");
        assert_eq!(response, HttpResponse { status: 400, body: "abc".to_owned() });
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"SSH-2.0-OpenSSH\r\n").is_err());
    }

    #[test]
    fn form_encoding_escapes_reserved_characters() {
        assert_eq!(
            form_encode(&[("Action", "DescribeSubnets"), ("Filter.1.Value.1", "a b/c")]),
            "Action=DescribeSubnets&Filter.1.Value.1=a%20b%2Fc"
        );
    }
}
