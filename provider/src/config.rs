//! The `provider "kube"` block: AWS access for pod subnets and ENIs,
//! Kubernetes access for the agents and the mesh. The connections are made
//! on first use (see `connections`).

use async_trait::async_trait;
use std::sync::Arc;
use tfplugin::{
    Attribute, AttributePath, Block, Config, Diagnostic, Diagnostics, ErasedDataSource, ErasedResource, Function,
    Provider, Schema, Type, Validator, Value,
};

use crate::connections::Connections;
use crate::data_sources::EksCluster;
use crate::functions::MaxPods;
use crate::resources::{CiliumLike, TrustAnchor};

#[derive(Debug, Default)]
pub struct KubeProvider {
    connections: Arc<Connections>,
}

pub(crate) fn schema() -> Schema {
    let optional = |name: &str, description: &str| Attribute::optional(name, Type::String).describe(description);
    Schema {
        version: 0,
        block: Block {
            description: "Trellis sets up Kubernetes networking on EKS: pod subnets and ENIs with prefix \
                delegation, an eBPF node agent that is the CNI, kube-proxy replacement and NetworkPolicy \
                engine, and an mTLS service mesh."
                .into(),
            attributes: vec![
                optional("region", "AWS region of the cluster, e.g. `eu-west-1`.").validate(Validator::Custom {
                    description: "an AWS region name such as `eu-west-1`",
                    check: check_region,
                }),
                optional(
                    "aws_endpoint",
                    "Endpoint URL that overrides the EC2 and EKS endpoints (for a VPC endpoint or a local emulator).",
                )
                .validate(Validator::Custom { description: "an http:// or https:// URL", check: check_url }),
                optional(
                    "eks_cluster_name",
                    "Name of the EKS cluster; when set (and `host` is not), the Kubernetes endpoint and CA are read from EKS `DescribeCluster` and a token is made as `aws eks get-token` makes it, with the AWS credentials of this provider.",
                )
                .validate(Validator::NotEmpty),
                optional("kubeconfig_path", "Path to a kubeconfig file. Conflicts with `host`.")
                    .validate(Validator::NotEmpty),
                optional("kubeconfig_context", "Context to use from the kubeconfig; defaults to its current context.")
                    .validate(Validator::NotEmpty),
                optional("host", "Kubernetes API server URL. Conflicts with `kubeconfig_path`.")
                    .validate(Validator::Custom { description: "an https:// URL", check: check_https_url }),
                optional("cluster_ca_certificate", "PEM-encoded CA certificate of the Kubernetes API server.")
                    .validate(Validator::Custom { description: "a PEM certificate", check: check_pem_certificate }),
                optional("token", "Bearer token for the Kubernetes API server.").sensitive(),
            ],
            blocks: Vec::new(),
            deprecated: false,
        },
    }
}

fn check_region(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let parts: Vec<&str> = s.split('-').collect();
    let well_formed = parts.len() >= 3
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
        && parts.last().is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()));
    if well_formed { Ok(()) } else { Err(format!("{s:?} is not an AWS region name such as \"eu-west-1\"")) }
}

/// A URL with one of `schemes` and a host.
fn url_with_scheme(v: &Value, schemes: &[&str]) -> bool {
    let s = v.as_str().unwrap_or_default();
    schemes.iter().any(|scheme| {
        s.strip_prefix(scheme)
            .and_then(|rest| rest.strip_prefix("://"))
            .is_some_and(|host| !host.is_empty() && !host.starts_with('/'))
    })
}

fn check_url(v: &Value) -> Result<(), String> {
    if url_with_scheme(v, &["http", "https"]) {
        Ok(())
    } else {
        Err(format!("{:?} is not an http:// or https:// URL", v.as_str().unwrap_or_default()))
    }
}

fn check_https_url(v: &Value) -> Result<(), String> {
    if url_with_scheme(v, &["https"]) {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not an https:// URL; the Kubernetes API is only reached over TLS",
            v.as_str().unwrap_or_default()
        ))
    }
}

fn check_pem_certificate(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if s.contains("-----BEGIN CERTIFICATE-----") && s.contains("-----END CERTIFICATE-----") {
        Ok(())
    } else {
        Err("does not contain a PEM certificate (-----BEGIN CERTIFICATE-----)".into())
    }
}

#[async_trait]
impl Provider for KubeProvider {
    fn type_name(&self) -> &'static str {
        "kube"
    }

    fn schema(&self) -> Schema {
        schema()
    }

    fn validate(&self, config: &Config, diags: &mut Diagnostics) {
        let set = |name: &str| !config.get(name).is_null();
        if set("kubeconfig_path") && set("host") {
            diags.push(
                Diagnostic::error("Conflicting Kubernetes settings", "set either kubeconfig_path or host, not both")
                    .at(AttributePath::attribute("host")),
            );
        }
        for needs_host in ["cluster_ca_certificate", "token"] {
            if set(needs_host) && !set("host") {
                diags.push(
                    Diagnostic::error(
                        "Incomplete Kubernetes settings",
                        format!("{needs_host} is used only together with host"),
                    )
                    .at(AttributePath::attribute(needs_host)),
                );
            }
        }
    }

    async fn configure(&self, config: &Config, _terraform_version: &str) -> Diagnostics {
        // Terraform validated this configuration (PrepareProviderConfig)
        // just before; nothing is dialled until a resource needs it.
        self.connections.configure(config);
        Diagnostics::default()
    }

    fn resources(&self) -> Vec<Arc<dyn ErasedResource>> {
        vec![tfplugin::resource(TrustAnchor), tfplugin::resource(CiliumLike { connections: self.connections.clone() })]
    }

    fn data_sources(&self) -> Vec<Arc<dyn ErasedDataSource>> {
        vec![tfplugin::data_source(EksCluster { connections: self.connections.clone() })]
    }

    fn functions(&self) -> Vec<Arc<dyn Function>> {
        vec![Arc::new(MaxPods)]
    }
}
