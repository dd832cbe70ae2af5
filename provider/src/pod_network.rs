//! The cluster's network on AWS as `kube_cilium_like` needs it: the VPC of
//! an EKS cluster, its CIDR blocks, zones and subnets; the checks on the
//! pod subnets a configuration asks for; and creating, finding and deleting
//! the subnets Trellis owns, always by their tags.

use std::collections::BTreeMap;

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use ipnet::Ipv4Net;
use tfplugin::{AttributePath, Diagnostic, PathStep};
use trellis_ipam::planner::{CLUSTER_TAG, MANAGED_BY, MANAGED_BY_TAG};

/// The tag that marks a pod subnet as one resource instance's, and that the
/// operator selects its subnets by.
pub const POD_SUBNETS_TAG: &str = "trellis.io/pod-subnets";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingSubnet {
    pub id: String,
    pub cidr: Ipv4Net,
    pub az: String,
    pub tags: BTreeMap<String, String>,
}

/// What the checks and the subnet work need to know about the cluster's VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub vpc_id: String,
    pub cidrs: Vec<Ipv4Net>,
    pub zones: Vec<String>,
    pub subnets: Vec<ExistingSubnet>,
}

fn ec2_failed(call: &str, e: impl std::error::Error + ProvideErrorMetadata) -> Diagnostic {
    Diagnostic::error("EC2 call failed", format!("{call}: {}", DisplayErrorContext(&e)))
}

/// The VPC of cluster `name`: from `DescribeCluster`, or, where EKS leaves
/// it out, from the cluster's subnets.
pub async fn discover(ec2: &aws_sdk_ec2::Client, cluster: &crate::eks::Cluster) -> Result<Network, Diagnostic> {
    let vpc_id = match &cluster.vpc_id {
        Some(id) => id.clone(),
        None => {
            let out = ec2
                .describe_subnets()
                .set_subnet_ids(Some(cluster.subnet_ids.clone()))
                .send()
                .await
                .map_err(|e| ec2_failed("DescribeSubnets of the cluster's subnets", e))?;
            out.subnets().iter().find_map(|s| s.vpc_id.clone()).ok_or_else(|| {
                Diagnostic::error(
                    "Cannot find the cluster's VPC",
                    format!("EKS names no VPC for {:?} and none of its subnets was found", cluster.name),
                )
                .at(AttributePath::attribute("cluster_name"))
            })?
        }
    };
    let vpcs = ec2.describe_vpcs().vpc_ids(&vpc_id).send().await.map_err(|e| ec2_failed("DescribeVpcs", e))?;
    let cidrs = vpcs
        .vpcs()
        .iter()
        .flat_map(|v| v.cidr_block_association_set())
        .filter(|a| a.cidr_block_state().and_then(|s| s.state()).is_none_or(|s| s.as_str() != "disassociated"))
        .filter_map(|a| a.cidr_block()?.parse().ok())
        .collect();
    let zones = ec2
        .describe_availability_zones()
        .send()
        .await
        .map_err(|e| ec2_failed("DescribeAvailabilityZones", e))?
        .availability_zones()
        .iter()
        .filter_map(|z| z.zone_name.clone())
        .collect();
    let subnets = subnets_where(ec2, vec![filter("vpc-id", &vpc_id)]).await?;
    Ok(Network { vpc_id, cidrs, zones, subnets })
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

async fn subnets_where(ec2: &aws_sdk_ec2::Client, filters: Vec<Filter>) -> Result<Vec<ExistingSubnet>, Diagnostic> {
    let mut out = Vec::new();
    let mut pages = ec2.describe_subnets().set_filters(Some(filters)).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| ec2_failed("DescribeSubnets", e))?;
        out.extend(page.subnets().iter().filter_map(|s| {
            Some(ExistingSubnet {
                id: s.subnet_id.clone()?,
                cidr: s.cidr_block()?.parse().ok()?,
                az: s.availability_zone.clone()?,
                tags: s.tags().iter().filter_map(|t| Some((t.key.clone()?, t.value.clone()?))).collect(),
            })
        }));
    }
    Ok(out)
}

/// The pod subnets of resource instance `owner`, found by tag.
pub async fn owned_subnets(ec2: &aws_sdk_ec2::Client, owner: &str) -> Result<Vec<ExistingSubnet>, Diagnostic> {
    subnets_where(
        ec2,
        vec![filter(&format!("tag:{POD_SUBNETS_TAG}"), owner), filter(&format!("tag:{MANAGED_BY_TAG}"), MANAGED_BY)],
    )
    .await
}

/// Checks `wanted` (AZ → CIDR) against the VPC: inside its CIDR blocks, in
/// a zone of the region, overlapping neither each other nor a subnet that
/// is not already this owner's. Each problem is on `ipam.pod_subnets[az]`.
pub fn check_pod_subnets(network: &Network, wanted: &BTreeMap<String, String>, owner: &str) -> Vec<Diagnostic> {
    let at = |az: &str| {
        AttributePath(vec![
            PathStep::Attribute("ipam".into()),
            PathStep::Attribute("pod_subnets".into()),
            PathStep::Key(az.to_owned()),
        ])
    };
    let mut problems = Vec::new();
    let mut parsed: Vec<(&str, Ipv4Net)> = Vec::new();
    for (az, text) in wanted {
        let invalid = |detail: String| Diagnostic::error("Invalid pod subnet", detail).at(at(az));
        if !network.zones.contains(az) {
            problems.push(invalid(format!(
                "{az:?} is not an availability zone of this region (it has {})",
                network.zones.join(", ")
            )));
        }
        let Ok(cidr) = text.parse::<Ipv4Net>() else {
            problems.push(invalid(format!("{text:?} is not an IPv4 CIDR such as \"100.64.0.0/19\"")));
            continue;
        };
        if cidr.trunc() != cidr {
            problems.push(invalid(format!("{text} has host bits set; the network is {}", cidr.trunc())));
        }
        if !(16..=28).contains(&cidr.prefix_len()) {
            problems.push(invalid(format!("{text}: EC2 subnets are /16 to /28")));
        }
        if !network.cidrs.iter().any(|block| block.contains(&cidr)) {
            let blocks: Vec<String> = network.cidrs.iter().map(ToString::to_string).collect();
            problems.push(invalid(format!(
                "{text} is outside the VPC {} (its CIDR blocks: {})",
                network.vpc_id,
                blocks.join(", ")
            )));
        }
        for (other_az, other) in &parsed {
            if overlaps(&cidr, other) {
                problems.push(invalid(format!("{text} overlaps {other} asked for {other_az}")));
            }
        }
        for existing in
            network.subnets.iter().filter(|s| s.tags.get(POD_SUBNETS_TAG).map(String::as_str) != Some(owner))
        {
            if overlaps(&cidr, &existing.cidr) {
                problems
                    .push(invalid(format!("{text} overlaps the existing subnet {} ({})", existing.id, existing.cidr)));
            }
        }
        parsed.push((az, cidr));
    }
    problems
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Makes sure each wanted subnet exists: adopts this owner's subnet with the
/// same AZ and CIDR (a re-apply after a failure), creates the rest with the
/// ownership tags. Returns AZ → subnet id for every wanted subnet created or
/// found before the first failure, with that failure.
pub async fn ensure_subnets(
    ec2: &aws_sdk_ec2::Client,
    network: &Network,
    wanted: &BTreeMap<String, String>,
    cluster: &str,
    owner: &str,
) -> (BTreeMap<String, String>, Option<Diagnostic>) {
    let mut ids = BTreeMap::new();
    for (az, cidr) in wanted {
        let mine = network.subnets.iter().find(|s| {
            &s.az == az && s.cidr.to_string() == *cidr && s.tags.get(POD_SUBNETS_TAG).map(String::as_str) == Some(owner)
        });
        if let Some(existing) = mine {
            ids.insert(az.clone(), existing.id.clone());
            continue;
        }
        let tags = [
            ("Name", format!("{cluster}-pods-{az}")),
            (CLUSTER_TAG, cluster.to_owned()),
            (MANAGED_BY_TAG, MANAGED_BY.to_owned()),
            (POD_SUBNETS_TAG, owner.to_owned()),
        ];
        let spec = TagSpecification::builder()
            .resource_type(ResourceType::Subnet)
            .set_tags(Some(tags.iter().map(|(k, v)| Tag::builder().key(*k).value(v).build()).collect()))
            .build();
        let created = ec2
            .create_subnet()
            .vpc_id(&network.vpc_id)
            .availability_zone(az)
            .cidr_block(cidr)
            .tag_specifications(spec)
            .send()
            .await;
        match created {
            Ok(out) => match out.subnet.and_then(|s| s.subnet_id) {
                Some(id) => {
                    ids.insert(az.clone(), id);
                }
                None => return (ids, Some(Diagnostic::error("EC2 call failed", "CreateSubnet returned no subnet id"))),
            },
            Err(e) => return (ids, Some(ec2_failed(&format!("CreateSubnet {cidr} in {az}"), e))),
        }
    }
    (ids, None)
}

/// Deletes this owner's pod subnets that `keep` (AZ → CIDR) no longer
/// names, after the cluster's Trellis ENIs in them. A subnet still used by
/// ENIs that are not Trellis's is reported with their ids instead of being
/// waited on.
pub async fn delete_subnets<E: trellis_ipam::Ec2>(
    ec2: &aws_sdk_ec2::Client,
    engine: &trellis_ipam::engine::Engine<E>,
    owner: &str,
    keep: &BTreeMap<String, String>,
) -> Result<(), Diagnostic> {
    let gone: Vec<ExistingSubnet> =
        owned_subnets(ec2, owner).await?.into_iter().filter(|s| keep.get(&s.az) != Some(&s.cidr.to_string())).collect();
    if gone.is_empty() {
        return Ok(());
    }
    engine
        .release_in_subnets(&gone.iter().map(|s| s.id.clone()).collect())
        .await
        .map_err(|e| Diagnostic::error("Cannot delete Trellis's ENIs in the pod subnets", e.to_string()))?;
    let mut held = Vec::new();
    for subnet in gone {
        match ec2.delete_subnet().subnet_id(&subnet.id).send().await {
            Ok(_) => {}
            Err(e) if e.code() == Some("InvalidSubnetID.NotFound") => {}
            Err(e) if e.code() == Some("DependencyViolation") => {
                let enis = ec2
                    .describe_network_interfaces()
                    .filters(filter("subnet-id", &subnet.id))
                    .send()
                    .await
                    .map_err(|e| ec2_failed("DescribeNetworkInterfaces", e))?;
                let ids: Vec<&str> =
                    enis.network_interfaces().iter().filter_map(|n| n.network_interface_id()).collect();
                held.push(format!("{} ({}) is used by {}", subnet.id, subnet.cidr, ids.join(", ")));
            }
            Err(e) => return Err(ec2_failed(&format!("DeleteSubnet {}", subnet.id), e)),
        }
    }
    if held.is_empty() {
        Ok(())
    } else {
        Err(Diagnostic::error(
            "Pod subnets still in use",
            format!(
                "these subnets hold network interfaces that Trellis did not create; delete or move them, then apply again:\n  {}",
                held.join("\n  ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> Network {
        Network {
            vpc_id: "vpc-1".into(),
            cidrs: vec!["10.0.0.0/16".parse().expect("cidr"), "100.64.0.0/16".parse().expect("cidr")],
            zones: vec!["us-east-1a".into(), "us-east-1b".into()],
            subnets: vec![
                ExistingSubnet {
                    id: "subnet-nodes".into(),
                    cidr: "10.0.0.0/20".parse().expect("cidr"),
                    az: "us-east-1a".into(),
                    tags: BTreeMap::new(),
                },
                ExistingSubnet {
                    id: "subnet-mine".into(),
                    cidr: "100.64.192.0/20".parse().expect("cidr"),
                    az: "us-east-1a".into(),
                    tags: [(POD_SUBNETS_TAG.to_owned(), "c.kube-system".to_owned())].into(),
                },
            ],
        }
    }

    fn check(wanted: &[(&str, &str)]) -> Vec<String> {
        let wanted = wanted.iter().map(|(a, c)| ((*a).to_owned(), (*c).to_owned())).collect();
        check_pod_subnets(&network(), &wanted, "c.kube-system").into_iter().map(|d| d.detail).collect()
    }

    #[test]
    fn subnets_inside_a_vpc_block_and_apart_pass_and_own_subnets_do_not_overlap_themselves() {
        assert!(check(&[("us-east-1a", "100.64.192.0/20"), ("us-east-1b", "100.64.208.0/20")]).is_empty());
    }

    #[test]
    fn each_bad_subnet_is_named() {
        let problems =
            check(&[("us-east-1a", "10.0.8.0/22"), ("us-east-1b", "172.16.0.0/20"), ("eu-west-9z", "100.64.200.0/21")]);
        assert!(problems.iter().any(|p| p.contains("overlaps the existing subnet subnet-nodes")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("172.16.0.0/20 is outside the VPC vpc-1")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("\"eu-west-9z\" is not an availability zone")), "{problems:?}");
        let problems = check(&[("us-east-1a", "100.64.224.0/20"), ("us-east-1b", "100.64.224.0/21")]);
        assert!(problems.iter().any(|p| p.contains("overlaps 100.64.224.0/20 asked for us-east-1a")), "{problems:?}");
        assert_eq!(check(&[("us-east-1a", "100.64.224.1/20")]).len(), 1);
    }
}
