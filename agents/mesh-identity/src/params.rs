//! Certificate fields shared by the CSR, the leaf and the CAs, and the conversions between
//! `SystemTime` and what X.509 can carry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use trellis_api::MeshIdentity;

use crate::CertError;
use crate::names::dns_name;

/// Certificates start this long before they are made, so a peer whose clock is a little behind
/// the signer's still accepts them.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The names a workload certificate carries: the SPIFFE ID as URI SAN and, because SNI and
/// WebPKI verification only know DNS names, the identity's server name as DNS SAN and CN.
pub(crate) fn workload_params(identity: &MeshIdentity) -> Result<CertificateParams, CertError> {
    let server_name = dns_name(identity)?.as_ref().to_owned();
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&server_name);
    params.subject_alt_names = vec![
        SanType::URI(ia5(identity.spiffe_uri(), "SPIFFE ID")?),
        SanType::DnsName(ia5(server_name, "server name")?),
    ];
    Ok(params)
}

/// A signing CA valid from now (less the clock skew) until `not_after`.
pub(crate) fn ca_params(
    common: &str,
    constraints: BasicConstraints,
    now: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(common);
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = cert_time(now.checked_sub(CLOCK_SKEW).unwrap_or(now), "the CA's start")?;
    params.not_after = cert_time(not_after, "the CA's end of validity")?;
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

pub(crate) fn ia5(value: String, what: &'static str) -> Result<rcgen::string::Ia5String, CertError> {
    rcgen::string::Ia5String::try_from(value).map_err(|source| CertError::Build { what, source })
}

/// rcgen derives the serial from the public key unless told otherwise, which would give every
/// renewal for the same proxy key the same serial; RFC 5280 wants them unique per issuer.
pub(crate) fn random_serial() -> Result<SerialNumber, CertError> {
    let mut bytes = [0u8; 16];
    crate::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CertError::Build { what: "serial number", source: rcgen::Error::RingUnspecified })?;
    // Positive (top bit clear) and never shortened by a leading zero byte: always 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Whole seconds since the epoch as rcgen wants them; X.509 has no sub-second precision.
pub(crate) fn cert_time(t: SystemTime, what: &'static str) -> Result<OffsetDateTime, CertError> {
    let secs = t.duration_since(UNIX_EPOCH).map_err(|_| CertError::TimeOutOfRange { what })?.as_secs();
    let secs = i64::try_from(secs).map_err(|_| CertError::TimeOutOfRange { what })?;
    // Beyond year 9999 GeneralizedTime cannot express it (and rcgen would panic).
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .filter(|dt| dt.year() <= 9999)
        .ok_or(CertError::TimeOutOfRange { what })
}

pub(crate) fn to_system_time(dt: OffsetDateTime) -> SystemTime {
    unix_seconds(dt.unix_timestamp())
}

pub(crate) fn x509_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    unix_seconds(t.timestamp())
}

fn unix_seconds(secs: i64) -> SystemTime {
    let offset = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 { UNIX_EPOCH.checked_add(offset) } else { UNIX_EPOCH.checked_sub(offset) };
    t.unwrap_or(UNIX_EPOCH)
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    cert_time(t, "").ok().and_then(|dt| dt.format(&Rfc3339).ok()).unwrap_or_else(|| format!("{t:?}"))
}
