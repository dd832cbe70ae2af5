//! `kube_trust_anchor`: the mesh's root CA, generated locally. The mesh
//! identity issuer is signed by it and every proxy trusts it, so its expiry
//! is the outage mesh users report most: plan warns 60 days ahead, and an
//! `early_renewal_hours` window makes plan propose the replacement.

use async_trait::async_trait;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, SanType};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use tfplugin::{
    Attribute, AttributePath, Block, Config, Diagnostic, Diagnostics, Failure, Plan, Resource, Schema, Type, Validator,
    Value,
};

/// How far ahead plan warns about an expiring anchor.
const EXPIRY_WARNING_DAYS: i64 = 60;
/// A hundred years: beyond that a validity is a typo, not a decision.
const MAX_HOURS: i64 = 876_000;

#[derive(Debug)]
pub struct TrustAnchor;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustAnchorState {
    pub id: Option<String>,
    pub algorithm: Option<String>,
    pub trust_domain: Option<String>,
    pub validity_hours: Option<i64>,
    pub early_renewal_hours: Option<i64>,
    pub cert_pem: Option<String>,
    pub private_key_pem: Option<String>,
    pub not_after: Option<String>,
    pub fingerprint_sha256: Option<String>,
    pub ready_for_renewal: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    EcdsaP256,
    Ed25519,
}

impl Algorithm {
    const NAMES: &'static [&'static str] = &["ECDSA_P256", "ED25519"];

    fn parse(name: &str) -> Option<Self> {
        match name {
            "ECDSA_P256" => Some(Algorithm::EcdsaP256),
            "ED25519" => Some(Algorithm::Ed25519),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Algorithm::EcdsaP256 => "ECDSA_P256",
            Algorithm::Ed25519 => "ED25519",
        }
    }
    fn signature(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Algorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
    fn of_key(key: &KeyPair) -> Option<Self> {
        [Algorithm::EcdsaP256, Algorithm::Ed25519].into_iter().find(|a| key.is_compatible(a.signature()))
    }
}

/// SPIFFE trust domains: lowercase letters, digits, dots, dashes and underscores.
fn check_trust_domain(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let valid = s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
    if valid && !s.starts_with('.') && !s.ends_with('.') {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_'), e.g. \"cluster.local\""
        ))
    }
}

#[async_trait]
impl Resource for TrustAnchor {
    type State = TrustAnchorState;
    type Private = ();

    fn type_name(&self) -> &'static str {
        "kube_trust_anchor"
    }

    fn schema(&self) -> Schema {
        let computed = |name: &str, ty: Type, description: &str| Attribute::computed(name, ty).describe(description);
        Schema {
            version: 0,
            block: Block {
                description: "The root CA (trust anchor) of the Trellis mesh, generated locally. The mesh identity \
                    issuer is signed by it and every proxy trusts it. Import takes the path of a PEM file holding \
                    an existing anchor's certificate and PKCS#8 private key, e.g. one created for Linkerd."
                    .into(),
                attributes: vec![
                    computed("id", Type::String, "SHA-256 fingerprint of the certificate."),
                    Attribute::with_default("algorithm", Type::String, "ECDSA_P256")
                        .describe("Key algorithm.")
                        .validate(Validator::OneOf(Algorithm::NAMES))
                        .replaces(),
                    Attribute::with_default("trust_domain", Type::String, "cluster.local")
                        .describe(
                            "SPIFFE trust domain of the mesh identities (`spiffe://<trust_domain>/ns/<ns>/sa/<sa>`).",
                        )
                        .validate(Validator::NotEmpty)
                        .validate(Validator::Custom { description: "a SPIFFE trust domain", check: check_trust_domain })
                        .replaces(),
                    Attribute::with_default("validity_hours", Type::Number, 8760)
                        .describe("Hours the certificate is valid from creation. Left out of the configuration of an existing anchor (an imported one, say), it keeps the anchor's own validity instead of the default.")
                        .validate(Validator::IntegerBetween(1, MAX_HOURS))
                        .replaces(),
                    Attribute::with_default("early_renewal_hours", Type::Number, 0)
                        .describe("Hours before expiry from which plan proposes a replacement.")
                        .validate(Validator::IntegerBetween(0, MAX_HOURS)),
                    computed("cert_pem", Type::String, "The trust anchor certificate, PEM."),
                    computed("private_key_pem", Type::String, "The private key, PKCS#8 PEM.").sensitive(),
                    computed("not_after", Type::String, "Expiry time, RFC 3339."),
                    computed(
                        "fingerprint_sha256",
                        Type::String,
                        "SHA-256 fingerprint of the DER certificate, lowercase hex.",
                    ),
                    computed(
                        "ready_for_renewal",
                        Type::Bool,
                        "True once the certificate is inside its early-renewal window; plan then replaces it.",
                    ),
                ],
                blocks: Vec::new(),
                deprecated: false,
            },
        }
    }

    fn validate(&self, config: &Config, diags: &mut Diagnostics) {
        let hours = |name| config.get(name).as_number().and_then(tfplugin::Number::as_i64);
        if let (Some(early), Some(validity)) = (hours("early_renewal_hours"), hours("validity_hours"))
            && early >= validity
        {
            diags.push(
                Diagnostic::error(
                    "Invalid value for early_renewal_hours",
                    format!("early_renewal_hours ({early}) must be less than validity_hours ({validity}), or every plan would replace the anchor"),
                )
                .at(AttributePath::attribute("early_renewal_hours")),
            );
        }
    }

    async fn modify_plan(&self, plan: &mut Plan<'_>) {
        let Some(prior) = plan.prior().cloned() else {
            plan.set("ready_for_renewal", Value::Bool(false));
            return;
        };
        // Validity only shapes a new certificate. Left out of the
        // configuration, it keeps what the anchor has (an imported anchor's
        // own validity) rather than replacing the mesh's root for a default.
        if plan.config().get("validity_hours").is_null()
            && let Some(validity) = prior.get("validity_hours").filter(|v| !v.is_null())
        {
            plan.set("validity_hours", validity.clone());
        }
        let Some(not_after) =
            prior.get("not_after").and_then(Value::as_str).and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
        else {
            return;
        };
        let early_hours =
            plan.planned("early_renewal_hours").as_number().and_then(tfplugin::Number::as_i64).unwrap_or(0);
        let now = OffsetDateTime::now_utc();
        if now >= not_after - time::Duration::hours(early_hours) {
            plan.set("ready_for_renewal", Value::Bool(true));
            plan.replace_because("ready_for_renewal");
        }
        if plan.replaces() {
            return;
        }
        let left = not_after - now;
        if left <= time::Duration::days(EXPIRY_WARNING_DAYS) {
            let date = not_after.format(&Rfc3339).unwrap_or_default();
            let when = if left.is_negative() {
                format!("expired on {date}")
            } else {
                format!("expires on {date}, in {} days", left.whole_days())
            };
            plan.diagnostics.push(
                Diagnostic::warning(
                    "Mesh trust anchor expires soon",
                    format!(
                        "The trust anchor {when}, and no replacement is planned. When it expires, every mesh \
                         connection fails. Set early_renewal_hours to have plan propose a replacement, or run \
                         terraform apply -replace on this resource."
                    ),
                )
                .at(AttributePath::attribute("not_after")),
            );
        }
    }

    async fn create(
        &self,
        planned: TrustAnchorState,
        _: &mut (),
    ) -> Result<TrustAnchorState, Failure<TrustAnchorState>> {
        let algorithm = planned.algorithm.as_deref().and_then(Algorithm::parse).ok_or_else(|| invalid("algorithm"))?;
        let trust_domain = planned.trust_domain.clone().ok_or_else(|| invalid("trust_domain"))?;
        let validity_hours = planned.validity_hours.ok_or_else(|| invalid("validity_hours"))?;
        let generated = generate(algorithm, &trust_domain, validity_hours)
            .map_err(|e| Diagnostic::error("Cannot generate the trust anchor", e.to_string()))?;
        let mut state = planned;
        state.ready_for_renewal = Some(false);
        describe_certificate(&mut state, &generated.cert_pem).map_err(Failure::from)?;
        state.cert_pem = Some(generated.cert_pem);
        state.private_key_pem = Some(generated.key_pem);
        Ok(state)
    }

    async fn read(&self, current: TrustAnchorState, _: &mut ()) -> Result<Option<TrustAnchorState>, Diagnostics> {
        let pem = current.cert_pem.clone().unwrap_or_default();
        let mut state = current;
        describe_certificate(&mut state, &pem)?;
        Ok(Some(state))
    }

    async fn update(
        &self,
        prior: TrustAnchorState,
        planned: TrustAnchorState,
        _: &mut (),
    ) -> Result<TrustAnchorState, Failure<TrustAnchorState>> {
        // Only early_renewal_hours updates in place; everything else replaces.
        Ok(TrustAnchorState { early_renewal_hours: planned.early_renewal_hours, ..prior })
    }

    async fn delete(&self, _: TrustAnchorState, _: &()) -> Result<(), Diagnostics> {
        // The anchor exists only in Terraform state.
        Ok(())
    }

    async fn import(&self, id: &str) -> Result<(TrustAnchorState, ()), Diagnostics> {
        let at = |e: String| Diagnostics::from(Diagnostic::error("Cannot import the trust anchor", e));
        let bundle = std::fs::read_to_string(id).map_err(|e| {
            at(format!(
                "the import ID must be the path of a PEM file with the certificate and private key; reading {id:?}: {e}"
            ))
        })?;
        let cert_pem = pem_blocks(&bundle, "CERTIFICATE")
            .into_iter()
            .next()
            .ok_or_else(|| at(format!("{id} holds no PEM certificate")))?;
        let key_pem = pem_blocks(&bundle, "PRIVATE KEY")
            .into_iter()
            .next()
            .ok_or_else(|| at(format!("{id} holds no PKCS#8 private key (-----BEGIN PRIVATE KEY-----)")))?;
        let key =
            KeyPair::from_pem(&key_pem).map_err(|e| at(format!("the private key in {id} does not parse: {e}")))?;
        let algorithm =
            Algorithm::of_key(&key).ok_or_else(|| at(format!("the key in {id} is neither ECDSA P-256 nor Ed25519")))?;
        let der = certificate_der(&cert_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| at(format!("the certificate in {id} does not parse: {e}")))?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(at(format!("the private key in {id} does not belong to its certificate")));
        }
        let validity = cert.validity();
        let validity_hours = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 3600;
        let mut state = TrustAnchorState {
            id: None,
            algorithm: Some(algorithm.name().to_owned()),
            trust_domain: Some(trust_domain_of(&cert).ok_or_else(|| {
                at(format!(
                    "the certificate in {id} names no trust domain (no spiffe:// URI SAN or root.<domain> common name)"
                ))
            })?),
            validity_hours: Some(validity_hours),
            early_renewal_hours: Some(0),
            cert_pem: None,
            private_key_pem: Some(key.serialize_pem()),
            not_after: None,
            fingerprint_sha256: None,
            ready_for_renewal: Some(false),
        };
        describe_certificate(&mut state, &cert_pem)?;
        state.cert_pem = Some(cert_pem);
        Ok((state, ()))
    }
}

fn invalid(attribute: &str) -> Failure<TrustAnchorState> {
    Diagnostic::error("Missing value", format!("{attribute} has no value"))
        .at(AttributePath::attribute(attribute))
        .into()
}

struct Generated {
    cert_pem: String,
    key_pem: String,
}

fn generate(algorithm: Algorithm, trust_domain: &str, validity_hours: i64) -> Result<Generated, rcgen::Error> {
    let key = KeyPair::generate_for(algorithm.signature())?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, format!("root.{trust_domain}"));
    params.subject_alt_names = vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| rcgen::Error::RingUnspecified)?;
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    // Whole seconds: the certificate cannot hold more, and not_after in
    // state must match it exactly.
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or_else(|_| OffsetDateTime::now_utc());
    params.not_before = now;
    params.not_after = now + time::Duration::hours(validity_hours);
    let cert = params.self_signed(&key)?;
    Ok(Generated { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Fills the attributes derived from the certificate itself, so state
/// always says what the certificate says. Fails, naming `cert_pem`, when
/// the stored certificate does not parse.
fn describe_certificate(state: &mut TrustAnchorState, cert_pem: &str) -> Result<(), Diagnostics> {
    let der = certificate_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| unparseable(&e.to_string()))?;
    let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .ok_or_else(|| unparseable("its expiry time is out of range"))?;
    let fingerprint: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    state.not_after = Some(not_after);
    state.id = Some(fingerprint.clone());
    state.fingerprint_sha256 = Some(fingerprint);
    Ok(())
}

fn certificate_der(cert_pem: &str) -> Result<Vec<u8>, Diagnostics> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| unparseable(&e.to_string()))?;
    if pem.label != "CERTIFICATE" {
        return Err(unparseable(&format!("it is a {} block, not a CERTIFICATE", pem.label)));
    }
    Ok(pem.contents)
}

fn unparseable(reason: &str) -> Diagnostics {
    Diagnostic::error(
        "Trust anchor certificate in state does not parse",
        format!(
            "The certificate stored in state is not a readable PEM certificate ({reason}). The state was edited or \
             damaged. Restore it from a backup, or remove it with terraform state rm and import the anchor the \
             mesh really uses."
        ),
    )
    .at(AttributePath::attribute("cert_pem"))
    .into()
}

/// The PEM blocks of one label in a bundle, each with its armour.
fn pem_blocks(bundle: &str, label: &str) -> Vec<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    bundle
        .match_indices(&begin)
        .filter_map(|(start, _)| {
            let rest = &bundle[start..];
            rest.find(&end).map(|stop| format!("{}\n", &rest[..stop + end.len()]))
        })
        .collect()
}

fn trust_domain_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let from_san = cert.subject_alternative_name().ok().flatten().and_then(|san| {
        san.value.general_names.iter().find_map(|n| match n {
            GeneralName::URI(uri) => uri.strip_prefix("spiffe://").map(|d| d.trim_end_matches('/').to_owned()),
            _ => None,
        })
    });
    from_san.or_else(|| {
        let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
        cn.strip_prefix("root.").map(str::to_owned)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(algorithm: &str) -> TrustAnchorState {
        let planned = TrustAnchorState {
            id: None,
            algorithm: Some(algorithm.into()),
            trust_domain: Some("mesh.example".into()),
            validity_hours: Some(48),
            early_renewal_hours: Some(0),
            cert_pem: None,
            private_key_pem: None,
            not_after: None,
            fingerprint_sha256: None,
            ready_for_renewal: Some(false),
        };
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(TrustAnchor.create(planned, &mut ())).map_err(|f| f.diagnostics).expect("create")
    }

    #[test]
    fn creates_a_ca_for_the_trust_domain_with_the_asked_validity() {
        for algorithm in Algorithm::NAMES {
            let state = created(algorithm);
            let der = certificate_der(state.cert_pem.as_deref().expect("cert")).expect("der");
            let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
            assert!(cert.is_ca());
            assert_eq!(trust_domain_of(&cert).as_deref(), Some("mesh.example"));
            let v = cert.validity();
            assert_eq!(v.not_after.timestamp() - v.not_before.timestamp(), 48 * 3600);
            assert_eq!(state.id, state.fingerprint_sha256);
        }
    }

    #[test]
    fn import_reads_back_what_create_wrote() {
        let state = created("ED25519");
        let dir = tempfile::tempdir().expect("tempdir");
        let bundle = dir.path().join("anchor.pem");
        let text =
            format!("{}{}", state.cert_pem.as_deref().expect("cert"), state.private_key_pem.as_deref().expect("key"));
        std::fs::write(&bundle, text).expect("write");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let (imported, ()) = rt.block_on(TrustAnchor.import(bundle.to_str().expect("path"))).expect("import");
        assert_eq!(imported, state);
    }

    #[test]
    fn read_names_cert_pem_when_state_is_damaged() {
        let mut state = created("ECDSA_P256");
        state.cert_pem = Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into());
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let diags = rt.block_on(TrustAnchor.read(state, &mut ())).expect_err("damaged");
        assert_eq!(diags.0[0].path, Some(AttributePath::attribute("cert_pem")));
    }
}
