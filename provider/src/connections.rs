//! The provider's connections to AWS and Kubernetes, made from the
//! `provider "kube"` block once per provider process and only when a
//! resource first needs them, so that a plan that never touches the cluster
//! never dials it.

use std::sync::OnceLock;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use tfplugin::{AttributePath, Config, Diagnostic};
use tokio::sync::OnceCell;

use trellis_ipam::aws::{AwsConfig, AwsEc2};

/// The attributes of the provider block, as configured (null when unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderSettings {
    pub region: Option<String>,
    pub aws_endpoint: Option<String>,
    pub eks_cluster_name: Option<String>,
    pub kubeconfig_path: Option<String>,
    pub kubeconfig_context: Option<String>,
    pub host: Option<String>,
    pub cluster_ca_certificate: Option<String>,
    pub token: Option<String>,
}

const ATTRIBUTES: &[&str] = &[
    "region",
    "aws_endpoint",
    "eks_cluster_name",
    "kubeconfig_path",
    "kubeconfig_context",
    "host",
    "cluster_ca_certificate",
    "token",
];

/// The provider block as `configure` saw it: known, or still waiting for
/// values another resource of the same run produces (a cluster created in
/// the same apply).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Configured {
    Known(ProviderSettings),
    /// Attributes unknown at plan time; resources plan unknown values and
    /// connect nowhere until Terraform configures the provider again at apply.
    Unknown(Vec<String>),
}

/// Why a connection cannot be had.
#[derive(Debug)]
pub enum Unavailable {
    /// The provider block depends on values known only after apply.
    NotYetKnown(Vec<String>),
    /// A setting is wrong or its target unreachable: one diagnostic naming it.
    Failed(Diagnostic),
}

impl From<Diagnostic> for Unavailable {
    fn from(d: Diagnostic) -> Self {
        Unavailable::Failed(d)
    }
}

impl Unavailable {
    /// For apply, where Terraform has configured the provider with known
    /// values: anything unknown here is a bug in the plan, said plainly.
    pub fn into_diagnostic(self) -> Diagnostic {
        match self {
            Unavailable::Failed(d) => d,
            Unavailable::NotYetKnown(names) => Diagnostic::error(
                "Provider configuration not known",
                format!(
                    "the provider block's {} is not known yet; it is needed to reach the cluster",
                    names.join(", ")
                ),
            ),
        }
    }
}

/// A Kubernetes client and where its configuration came from, for messages.
#[derive(Clone)]
pub struct Kube {
    pub client: kube::Client,
    /// e.g. `host https://…` or `kubeconfig /path (context x)`.
    pub source: String,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube").field("source", &self.source).finish_non_exhaustive()
    }
}

#[derive(Default)]
pub struct Connections {
    configured: OnceLock<Configured>,
    aws: OnceCell<SdkConfig>,
    ec2: OnceCell<AwsEc2>,
    eks: OnceCell<aws_sdk_eks::Client>,
    kube: OnceCell<Kube>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections").field("configured", &self.configured.get()).finish_non_exhaustive()
    }
}

impl Connections {
    /// Records the provider block. Terraform configures a provider process
    /// once; a second call (a reattached debug provider serving another run)
    /// keeps the first settings, as the clients built from them are kept too.
    pub fn configure(&self, config: &Config) {
        let unknown: Vec<String> =
            ATTRIBUTES.iter().filter(|name| !config.get(name).is_wholly_known()).map(|s| (*s).to_owned()).collect();
        let configured = if unknown.is_empty() {
            let text = |name: &str| config.get(name).as_str().map(str::to_owned);
            Configured::Known(ProviderSettings {
                region: text("region"),
                aws_endpoint: text("aws_endpoint"),
                eks_cluster_name: text("eks_cluster_name"),
                kubeconfig_path: text("kubeconfig_path"),
                kubeconfig_context: text("kubeconfig_context"),
                host: text("host"),
                cluster_ca_certificate: text("cluster_ca_certificate"),
                token: text("token"),
            })
        } else {
            Configured::Unknown(unknown)
        };
        let _ = self.configured.set(configured);
    }

    pub fn settings(&self) -> Result<&ProviderSettings, Unavailable> {
        match self.configured.get() {
            Some(Configured::Known(settings)) => Ok(settings),
            Some(Configured::Unknown(names)) => Err(Unavailable::NotYetKnown(names.clone())),
            // The framework configures before any resource operation.
            None => Err(Unavailable::NotYetKnown(vec!["(provider not configured)".into()])),
        }
    }

    /// The AWS SDK configuration: the block's region and endpoint over the
    /// SDK's own environment (`AWS_REGION`, `AWS_ENDPOINT_URL`, profiles,
    /// web identity, instance metadata).
    pub async fn aws(&self) -> Result<&SdkConfig, Unavailable> {
        let settings = self.settings()?;
        self.aws
            .get_or_try_init(|| async {
                let mut loader = aws_config::defaults(BehaviorVersion::latest());
                if let Some(region) = &settings.region {
                    loader = loader.region(Region::new(region.clone()));
                }
                if let Some(endpoint) = &settings.aws_endpoint {
                    loader = loader.endpoint_url(endpoint.clone());
                }
                let sdk = loader.load().await;
                if sdk.region().is_none() {
                    return Err(Unavailable::Failed(
                        Diagnostic::error(
                            "No AWS region",
                            "set region in the provider block, or AWS_REGION (or a profile's region) in the environment",
                        )
                        .at(AttributePath::attribute("region")),
                    ));
                }
                Ok(sdk)
            })
            .await
    }

    pub async fn region(&self) -> Result<String, Unavailable> {
        Ok(self.aws().await?.region().map(ToString::to_string).unwrap_or_default())
    }

    /// The endpoint every AWS client uses, when overridden (block or `AWS_ENDPOINT_URL`).
    pub async fn aws_endpoint(&self) -> Result<Option<String>, Unavailable> {
        Ok(self.aws().await?.endpoint_url().map(str::to_owned))
    }

    /// EC2 through the IPAM engine's client: the same rate limit and retries as the operator.
    pub async fn ec2(&self) -> Result<&AwsEc2, Unavailable> {
        let region = self.region().await?;
        let endpoint = self.aws_endpoint().await?;
        self.ec2
            .get_or_try_init(|| async {
                let mut config = AwsConfig::new(region);
                config.endpoint_url = endpoint;
                AwsEc2::new(config)
                    .await
                    .map_err(|e| Unavailable::Failed(Diagnostic::error("Cannot set up the EC2 client", e.to_string())))
            })
            .await
    }

    pub async fn eks(&self) -> Result<&aws_sdk_eks::Client, Unavailable> {
        let sdk = self.aws().await?;
        Ok(self.eks.get_or_init(|| async { aws_sdk_eks::Client::new(sdk) }).await)
    }

    /// The Kubernetes client, from the first of: `host` (with
    /// `cluster_ca_certificate` and `token`), `eks_cluster_name`,
    /// `kubeconfig_path`, then `KUBECONFIG` or `~/.kube/config` as kubectl
    /// finds them (or the in-cluster service account). Never localhost by default.
    pub async fn kube(&self) -> Result<&Kube, Unavailable> {
        let settings = self.settings()?;
        self.kube.get_or_try_init(|| async { self.make_kube(settings).await }).await
    }

    async fn make_kube(&self, settings: &ProviderSettings) -> Result<Kube, Unavailable> {
        let mut eks_token = None;
        let (config, source) = if let Some(host) = &settings.host {
            let config = direct_config(host, settings.cluster_ca_certificate.as_deref(), settings.token.clone())?;
            (config, format!("host {host}"))
        } else if let Some(cluster) = &settings.eks_cluster_name {
            let endpoint = crate::eks::describe_for_kubernetes(self.eks().await?, cluster).await?;
            eks_token = Some(crate::eks::refreshing_token(self.aws().await?, cluster, EKS_TOKEN_REFRESH).await?);
            let config = direct_config(&endpoint.url, Some(&endpoint.ca_pem), None)
                .map_err(|u| u.retarget("eks_cluster_name"))?;
            (config, format!("EKS cluster {cluster} at {}", endpoint.url))
        } else {
            kubeconfig(settings).await?
        };
        let client = match eks_token {
            None => kube::Client::try_from(config),
            Some(token) => kube::client::ClientBuilder::try_from(config).map(|builder| {
                // The header the apiserver reads, from whatever token is current at each request.
                let bearer =
                    tower::util::MapRequestLayer::new(move |mut request: http::Request<kube::client::Body>| {
                        let token = token.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                        if let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {token}")) {
                            request.headers_mut().insert(http::header::AUTHORIZATION, value);
                        }
                        request
                    });
                builder.with_layer(&bearer).build()
            }),
        }
        .map_err(|e| {
            Diagnostic::error("Cannot set up the Kubernetes client", format!("from {source}: {e}"))
                .at(AttributePath::attribute(source_attribute(settings)))
        })?;
        Ok(Kube { client, source })
    }
}

impl Unavailable {
    fn retarget(self, attribute: &str) -> Unavailable {
        match self {
            Unavailable::Failed(d) => Unavailable::Failed(d.at(AttributePath::attribute(attribute))),
            other => other,
        }
    }
}

/// How often the EKS token is remade: a third of the 15 minutes EKS
/// honours one.
const EKS_TOKEN_REFRESH: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// The attribute a Kubernetes connection problem is reported on.
pub fn source_attribute(settings: &ProviderSettings) -> &'static str {
    if settings.host.is_some() {
        "host"
    } else if settings.eks_cluster_name.is_some() {
        "eks_cluster_name"
    } else {
        "kubeconfig_path"
    }
}

fn direct_config(host: &str, ca_pem: Option<&str>, token: Option<String>) -> Result<kube::Config, Unavailable> {
    let at = |attribute: &str, summary: &str, detail: String| {
        Unavailable::Failed(Diagnostic::error(summary, detail).at(AttributePath::attribute(attribute)))
    };
    let url: http::Uri =
        host.parse().map_err(|e| at("host", "Invalid Kubernetes host", format!("{host:?} is not a URL: {e}")))?;
    let mut config = kube::Config::new(url);
    if let Some(pem) = ca_pem {
        let ders = pem_certificates(pem);
        if ders.is_empty() {
            return Err(at(
                "cluster_ca_certificate",
                "Invalid cluster CA certificate",
                "no PEM certificate could be read from it".into(),
            ));
        }
        config.root_cert = Some(ders);
    }
    config.auth_info.token = token.map(Into::into);
    Ok(config)
}

/// The DER bodies of every `CERTIFICATE` block in `pem`.
fn pem_certificates(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

async fn kubeconfig(settings: &ProviderSettings) -> Result<(kube::Config, String), Unavailable> {
    let options =
        kube::config::KubeConfigOptions { context: settings.kubeconfig_context.clone(), ..Default::default() };
    let context = settings.kubeconfig_context.as_deref().map(|c| format!(" (context {c})")).unwrap_or_default();
    if let Some(path) = &settings.kubeconfig_path {
        let failed = |e: String| {
            Unavailable::Failed(
                Diagnostic::error("Cannot use the kubeconfig", format!("{path}{context}: {e}"))
                    .at(AttributePath::attribute("kubeconfig_path")),
            )
        };
        let file = kube::config::Kubeconfig::read_from(path).map_err(|e| failed(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(file, &options).await.map_err(|e| failed(e.to_string()))?;
        return Ok((config, format!("kubeconfig {path}{context}")));
    }
    match kube::Config::from_kubeconfig(&options).await {
        Ok(config) => Ok((config, format!("KUBECONFIG or ~/.kube/config{context}"))),
        Err(kubeconfig_error) if settings.kubeconfig_context.is_none() => {
            kube::Config::incluster().map(|c| (c, "the in-cluster service account".to_owned())).map_err(|incluster| {
                Unavailable::Failed(
                    Diagnostic::error(
                        "No Kubernetes configuration",
                        format!(
                            "none of host, eks_cluster_name or kubeconfig_path is set in the provider block; \
                             KUBECONFIG / ~/.kube/config: {kubeconfig_error}; in-cluster: {incluster}"
                        ),
                    )
                    .at(AttributePath::attribute("kubeconfig_path")),
                )
            })
        }
        Err(e) => Err(Unavailable::Failed(
            Diagnostic::error("Cannot use the kubeconfig", format!("KUBECONFIG or ~/.kube/config{context}: {e}"))
                .at(AttributePath::attribute("kubeconfig_context")),
        )),
    }
}
