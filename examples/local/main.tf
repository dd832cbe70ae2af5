# Runs on one machine against the local cloud (`local-cloud up`: moto
# seeded with an EKS setting, and the Kubernetes emulator): pod subnets,
# ENIs and the node agent from kube_cilium_like, the mesh trust anchor, and
# the max-pods figures a node group would use. scripts/demo.sh passes the
# local cloud's endpoints in as variables.
terraform {
  required_version = ">= 1.8"
  required_providers {
    kube = {
      source = "trellis/kube"
    }
  }
}

variable "region" {
  description = "AWS region of the cluster."
  type        = string
  default     = "us-east-1"
}

variable "aws_endpoint" {
  description = "EC2/EKS endpoint override (the local cloud's moto); null for real AWS."
  type        = string
  default     = null
}

variable "kubeconfig" {
  description = "Path of the cluster's kubeconfig (the local cloud's emulator)."
  type        = string
  default     = null
}

variable "node_instance_types" {
  description = "Instance types of the node groups."
  type        = list(string)
  default     = ["m5.large", "m5.xlarge", "t3.medium"]
}

variable "prefix_delegation" {
  description = "Whether pod ENIs get /28 prefixes."
  type        = bool
  default     = true
}

provider "kube" {
  region          = var.region
  aws_endpoint    = var.aws_endpoint
  kubeconfig_path = var.kubeconfig
}

variable "cluster_name" {
  description = "EKS cluster name (the local cloud seeds trellis-local)."
  type        = string
  default     = "trellis-local"
}

variable "pod_subnets" {
  description = "Pod subnets to create, AZ => CIDR inside the VPC's secondary pod CIDR."
  type        = map(string)
  default = {
    "us-east-1a" = "100.64.192.0/20"
    "us-east-1b" = "100.64.208.0/20"
    "us-east-1c" = "100.64.224.0/20"
  }
}

resource "kube_cilium_like" "networking" {
  cluster_name = var.cluster_name
  log_level    = "info"
  ipam {
    # The local cloud's moto keeps no /28 prefixes (it accepts and drops
    # them), so the demo allocates single addresses; on EKS keep the default.
    prefix_delegation     = false
    first_interface_index = 1
    pod_subnets           = var.pod_subnets
  }
}

output "pod_subnet_ids" {
  value = kube_cilium_like.networking.pod_subnet_ids
}

output "agent_not_ready_taint" {
  description = "Give node groups this startup taint (NoSchedule); the agent lifts it when the node is ready."
  value       = kube_cilium_like.networking.agent_not_ready_taint
}

resource "kube_trust_anchor" "mesh" {
  trust_domain        = "cluster.local"
  validity_hours      = 87600
  early_renewal_hours = 720
}

output "trust_anchor_not_after" {
  value = kube_trust_anchor.mesh.not_after
}

output "trust_anchor_fingerprint" {
  value = kube_trust_anchor.mesh.fingerprint_sha256
}

output "max_pods" {
  description = "Pods per node, as kubelet's --max-pods must be set."
  value = {
    for t in var.node_instance_types : t => provider::kube::max_pods(t, var.prefix_delegation)
  }
}
