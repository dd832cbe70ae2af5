//! The EKS setting `acceptance/aws/seed.py` creates in moto, as typed data.

use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::{
    ACCESS_KEY_ID, DEFAULT_CLUSTER, DEFAULT_REGION, Error, MotoServer, SECRET_ACCESS_KEY, aws_dir, output_tail,
};

/// Where and under which name to seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedOptions {
    pub region: String,
    pub cluster: String,
    /// Node instances, round-robin over the AZs and the three instance types.
    pub nodes: usize,
}

impl Default for SeedOptions {
    fn default() -> Self {
        SeedOptions { region: DEFAULT_REGION.to_owned(), cluster: DEFAULT_CLUSTER.to_owned(), nodes: 3 }
    }
}

/// Everything seed.py created. Field names are the JSON keys it prints;
/// unknown keys are an error so the script and this type cannot drift apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    pub region: String,
    pub cluster: SeededCluster,
    pub vpc_id: String,
    /// The VPC's primary CIDR, where nodes live (10.0.0.0/16).
    pub vpc_cidr: String,
    /// The secondary CIDR for pods (100.64.0.0/16).
    pub pod_cidr: String,
    /// The three AZs, in order; `zones` and `instances` follow the same order.
    pub azs: Vec<String>,
    pub zones: Vec<ZoneSubnets>,
    /// The nodes' security group (also the cluster's).
    pub security_group_id: String,
    pub ami_id: String,
    pub instances: Vec<NodeInstance>,
}

/// The EKS cluster as moto describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeededCluster {
    pub name: String,
    pub arn: String,
    pub version: String,
    pub status: String,
    pub role_arn: String,
    /// Who created the cluster (GetCallerIdentity of the seed's credentials),
    /// which EKS makes the cluster's admin.
    pub creator_arn: String,
    /// The fake, unreachable endpoint moto's CreateCluster returned, kept
    /// for reference: the API server is the Kubernetes emulator, and
    /// DescribeCluster answers with its URL once the local cloud is up (see
    /// [`SeededCluster::kubernetes_note`]).
    pub endpoint: String,
    /// The random non-PEM stand-in for the cluster CA that CreateCluster
    /// returned; DescribeCluster later answers with the emulator's CA.
    pub certificate_authority: String,
    /// Says the above in words, for whoever reads the JSON.
    pub kubernetes_note: String,
    /// The EKS add-ons the cluster runs (`vpc-cni`, `kube-proxy`, `coredns`).
    pub addons: Vec<String>,
}

/// The node and pod subnet of one AZ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSubnets {
    pub az: String,
    pub node_subnet_id: String,
    pub node_cidr: String,
    pub pod_subnet_id: String,
    pub pod_cidr: String,
}

/// One worker node's EC2 instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInstance {
    pub id: String,
    pub instance_type: String,
    pub az: String,
    pub subnet_id: String,
    pub private_ip: String,
    pub primary_eni_id: String,
    /// Its `Name` tag, `<cluster>-node-N`.
    pub name: String,
}

impl Seed {
    pub fn node_subnet_ids(&self) -> Vec<&str> {
        self.zones.iter().map(|zone| zone.node_subnet_id.as_str()).collect()
    }

    pub fn pod_subnet_ids(&self) -> Vec<&str> {
        self.zones.iter().map(|zone| zone.pod_subnet_id.as_str()).collect()
    }

    pub fn instance_ids(&self) -> Vec<&str> {
        self.instances.iter().map(|instance| instance.id.as_str()).collect()
    }
}

/// Seeds the default region and cluster ([`SeedOptions::default`]).
pub fn seed(moto: &MotoServer) -> Result<Seed, Error> {
    seed_with(moto, &SeedOptions::default())
}

/// Runs seed.py with the venv's python against `moto` (which should be
/// fresh: the names are fixed) and parses what it prints.
pub fn seed_with(moto: &MotoServer, options: &SeedOptions) -> Result<Seed, Error> {
    let python = moto.venv().python();
    let mut command = Command::new(&python);
    command
        .arg(aws_dir().join("seed.py"))
        .args(["--endpoint", moto.endpoint(), "--region", &options.region, "--cluster", &options.cluster])
        .args(["--nodes", &options.nodes.to_string()])
        // Fake credentials, and nothing from the developer's AWS setup that
        // could send a call elsewhere.
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .stdin(Stdio::null());
    let output = command.output().map_err(|source| Error::Spawn { program: python.display().to_string(), source })?;
    if !output.status.success() {
        return Err(Error::CommandFailed {
            command: format!("{command:?}"),
            status: output.status,
            output: format!(
                "{}\n--- moto stderr ---\n{}",
                output_tail(&output.stderr),
                output_tail(moto.stderr_tail().as_bytes())
            ),
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).map_err(|source| Error::SeedOutput { source, stdout: stdout.into_owned() })
}
