//! Carries out a node's plan through the `Ec2` trait. A create is tagged
//! at creation and carries an idempotency token, so a crash anywhere
//! leaves something the next plan finds (a stranded, tagged ENI) and
//! finishes or removes. A subnet too fragmented for a /28 falls back to
//! single addresses here too, since real EC2 only says so when asked.

use serde::Serialize;

use crate::ec2::{CreateEni, Ec2, Ec2Error, codes};
use crate::planner::{Action, NodePlan};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Execution {
    pub instance_id: String,
    pub done: Vec<Action>,
    /// The action that failed, and why; the ones after it were not tried.
    pub failed: Option<(Action, String)>,
    pub events: Vec<String>,
}

pub async fn execute(ec2: &dyn Ec2, plan: &NodePlan) -> Execution {
    let mut execution =
        Execution { instance_id: plan.instance_id.clone(), done: Vec::new(), failed: None, events: Vec::new() };
    for action in &plan.actions {
        match run(ec2, action, &mut execution.events).await {
            Ok(()) => execution.done.push(action.clone()),
            Err(e) => {
                execution.failed = Some((action.clone(), e.to_string()));
                break;
            }
        }
    }
    execution
}

/// The plan's token made unique to this attempt: EC2 remembers tokens for
/// hours, and a token reused after its ENI was deleted would return that
/// deleted ENI. Within the attempt, the SDK's retries resend it unchanged.
fn attempt_token(planned: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    // EC2 takes at most 64 ASCII characters.
    format!("{planned}-{nanos:x}").chars().take(64).collect()
}

fn fragmented(e: &Ec2Error) -> bool {
    e.code == codes::INSUFFICIENT_CIDR_BLOCKS
}

async fn run(ec2: &dyn Ec2, action: &Action, events: &mut Vec<String>) -> Result<(), Ec2Error> {
    match action {
        Action::CreateEni {
            instance_id,
            subnet_id,
            security_groups,
            device_index,
            addresses,
            prefixes,
            fallback_addresses,
            tags,
            description,
            client_token,
        } => {
            let request = CreateEni {
                subnet_id: subnet_id.clone(),
                security_groups: security_groups.clone(),
                description: description.clone(),
                tags: tags.clone(),
                secondary_addresses: *addresses,
                prefixes: *prefixes,
                client_token: attempt_token(client_token),
            };
            let eni = match ec2.create_network_interface(&request).await {
                Err(e) if fragmented(&e) && *fallback_addresses > 0 => {
                    events.push(format!(
                        "subnet {subnet_id} could not give an aligned /28 ({}); falling back to {fallback_addresses} single addresses",
                        e.message
                    ));
                    let fallback = CreateEni {
                        secondary_addresses: *fallback_addresses,
                        prefixes: 0,
                        client_token: format!("{}-a", request.client_token),
                        ..request
                    };
                    ec2.create_network_interface(&fallback).await?
                }
                other => other?,
            };
            let attachment = ec2.attach_network_interface(&eni.id, instance_id, *device_index).await?;
            ec2.set_delete_on_termination(&eni.id, &attachment).await
        }
        Action::AttachEni { eni_id, instance_id, device_index } => {
            let attachment = ec2.attach_network_interface(eni_id, instance_id, *device_index).await?;
            ec2.set_delete_on_termination(eni_id, &attachment).await
        }
        Action::AssignAddresses { eni_id, count } => ec2.assign_private_ip_addresses(eni_id, *count).await.map(drop),
        Action::AssignPrefixes { eni_id, count, fallback_addresses } => {
            match ec2.assign_ipv4_prefixes(eni_id, *count).await {
                Err(e) if fragmented(&e) && *fallback_addresses > 0 => {
                    events.push(format!(
                    "{eni_id}: the subnet could not give an aligned /28 ({}); falling back to {fallback_addresses} single addresses",
                    e.message
                ));
                    ec2.assign_private_ip_addresses(eni_id, *fallback_addresses).await.map(drop)
                }
                other => other.map(drop),
            }
        }
        Action::UnassignAddresses { eni_id, addresses } => ec2.unassign_private_ip_addresses(eni_id, addresses).await,
        Action::UnassignPrefixes { eni_id, prefixes } => ec2.unassign_ipv4_prefixes(eni_id, prefixes).await,
        Action::DeleteEni { eni_id } => ec2.delete_network_interface(eni_id).await,
    }
}
