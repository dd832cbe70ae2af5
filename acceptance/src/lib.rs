//! Acceptance-test harness: drives the real `terraform` CLI against the
//! `trellis/kube` provider the way terraform-plugin-testing does.
//!
//! ```no_run
//! use trellis_acceptance::{Action, Launch, Step, TestCase};
//!
//! let mut case = TestCase::new(Launch::Reattach);
//! case.step(
//!     Step::config(r#"resource "kube_trust_anchor" "a" { validity_hours = 24 }"#)
//!         .expect_actions("kube_trust_anchor.a", &[Action::Create])
//!         .check(|state| assert_eq!(state.attr("kube_trust_anchor.a", "validity_hours"), 24)),
//! );
//! case.step(Step::config(r#"resource "kube_trust_anchor" "a" { validity_hours = -1 }"#).expect_error("validity_hours"));
//! case.destroy_and_check(|_| {});
//! ```
//!
//! The provider binary is `$TRELLIS_PROVIDER_BIN`, or else built once per test
//! process with `cargo build -p terraform-provider-kube`; tests panic when
//! terraform or the provider is unavailable rather than skip.

mod case;
mod provider;
mod state;
mod step;
mod terraform;

pub use case::{Launch, TestCase};
pub use state::State;
pub use step::{Action, Step};
