//! `provider::kube::max_pods` through the real terraform binary.

use trellis_acceptance::{Launch, Step, TestCase};

const HEADER: &str = r#"
terraform {
  required_providers {
    kube = { source = "trellis/kube" }
  }
}
"#;

#[test]
fn gives_the_eks_figures_and_names_an_unknown_instance_type() {
    let mut case = TestCase::new(Launch::DevOverrides);
    case.step(Step::config(format!(
        r#"{HEADER}
output "m5_large" {{ value = provider::kube::max_pods("m5.large", false) }}
output "m5_large_prefixes" {{ value = provider::kube::max_pods("m5.large", true) }}
output "by_type" {{ value = {{ for t in ["t3.micro", "m5.24xlarge"] : t => provider::kube::max_pods(t, false) }} }}
"#
    )));
    let outputs = case.outputs();
    assert_eq!(outputs["m5_large"], 29);
    assert_eq!(outputs["m5_large_prefixes"], 110);
    assert_eq!(outputs["by_type"], serde_json::json!({ "t3.micro": 4, "m5.24xlarge": 737 }));

    case.step(
        Step::config(format!(r#"{HEADER}output "x" {{ value = provider::kube::max_pods("m5.gigantic", false) }}"#))
            .expect_error(r#"unknown EC2 instance type "m5.gigantic""#),
    );
    case.step(
        Step::config(format!(r#"{HEADER}output "x" {{ value = provider::kube::max_pods("t2.medium", true) }}"#))
            .expect_error("prefix delegation needs Nitro"),
    );
}
