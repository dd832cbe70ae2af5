//! `kube_trust_anchor` through the real terraform binary, under each way
//! Terraform can reach the provider: AutoMTLS, plaintext, and --debug
//! reattach.

use trellis_acceptance::{Action, Launch, Step, TestCase};

const ADDR: &str = "kube_trust_anchor.mesh";
const REPLACE: &[Action] = &[Action::Delete, Action::Create];

fn config(attributes: &str) -> String {
    format!(
        r#"
terraform {{
  required_providers {{
    kube = {{ source = "trellis/kube" }}
  }}
}}

provider "kube" {{}}

resource "kube_trust_anchor" "mesh" {{
  {attributes}
}}
"#
    )
}

/// Create, update in place, replace, import with verify, destroy.
fn lifecycle(launch: Launch) {
    let mut case = TestCase::new(launch);
    case.step(Step::config(config("early_renewal_hours = 24")).expect_actions(ADDR, &[Action::Create]).check(|s| {
        assert_eq!(s.attr_str(ADDR, "algorithm"), "ECDSA_P256");
        assert_eq!(s.attr_str(ADDR, "trust_domain"), "cluster.local");
        assert_eq!(s.attr(ADDR, "validity_hours"), 8760);
        assert_eq!(s.attr(ADDR, "ready_for_renewal"), false);
        assert!(s.attr_str(ADDR, "cert_pem").starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(s.attr_str(ADDR, "private_key_pem").contains("PRIVATE KEY"));
        assert_eq!(s.attr_str(ADDR, "id"), s.attr_str(ADDR, "fingerprint_sha256"));
        assert_eq!(s.attr_str(ADDR, "fingerprint_sha256").len(), 64);
    }));
    let first = case.state().attr_str(ADDR, "fingerprint_sha256").to_owned();

    case.step(Step::config(config("early_renewal_hours = 48")).expect_actions(ADDR, &[Action::Update]).check({
        let first = first.clone();
        move |s| {
            assert_eq!(s.attr(ADDR, "early_renewal_hours"), 48);
            assert_eq!(s.attr_str(ADDR, "fingerprint_sha256"), first, "an in-place update keeps the certificate");
        }
    }));

    case.step(
        Step::config(config("early_renewal_hours = 48\n  trust_domain = \"mesh.example\"\n  algorithm = \"ED25519\""))
            .expect_actions(ADDR, REPLACE)
            .check(move |s| {
                assert_ne!(s.attr_str(ADDR, "fingerprint_sha256"), first, "a replacement makes a new certificate");
                assert_eq!(s.attr_str(ADDR, "trust_domain"), "mesh.example");
            }),
    );

    let state = case.state();
    let bundle = case.scratch_dir().join("anchor.pem");
    std::fs::write(&bundle, format!("{}{}", state.attr_str(ADDR, "cert_pem"), state.attr_str(ADDR, "private_key_pem")))
        .expect("write the import bundle");
    // Import cannot know the renewal window chosen in configuration.
    case.step(Step::import(ADDR, bundle.to_str().expect("utf-8 path")).verify_ignore(&["early_renewal_hours"]));

    case.destroy_and_check(|before| assert_eq!(before.addresses().collect::<Vec<_>>(), [ADDR]));
}

#[test]
fn lifecycle_with_auto_mtls() {
    lifecycle(Launch::DevOverrides);
}

#[test]
fn lifecycle_with_plugin_tls_disabled() {
    lifecycle(Launch::DevOverridesPlaintext);
}

#[test]
fn lifecycle_through_debug_reattach() {
    lifecycle(Launch::Reattach);
}

#[test]
fn bad_attributes_are_reported_on_the_attribute_and_nothing_is_written() {
    let mut case = TestCase::new(Launch::DevOverrides);
    case.step(
        Step::config(config("validity_hours = -5\n  algorithm = \"RSA\"\n  trust_domain = \"\""))
            .expect_error("Invalid value for validity_hours")
            .expect_error("-5 is not a whole number from 1 to 876000")
            .expect_error("Invalid value for algorithm")
            .expect_error("\"RSA\" is not one of `ECDSA_P256`, `ED25519`")
            .expect_error("Invalid value for trust_domain"),
    );
    case.step(
        Step::config(config("validity_hours = 10\n  early_renewal_hours = 10"))
            .expect_error("early_renewal_hours (10) must be less than validity_hours (10)"),
    );
    assert!(case.state().is_empty(), "a failed plan leaves nothing in state");
}

/// An anchor imported an hour before it expires: plan warns naming the
/// date while no replacement is planned, and proposes the replacement once
/// the early-renewal window covers it.
#[test]
fn an_expiring_anchor_warns_and_early_renewal_replaces_it() {
    let mut case = TestCase::new(Launch::DevOverrides);
    let import = import_expiring_anchor(&case);

    case.step(
        Step::config(format!("{import}{}", config("validity_hours = 48")))
            .expect_warning("Mesh trust anchor expires soon")
            .expect_warning("expires on")
            .check(|s| assert_eq!(s.attr(ADDR, "ready_for_renewal"), false)),
    );
    case.step(
        Step::config(format!("{import}{}", config("validity_hours = 48\n  early_renewal_hours = 2")))
            .expect_actions(ADDR, REPLACE)
            .check(|s| {
                assert_eq!(s.attr(ADDR, "ready_for_renewal"), false, "the new anchor starts outside the window")
            }),
    );
    case.destroy_and_check(|_| {});
}

/// Adopting an existing anchor must not rotate it: with validity left out
/// of the configuration, the imported anchor's own validity stands.
#[test]
fn an_imported_anchor_is_adopted_without_replacement() {
    let mut case = TestCase::new(Launch::DevOverrides);
    let import = import_expiring_anchor(&case);
    case.step(
        Step::config(format!("{import}{}", config("")))
            .expect_actions(ADDR, &[Action::NoOp])
            .check(|s| assert_eq!(s.attr(ADDR, "validity_hours"), 48)),
    );
    case.destroy_and_check(|_| {});
}

/// Writes an expiring anchor (below) to the case's scratch directory and
/// returns the `import` block that adopts it as `kube_trust_anchor.mesh`.
fn import_expiring_anchor(case: &TestCase) -> String {
    let bundle = case.scratch_dir().join("existing-anchor.pem");
    std::fs::write(&bundle, expiring_anchor_pem()).expect("write the anchor");
    format!("import {{\n  to = {ADDR}\n  id = {:?}\n}}\n", bundle.to_str().expect("utf-8 path"))
}

/// A P-256 trust anchor for cluster.local, valid 48 hours, 47 of them past.
fn expiring_anchor_pem() -> String {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "root.cluster.local");
    params.subject_alt_names = vec![SanType::URI("spiffe://cluster.local".try_into().expect("uri"))];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).expect("whole seconds");
    params.not_before = now - time::Duration::hours(47);
    params.not_after = now + time::Duration::hours(1);
    let cert = params.self_signed(&key).expect("certificate");
    format!("{}{}", cert.pem(), key.serialize_pem())
}
