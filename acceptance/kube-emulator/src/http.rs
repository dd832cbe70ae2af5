//! Request and response plumbing shared by the handlers.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use serde_json::Value;

use crate::error::ApiError;

pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

pub fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    json_response_as(status, value, "application/json")
}

pub fn json_response_as(status: StatusCode, value: &Value, content_type: &str) -> Response<Body> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/json")),
    );
    response
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    json_response(StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &e.status())
}

/// The query string as pairs, tolerating the stray `&` kube-rs starts with.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// A boolean query parameter as the apiserver reads one: given at all,
/// it is true unless it says "0" or "false".
pub fn query_flag(value: &str) -> bool {
    value != "0" && !value.eq_ignore_ascii_case("false")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the whole request body, up to a limit a real apiserver would also refuse.
pub async fn read_body(body: hyper::body::Incoming) -> Result<Bytes, ApiError> {
    const LIMIT: usize = 3 << 20;
    // Limited stops reading at the limit rather than buffering a huge body first.
    match http_body_util::Limited::new(body, LIMIT).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(ApiError {
            code: 413,
            reason: "RequestEntityTooLarge",
            message: "Request entity too large: limit is 3145728".into(),
            details: None,
        }),
        Err(e) => Err(ApiError::bad_request(format!("reading the request body: {e}"))),
    }
}

/// One HTTP/1.1 exchange over `io` (TCP, or TLS over it) as a client:
/// the answer's status and whole body.
pub async fn exchange<I, B>(io: I, request: http::Request<B>) -> Result<(StatusCode, Bytes), String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await.map_err(|e| e.to_string())?;
    // Ends once the answer is read and the sender dropped.
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, body))
}

/// Parses a JSON or YAML body (apply patches and `kubectl apply` send
/// either; JSON is YAML, but JSON errors read better).
pub fn parse_document(bytes: &[u8], content_type: &str) -> Result<Value, ApiError> {
    if content_type.contains("yaml") {
        if let Ok(v) = serde_json::from_slice(bytes) {
            return Ok(v);
        }
        return serde_yaml::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the object provided is unrecognized: couldn't get version/kind; json parse error: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_tolerates_leading_ampersand_and_decodes() {
        let q = query_pairs(Some("&labelSelector=a%3Db%2Cc&limit=500&watch"));
        assert_eq!(
            q,
            [("labelSelector".into(), "a=b,c".into()), ("limit".into(), "500".into()), ("watch".into(), String::new())]
        );
    }
}
