//! The operator's IAM policy: the EC2 calls trellis-ipam's `AwsEc2` (aws.rs) makes, nothing more.

use serde_json::json;
use trellis_ipam::planner::{MANAGED_BY, MANAGED_BY_TAG};

/// The least IAM policy `trellis-agent operator` needs, as pretty JSON (the same text every
/// time, so a plan shows no change when nothing changed).
pub fn operator_iam_policy_json() -> String {
    let policy = json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                // Observing nodes, their ENIs, the pod subnets and instance limits. Describe
                // calls take no resource-level permissions.
                "Sid": "Observe",
                "Effect": "Allow",
                "Action": [
                    "ec2:DescribeInstanceTypes",
                    "ec2:DescribeInstances",
                    "ec2:DescribeNetworkInterfaces",
                    "ec2:DescribeSubnets",
                ],
                "Resource": "*",
            },
            {
                // Creating pod ENIs (in any pod subnet, with any security group) and giving
                // nodes their addresses and /28 prefixes: prefixes go through
                // (Un)AssignPrivateIpAddresses too (Ipv4PrefixCount, Ipv4Prefixes). The node's
                // primary ENI, not Trellis's, takes addresses when first_interface_index is 0,
                // so these are not limited to Trellis-tagged ENIs.
                "Sid": "Allocate",
                "Effect": "Allow",
                "Action": [
                    "ec2:AssignPrivateIpAddresses",
                    "ec2:AttachNetworkInterface",
                    "ec2:CreateNetworkInterface",
                    "ec2:DetachNetworkInterface",
                    "ec2:ModifyNetworkInterfaceAttribute",
                    "ec2:UnassignPrivateIpAddresses",
                ],
                "Resource": "*",
            },
            {
                // Tags only in the CreateNetworkInterface call that makes the ENI: the operator
                // never retags anything.
                "Sid": "TagOnCreate",
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": "arn:*:ec2:*:*:network-interface/*",
                "Condition": {"StringEquals": {"ec2:CreateAction": "CreateNetworkInterface"}},
            },
            {
                // Deletes (release, the sweep of ENIs that terminated nodes left) only ENIs
                // carrying Trellis's tag.
                "Sid": "DeleteOwnEnis",
                "Effect": "Allow",
                "Action": "ec2:DeleteNetworkInterface",
                "Resource": "arn:*:ec2:*:*:network-interface/*",
                "Condition": {"StringEquals": {format!("ec2:ResourceTag/{MANAGED_BY_TAG}"): MANAGED_BY}},
            },
        ],
    });
    format!("{policy:#}")
}
