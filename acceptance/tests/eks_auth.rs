//! The provider reaching the local cloud's Kubernetes the way it reaches an
//! EKS cluster: `eks_cluster_name` in the provider block, only AWS settings
//! in the environment and no kubeconfig. DescribeCluster gives the endpoint
//! and CA; the bearer token is a presigned STS GetCallerIdentity, which the
//! emulator verifies with moto's STS as EKS's authenticator does, mapping
//! the cluster's creator to its admin and anyone else to their ARN.

use trellis_acceptance::local_cloud::LocalCloud;
use trellis_acceptance::{Action, Launch, Step, TestCase};

const ADDR: &str = "kube_cilium_like.net";
const DAEMONSET: &str = "apps/v1/DaemonSet/kube-system/trellis-agent";

/// `kube_cilium_like` as in cilium_like.rs (single addresses: moto keeps
/// no prefixes), behind a provider block that names only the EKS cluster.
const CONFIG: &str = r#"
terraform {
  required_providers {
    kube = { source = "trellis/kube" }
  }
}

provider "kube" {
  eks_cluster_name = "trellis-local"
}

resource "kube_cilium_like" "net" {
  cluster_name = "trellis-local"
  ipam {
    prefix_delegation     = false
    first_interface_index = 1
    pre_allocate          = 4
    pod_subnets           = { "us-east-1a" = "100.64.192.0/20", "us-east-1b" = "100.64.208.0/20", "us-east-1c" = "100.64.224.0/20" }
  }
}
"#;

/// The cloud's AWS settings, signing as `credentials` (the seed's when
/// `None`), with a `KUBECONFIG` that does not exist, so that nothing but
/// the EKS cluster can be where the provider's Kubernetes comes from.
fn aws_only_env(cloud: &LocalCloud, credentials: Option<(&str, &str)>) -> Vec<(&'static str, String)> {
    let replaced: &[&str] = match credentials {
        Some(_) => &["KUBECONFIG", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        None => &["KUBECONFIG"],
    };
    let mut env: Vec<(&str, String)> = cloud.env().into_iter().filter(|(name, _)| !replaced.contains(name)).collect();
    env.push(("KUBECONFIG", "/nonexistent/trellis-eks-auth/kubeconfig".to_owned()));
    if let Some((key, secret)) = credentials {
        env.push(("AWS_ACCESS_KEY_ID", key.to_owned()));
        env.push(("AWS_SECRET_ACCESS_KEY", secret.to_owned()));
    }
    env
}

/// `kubectl` as the cluster's admin, which must succeed: its output.
fn kubectl(cloud: &LocalCloud, args: &[&str]) -> String {
    let (ok, text) = cloud.kubectl(args);
    assert!(ok, "kubectl {args:?} failed: {text}");
    text
}

/// An IAM user with an access key, made in moto with the seed's
/// credentials: its ARN, key id and secret.
fn iam_user(cloud: &LocalCloud, name: &str) -> (String, String, String) {
    cloud.boto3(&format!(
        r#"
import boto3, json, os
iam = boto3.client("iam", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
user = iam.create_user(UserName={name:?})["User"]
key = iam.create_access_key(UserName={name:?})["AccessKey"]
print(json.dumps([user["Arn"], key["AccessKeyId"], key["SecretAccessKey"]]))
"#
    ))
}

/// The seed's identity created the cluster, so its token is the cluster's
/// admin: create, empty second plans (checked by the step), destroy.
#[test]
fn the_cluster_creator_applies_and_destroys_through_the_eks_endpoint_with_a_token() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let cloud = runtime.block_on(LocalCloud::start()).unwrap_or_else(|e| panic!("the local cloud must start: {e}"));
    let mut case = TestCase::with_env(Launch::DevOverrides, aws_only_env(&cloud, None));

    case.step(Step::config(CONFIG).expect_actions(ADDR, &[Action::Create]).check(|s| {
        let objects = s.attr(ADDR, "objects");
        assert!(objects.get(DAEMONSET).is_some(), "{objects}");
    }));
    let managers = kubectl(
        &cloud,
        &[
            "get",
            "daemonset",
            "-n",
            "kube-system",
            "trellis-agent",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ],
    );
    assert!(managers.contains("trellis"), "applied by the provider: {managers}");

    case.destroy_and_check(|_| {});
    let left = kubectl(&cloud, &["get", "daemonset", "-n", "kube-system", "-o", "name"]);
    assert!(!left.contains("trellis-agent"), "destroy went through the same way: {left}");
    drop(case);
    runtime.block_on(cloud.stop());
}

/// Another IAM identity authenticates as its ARN and holds no role: the
/// apply fails with the API server's 403 naming it. Once RBAC binds that
/// user, the same credentials apply and destroy.
#[test]
fn an_identity_that_is_not_the_creator_is_its_arn_and_rbac_decides() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let cloud = runtime.block_on(LocalCloud::start()).unwrap_or_else(|e| panic!("the local cloud must start: {e}"));
    let (arn, key, secret) = iam_user(&cloud, "trellis-dev");
    assert_eq!(arn, "arn:aws:iam::123456789012:user/trellis-dev");
    let mut case = TestCase::with_env(Launch::DevOverrides, aws_only_env(&cloud, Some((&key, &secret))));

    case.step(Step::config(CONFIG).expect_error(format!("is forbidden: User \"{arn}\" cannot")));

    kubectl(
        &cloud,
        &["create", "clusterrolebinding", "trellis-dev", "--clusterrole=cluster-admin", &format!("--user={arn}")],
    );
    case.step(Step::config(CONFIG).check(|s| {
        let objects = s.attr(ADDR, "objects");
        assert!(objects.get(DAEMONSET).is_some(), "{objects}");
    }));
    case.destroy_and_check(|_| {});
    drop(case);
    runtime.block_on(cloud.stop());
}
