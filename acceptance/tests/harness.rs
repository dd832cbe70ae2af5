//! Self-tests of the harness against Terraform's built-in `terraform_data`
//! resource, so they need terraform but no provider binary.

use serde_json::json;
use trellis_acceptance::{Action, Launch, Step, TestCase};

fn data(input: &str, trigger: &str) -> String {
    format!(
        r#"
resource "terraform_data" "a" {{
  input            = "{input}"
  triggers_replace = ["{trigger}"]
}}

output "echo" {{
  value = terraform_data.a.output
}}
"#
    )
}

#[test]
fn create_update_replace_import_destroy() {
    let mut case = TestCase::new(Launch::BuiltinOnly);

    case.step(Step::config(data("one", "x")).expect_actions("terraform_data.a", &[Action::Create]).check(|state| {
        assert_eq!(state.attr_str("terraform_data.a", "output"), "one");
        assert_eq!(state.attr("terraform_data.a", "triggers_replace.0"), "x");
        assert_eq!(state.output("echo"), Some(&json!("one")));
    }));
    let first_id = case.state().attr_str("terraform_data.a", "id").to_owned();
    assert_eq!(case.outputs().get("echo"), Some(&json!("one")));

    case.step(
        Step::config(data("two", "x"))
            .expect_actions("terraform_data.a", &[Action::Update])
            .check(move |state| assert_eq!(state.attr_str("terraform_data.a", "id"), first_id)),
    );
    assert_eq!(case.outputs().get("echo"), Some(&json!("two")));

    case.step(Step::config(data("two", "y")).expect_actions("terraform_data.a", &[Action::Delete, Action::Create]));
    case.step(Step::config(data("two", "y")).expect_actions("terraform_data.a", &[Action::NoOp]));

    // Neither a config that fails to plan nor a plan-only step may leak into
    // the import and destroy below: both use the last applied config.
    case.step(Step::config(r#"output "bad" { value = terraform_data.nope.id }"#).expect_error("undeclared resource"));
    case.step(Step::plan_only(data("three", "y")).expect_actions("terraform_data.a", &[Action::Update]));

    // terraform_data imports only its id; everything else comes back null.
    let id = case.state().attr_str("terraform_data.a", "id").to_owned();
    case.step(
        Step::import("terraform_data.a", id.clone())
            .verify_ignore(&["input", "output", "triggers_replace"])
            .check(move |imported| assert_eq!(imported.attr_str("terraform_data.a", "id"), id)),
    );

    case.destroy_and_check(|before| {
        assert_eq!(before.addresses().collect::<Vec<_>>(), ["terraform_data.a"]);
    });
    assert!(case.state().is_empty());
}

#[test]
fn expected_error_is_matched_across_line_wraps() {
    let mut case = TestCase::new(Launch::BuiltinOnly);
    // Terraform breaks this detail line before "module.".
    case.step(
        Step::config(r#"output "bad" { value = terraform_data.nope.id }"#)
            .expect_error("Reference to undeclared resource")
            .expect_error(r#"A managed resource "terraform_data" "nope" has not been declared in the root module"#),
    );
    assert!(case.state().is_empty());
}

#[test]
fn warnings_are_matched_in_plan_output() {
    let mut case = TestCase::new(Launch::BuiltinOnly);
    case.step(
        Step::config(
            r#"
variable "v" {
  default = "x"
}

check "always_fails" {
  assert {
    condition     = var.v == "y"
    error_message = "deliberately failing check"
  }
}
"#,
        )
        .expect_warning("Check block assertion failed")
        .expect_warning("deliberately failing check"),
    );
}

#[test]
fn plan_only_does_not_apply() {
    let mut case = TestCase::new(Launch::BuiltinOnly);
    case.step(Step::plan_only(data("one", "x")).expect_actions("terraform_data.a", &[Action::Create]));
    assert!(case.state().is_empty());
}

#[test]
fn non_empty_plan_after_apply_can_be_accepted() {
    let mut case = TestCase::new(Launch::BuiltinOnly);
    case.step(Step::config(r#"resource "terraform_data" "a" { input = timestamp() }"#).expect_non_empty_plan());
    case.destroy_and_check(|_| {});
}

// The harness must fail loudly when an expectation does not hold.

#[test]
#[should_panic(expected = "after applying this step, the non-refresh plan was not empty")]
fn non_empty_plan_after_apply_fails() {
    let mut case = TestCase::new(Launch::BuiltinOnly);
    // timestamp() changes on every run, so the next plan always updates.
    case.step(Step::config(r#"resource "terraform_data" "a" { input = timestamp() }"#));
}

#[test]
#[should_panic(expected = r#"terraform_data.a: expected actions ["update"], planned ["create"]"#)]
fn wrong_actions_fail() {
    let mut case = TestCase::new(Launch::BuiltinOnly);
    case.step(Step::config(data("one", "x")).expect_actions("terraform_data.a", &[Action::Update]));
}

#[test]
#[should_panic(expected = "but plan and apply succeeded")]
fn missing_error_fails() {
    let mut case = TestCase::new(Launch::BuiltinOnly);
    case.step(Step::config(data("one", "x")).expect_error("validity_hours"));
}

#[test]
#[should_panic(expected = "not with an error containing \"validity_hours\"")]
fn different_error_fails() {
    let mut case = TestCase::new(Launch::BuiltinOnly);
    case.step(Step::config(r#"output "bad" { value = terraform_data.nope.id }"#).expect_error("validity_hours"));
}

#[test]
#[should_panic(expected = "expected a warning containing \"never printed\"")]
fn missing_warning_fails() {
    let mut case = TestCase::new(Launch::BuiltinOnly);
    case.step(Step::config(data("one", "x")).expect_warning("never printed"));
}

#[test]
#[should_panic(expected = "imported attributes of terraform_data.a differ from the applied ones")]
fn import_verification_reports_differences() {
    let mut case = TestCase::new(Launch::BuiltinOnly);
    case.step(Step::config(data("one", "x")));
    let id = case.state().attr_str("terraform_data.a", "id").to_owned();
    case.step(Step::import("terraform_data.a", id).verify_ignore(&["output"]));
}
