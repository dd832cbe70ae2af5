//! `kube_eks_cluster`: an EKS cluster as `DescribeCluster` returns it, for
//! configurations that wire a cluster made elsewhere (another state, a
//! Terragrunt dependency) into this provider and its resources.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tfplugin::{Attribute, AttributePath, Block, DataSource, Diagnostics, Schema, Type, Validator};

use crate::connections::Connections;

#[derive(Debug)]
pub struct EksCluster {
    pub connections: Arc<Connections>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EksClusterState {
    pub name: Option<String>,
    pub arn: Option<String>,
    pub endpoint: Option<String>,
    pub certificate_authority_data: Option<String>,
    pub version: Option<String>,
    pub platform_version: Option<String>,
    pub status: Option<String>,
    pub vpc_id: Option<String>,
    pub subnet_ids: Option<Vec<String>>,
    pub security_group_ids: Option<Vec<String>>,
    pub cluster_security_group_id: Option<String>,
    pub service_ipv4_cidr: Option<String>,
    pub oidc_issuer: Option<String>,
}

#[async_trait]
impl DataSource for EksCluster {
    type State = EksClusterState;

    fn type_name(&self) -> &'static str {
        "kube_eks_cluster"
    }

    fn schema(&self) -> Schema {
        let computed = |name: &str, ty: Type, description: &str| Attribute::computed(name, ty).describe(description);
        Schema {
            version: 0,
            block: Block {
                description: "An EKS cluster, as `DescribeCluster` returns it.".into(),
                attributes: vec![
                    Attribute::required("name", Type::String).describe("Cluster name.").validate(Validator::NotEmpty),
                    computed("arn", Type::String, "Cluster ARN."),
                    computed("endpoint", Type::String, "Kubernetes API server URL."),
                    computed(
                        "certificate_authority_data",
                        Type::String,
                        "Base64 of the cluster CA's PEM, as EKS returns it.",
                    ),
                    computed("version", Type::String, "Kubernetes version."),
                    computed("platform_version", Type::String, "EKS platform version."),
                    computed("status", Type::String, "Cluster status, e.g. `ACTIVE`."),
                    computed("vpc_id", Type::String, "The cluster's VPC."),
                    computed("subnet_ids", Type::list(Type::String), "The cluster's subnets."),
                    computed(
                        "security_group_ids",
                        Type::list(Type::String),
                        "Additional security groups of the control plane ENIs.",
                    ),
                    computed("cluster_security_group_id", Type::String, "The security group EKS made for the cluster."),
                    computed("service_ipv4_cidr", Type::String, "The CIDR of Service ClusterIPs."),
                    computed("oidc_issuer", Type::String, "The OIDC issuer URL (for IRSA)."),
                ],
                blocks: Vec::new(),
                deprecated: false,
            },
        }
    }

    async fn read(&self, config: EksClusterState) -> Result<EksClusterState, Diagnostics> {
        let name = config.name.clone().unwrap_or_default();
        let eks = self.connections.eks().await.map_err(|u| Diagnostics::from(u.into_diagnostic()))?;
        let c = crate::eks::describe(eks, &name)
            .await
            .map_err(|d| Diagnostics::from(d.at(AttributePath::attribute("name"))))?;
        Ok(EksClusterState {
            name: Some(c.name),
            arn: Some(c.arn),
            endpoint: c.endpoint,
            certificate_authority_data: c.certificate_authority_data,
            version: c.version,
            platform_version: c.platform_version,
            status: c.status,
            vpc_id: c.vpc_id,
            subnet_ids: Some(c.subnet_ids),
            security_group_ids: Some(c.security_group_ids),
            cluster_security_group_id: c.cluster_security_group_id,
            service_ipv4_cidr: c.service_ipv4_cidr,
            oidc_issuer: c.oidc_issuer,
        })
    }
}
