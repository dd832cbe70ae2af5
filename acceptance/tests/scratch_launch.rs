use trellis_acceptance::{Action, Launch, Step, TestCase};

const HCL: &str = r#"
terraform {
  required_providers {
    kube = { source = "trellis/kube" }
  }
}
provider "kube" {
  region                      = "us-east-1"
  access_key                  = "x"
  secret_key                  = "y"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
}
data "aws_partition" "p" { provider = kube }
resource "terraform_data" "t" { input = data.aws_partition.p.partition }
output "arn" { value = provider::kube::arn_parse("arn:aws:iam::444455556666:role/example") }
"#;

fn run(launch: Launch) {
    let mut case = TestCase::new(launch);
    case.step(Step::config(HCL).expect_actions("terraform_data.t", &[Action::Create])
        .expect_warning(if launch == Launch::Reattach { "" } else { "Provider development overrides are in effect" })
        .check(|s| { assert_eq!(s.attr_str("data.aws_partition.p", "partition"), "aws"); }));
    assert_eq!(case.outputs()["arn"]["account_id"], "444455556666");
    let id = case.state().attr_str("terraform_data.t", "id").to_owned();
    case.step(Step::import("terraform_data.t", id).verify_ignore(&["input", "output", "triggers_replace"]));
    case.step(Step::config(HCL.replace("us-east-1", "bogus-region")).expect_error("region"));
    case.destroy_and_check(|_| {});
}

#[test] fn dev_overrides() { run(Launch::DevOverrides) }
#[test] fn dev_overrides_plaintext() { run(Launch::DevOverridesPlaintext) }
#[test] fn reattach() { run(Launch::Reattach) }
