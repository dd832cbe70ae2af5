//! `take_over_eks_networking`: once the agent is ready, what EKS runs for
//! pod networking goes (the step Panfactum runs by hand with
//! `pf-eks-reset`): the `vpc-cni` and `kube-proxy` add-ons where EKS
//! manages them, and their DaemonSets either way, since a cluster created
//! with self-managed add-ons has only the DaemonSets.

use std::time::Duration;

use aws_sdk_eks::error::{DisplayErrorContext, ProvideErrorMetadata};
use tfplugin::Diagnostic;
use tokio::time::Instant;

use crate::kubernetes::Session;

/// An EKS add-on and the DaemonSet it runs in `kube-system`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replaced {
    pub addon: &'static str,
    pub daemon_set: &'static str,
}

pub const VPC_CNI: Replaced = Replaced { addon: "vpc-cni", daemon_set: "aws-node" };
pub const KUBE_PROXY: Replaced = Replaced { addon: "kube-proxy", daemon_set: "kube-proxy" };

const POLL: Duration = Duration::from_secs(2);

/// What the agent replaces: kube-proxy only when it replaces kube-proxy.
pub fn replaced(kube_proxy_replacement: bool) -> Vec<Replaced> {
    if kube_proxy_replacement { vec![VPC_CNI, KUBE_PROXY] } else { vec![VPC_CNI] }
}

/// The plan's warning: what goes, and that destroy does not bring it back.
pub fn warning(replaced: &[Replaced]) -> String {
    let names: Vec<String> =
        replaced.iter().map(|r| format!("the {} add-on (DaemonSet kube-system/{})", r.addon, r.daemon_set)).collect();
    format!(
        "Once the agent is ready on every node, apply removes {}. Destroying this resource does not bring them back: reinstall them (aws_eks_addon) before removing Trellis, or pods lose their network.",
        names.join(" and ")
    )
}

/// Removes each add-on (waiting until EKS no longer has it) and then its
/// DaemonSet. What was already gone is fine: re-applying converges.
pub async fn remove(
    eks: &aws_sdk_eks::Client,
    session: &mut Session<'_>,
    cluster: &str,
    replaced: &[Replaced],
    timeout: Duration,
) -> Result<(), Diagnostic> {
    let deadline = Instant::now() + timeout;
    for r in replaced {
        if addon_exists(eks, cluster, r.addon).await? {
            eks.delete_addon()
                .cluster_name(cluster)
                .addon_name(r.addon)
                .preserve(false)
                .send()
                .await
                .map_err(|e| failed(r.addon, format!("DeleteAddon {}: {}", r.addon, DisplayErrorContext(&e))))?;
            // EKS shows the add-on DELETING while it removes its objects.
            while addon_exists(eks, cluster, r.addon).await? {
                if Instant::now() >= deadline {
                    return Err(failed(r.addon, format!("EKS still had the {} add-on after {timeout:?}", r.addon)));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        session.delete_object(&format!("apps/v1/DaemonSet/kube-system/{}", r.daemon_set)).await?;
    }
    Ok(())
}

async fn addon_exists(eks: &aws_sdk_eks::Client, cluster: &str, addon: &str) -> Result<bool, Diagnostic> {
    match eks.describe_addon().cluster_name(cluster).addon_name(addon).send().await {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(false),
        Err(e) => Err(failed(addon, format!("DescribeAddon {addon}: {}", DisplayErrorContext(&e)))),
    }
}

fn failed(addon: &str, detail: String) -> Diagnostic {
    Diagnostic::error(format!("Cannot remove EKS's {addon}"), detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_stays_when_the_agent_does_not_replace_it() {
        assert_eq!(replaced(true), [VPC_CNI, KUBE_PROXY]);
        assert_eq!(replaced(false), [VPC_CNI]);
        let w = warning(&replaced(false));
        assert!(w.contains("vpc-cni") && !w.contains("kube-proxy"), "{w}");
        assert!(w.contains("does not bring them back"), "{w}");
    }
}
