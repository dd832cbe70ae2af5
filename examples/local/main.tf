# Runs on one machine with nothing but terraform and the provider binary:
# the mesh trust anchor and the max-pods figures a node group would use.
terraform {
  required_version = ">= 1.8"
  required_providers {
    kube = {
      source = "trellis/kube"
    }
  }
}

provider "kube" {
  region = "eu-west-1"
}

variable "node_instance_types" {
  description = "Instance types of the node groups."
  type        = list(string)
  default     = ["m5.large", "c6i.2xlarge", "t3.medium"]
}

variable "prefix_delegation" {
  description = "Whether pod ENIs get /28 prefixes."
  type        = bool
  default     = true
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
