use trellis_api::MeshIdentity;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("could not generate an ECDSA P-256 key: {0}")]
    KeyGeneration(rcgen::Error),
    #[error("rustls cannot sign with the proxy key: {0}")]
    KeyLoad(rustls::Error),
    #[error(
        "identity {identity} cannot be put in a certificate: its server name `{server_name}` is not a valid DNS name \
         (labels of at most 63 characters, at most 253 characters in all)"
    )]
    ServerName { identity: MeshIdentity, server_name: String },
    #[error("{what} is not valid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("{what} holds no CERTIFICATE block")]
    NoCertificate { what: &'static str },
    #[error("{what} holds no PRIVATE KEY or EC PRIVATE KEY block")]
    NoPrivateKey { what: &'static str },
    #[error("trust anchor #{index} in the bundle cannot be used: {reason}")]
    TrustAnchor { index: usize, reason: String },
    #[error("{what} is not an X.509 certificate: {reason}")]
    Certificate { what: &'static str, reason: String },
    #[error("{what} is not a usable private key: {reason}")]
    PrivateKey { what: &'static str, reason: String },
    #[error("the private key does not belong to {cert}: their public keys differ")]
    KeyMismatch { cert: &'static str },
    #[error("{what} is not a CA certificate (basicConstraints cA is not set), so it cannot sign certificates")]
    NotCa { what: &'static str },
    #[error("the CSR is not a PKCS#10 request this issuer accepts: {0}")]
    CsrMalformed(rcgen::Error),
    #[error("the CSR's signature does not verify with the public key it carries")]
    CsrSignature,
    #[error("the CSR carries no URI SAN but the token is for {expected}")]
    CsrNoIdentity { expected: MeshIdentity },
    #[error("CSR asks for {requested} but the token is for {expected}")]
    CsrIdentity { requested: String, expected: MeshIdentity },
    #[error("CSR asks for DNS name {requested} but the server name of {identity} is {expected}")]
    CsrDnsName { requested: String, identity: MeshIdentity, expected: String },
    #[error(
        "CSR asks for the {kind} {value} as a subject alternative name; only the SPIFFE ID and its server name are issued"
    )]
    CsrExtraName { kind: &'static str, value: String },
    #[error("the issuer certificate expired at {0}; the identity service needs a new one")]
    IssuerExpired(String),
    #[error("{what} falls outside the dates an X.509 certificate can carry")]
    TimeOutOfRange { what: &'static str },
    #[error("could not build the {what}: {source}")]
    Build { what: &'static str, source: rcgen::Error },
    #[error("the issued certificate is for another key than this proxy's")]
    LeafKeyMismatch,
    #[error("the issued certificate names {found} but this proxy is {expected}")]
    LeafIdentity { found: String, expected: MeshIdentity },
    #[error("the issued certificate is unusable: {0}")]
    LeafRejected(rustls::Error),
}
