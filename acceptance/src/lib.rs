//! Acceptance-test harness: drives the real `terraform` CLI against the
//! `trellis/kube` provider the way terraform-plugin-testing does.
//!
//! ```no_run
//! use trellis_acceptance::{Action, Launch, Step, TestCase};
//!
//! fn anchor(attributes: &str) -> String {
//!     format!(
//!         r#"
//! terraform {{
//!   required_providers {{
//!     kube = {{ source = "trellis/kube" }}
//!   }}
//! }}
//! resource "kube_trust_anchor" "a" {{
//!   {attributes}
//! }}
//! "#
//!     )
//! }
//!
//! let mut case = TestCase::new(Launch::Reattach);
//! case.step(
//!     Step::config(anchor("validity_hours = 48"))
//!         .expect_actions("kube_trust_anchor.a", &[Action::Create])
//!         .check(|state| assert_eq!(state.attr("kube_trust_anchor.a", "validity_hours"), 48)),
//! );
//! case.step(
//!     Step::config(anchor("validity_hours = 10\n  early_renewal_hours = 20"))
//!         .expect_error("early_renewal_hours"),
//! );
//! case.destroy_and_check(|before| assert_eq!(before.addresses().count(), 1));
//! ```
//!
//! The provider binary is `$TRELLIS_PROVIDER_BIN`, or else built once per test
//! process with `cargo build -p terraform-provider-kube`; tests panic when
//! terraform or the provider is unavailable rather than skip. Configs may use
//! only this provider and Terraform's built-in one, so no `terraform init` is
//! needed.
//!
//! [`aws`] and [`local_cloud`] are the local cloud the end-to-end tests and
//! the demo run against: moto seeded with an EKS setting, and the Kubernetes
//! emulator; the `local-cloud` binary offers the same to a shell.

pub mod aws;
mod case;
pub mod local_cloud;
mod provider;
mod state;
mod step;
mod terraform;

pub use case::{Launch, TestCase};
pub use state::State;
pub use step::{Action, Step};
