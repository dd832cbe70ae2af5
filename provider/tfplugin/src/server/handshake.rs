//! go-plugin's launch contract: the magic cookie, protocol version
//! negotiation and the one handshake line on stdout.

use base64::Engine;

/// Terraform sets this variable to this value when it launches a plugin;
/// the check only tells a person running the binary by hand what it is.
pub(crate) const MAGIC_COOKIE_KEY: &str = "TF_PLUGIN_MAGIC_COOKIE";
pub(crate) const MAGIC_COOKIE_VALUE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";

/// The Terraform plugin protocol major version this provider speaks.
pub(crate) const PROTOCOL_VERSION: u32 = 5;
/// go-plugin's own core protocol version, the first handshake field.
const CORE_PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error(
        "This binary is a Terraform provider plugin. It is not meant to be run directly:\n\
         Terraform starts it. To use it, point Terraform at it with a dev_overrides\n\
         CLI configuration, or run it with --debug and export TF_REATTACH_PROVIDERS."
    )]
    NotLaunchedByTerraform,
    #[error("this provider speaks Terraform plugin protocol 5, but the client offers only {offered:?}")]
    NoCommonProtocol { offered: String },
}

/// Checks the cookie and picks protocol 5 from the versions the client
/// offers (their order carries no meaning).
pub(crate) fn negotiate(cookie: Option<&str>, offered: Option<&str>) -> Result<u32, HandshakeError> {
    if cookie != Some(MAGIC_COOKIE_VALUE) {
        return Err(HandshakeError::NotLaunchedByTerraform);
    }
    // A client that sends no list predates version negotiation and speaks 5.
    let Some(offered) = offered.filter(|o| !o.trim().is_empty()) else {
        return Ok(PROTOCOL_VERSION);
    };
    let speaks_5 = offered.split(',').any(|v| v.trim().parse::<u32>() == Ok(PROTOCOL_VERSION));
    if speaks_5 { Ok(PROTOCOL_VERSION) } else { Err(HandshakeError::NoCommonProtocol { offered: offered.to_owned() }) }
}

/// The line go-plugin clients parse:
/// `1|5|tcp|127.0.0.1:PORT|grpc|<server cert DER, base64 without padding>`,
/// with an empty last field when serving plaintext.
pub(crate) fn handshake_line(addr: std::net::SocketAddr, server_cert_der: Option<&[u8]>) -> String {
    let cert =
        server_cert_der.map(|der| base64::engine::general_purpose::STANDARD_NO_PAD.encode(der)).unwrap_or_default();
    format!("{CORE_PROTOCOL_VERSION}|{PROTOCOL_VERSION}|tcp|{addr}|grpc|{cert}")
}

/// The `TF_REATTACH_PROVIDERS` value that points Terraform at a provider
/// serving in the foreground.
pub(crate) fn reattach_json(source_address: &str, addr: std::net::SocketAddr, pid: u32) -> String {
    // Terraform keys reattached providers by their fully qualified address.
    let qualified = if source_address.matches('/').count() == 1 {
        format!("registry.terraform.io/{source_address}")
    } else {
        source_address.to_owned()
    };
    serde_json::json!({
        qualified: {
            "Protocol": "grpc",
            "ProtocolVersion": PROTOCOL_VERSION,
            "Pid": pid,
            "Test": true,
            "Addr": { "Network": "tcp", "String": addr.to_string() },
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_5_whatever_the_order() {
        assert_eq!(negotiate(Some(MAGIC_COOKIE_VALUE), Some("6,5")), Ok(5));
        assert_eq!(negotiate(Some(MAGIC_COOKIE_VALUE), Some("5")), Ok(5));
        assert_eq!(negotiate(Some(MAGIC_COOKIE_VALUE), None), Ok(5));
    }

    #[test]
    fn refuses_without_cookie_or_common_version() {
        assert_eq!(negotiate(None, Some("5")), Err(HandshakeError::NotLaunchedByTerraform));
        assert_eq!(negotiate(Some("wrong"), Some("5")), Err(HandshakeError::NotLaunchedByTerraform));
        assert!(matches!(negotiate(Some(MAGIC_COOKIE_VALUE), Some("6")), Err(HandshakeError::NoCommonProtocol { .. })));
    }

    #[test]
    fn reattach_json_names_the_qualified_address() {
        let json = reattach_json("trellis/kube", "127.0.0.1:4000".parse().expect("addr"), 7);
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        let entry = &v["registry.terraform.io/trellis/kube"];
        assert_eq!(entry["Addr"]["String"], "127.0.0.1:4000");
        assert_eq!(entry["ProtocolVersion"], 5);
        assert_eq!(entry["Test"], true);
    }

    #[test]
    fn handshake_line_uses_unpadded_base64() {
        let addr = "127.0.0.1:4000".parse().expect("addr");
        assert_eq!(handshake_line(addr, None), "1|5|tcp|127.0.0.1:4000|grpc|");
        // 4 bytes need padding in standard base64; go-plugin rejects it.
        assert_eq!(handshake_line(addr, Some(&[1, 2, 3, 4])), "1|5|tcp|127.0.0.1:4000|grpc|AQIDBA");
    }
}
