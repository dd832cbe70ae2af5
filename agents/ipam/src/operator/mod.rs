//! The in-cluster operator: `operator [--once] [--dry-run] …` runs the engine for a cluster's
//! nodes, with demand read from Kubernetes. Shared by `trellis-ipam operator` and
//! `trellis-agent operator`. With `--dry-run` it prints each node's plan and changes nothing.

mod args;
mod demand;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use args::{Options, parse, parse_with_env, usage};

use crate::aws::{AwsConfig, AwsEc2};
use crate::engine::Engine;

/// Runs passes until a single one (`--once`) is done, or forever; prints plans and executions
/// as JSON lines. `program` prefixes the messages of failed passes.
pub async fn run(options: Options, program: &str) -> Result<(), String> {
    let mut aws = AwsConfig::new(&options.region);
    aws.endpoint_url = options.endpoint.clone();
    let ec2 = AwsEc2::new(aws).await.map_err(|e| e.to_string())?;
    let engine = Engine::new(ec2, options.settings.clone());
    let kube = kube::Client::try_default().await.map_err(|e| format!("cannot reach Kubernetes (KUBECONFIG): {e}"))?;
    // Since when each node has had excess addresses: release waits for the delay.
    let mut excess_since: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        match pass(&engine, &kube, &options, &mut excess_since).await {
            Ok(()) => {}
            // One bad pass (a throttle, an API hiccup) must not stop the
            // operator and lose what it tracks; a single run reports it.
            Err(e) if !options.once => eprintln!("{program}: {e}; retrying in {}s", options.interval_seconds),
            Err(e) => return Err(e),
        }
        if options.once {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(options.interval_seconds)).await;
    }
}

async fn pass(
    engine: &Engine<AwsEc2>,
    kube: &kube::Client,
    options: &Options,
    excess_since: &mut BTreeMap<String, Instant>,
) -> Result<(), String> {
    let observation = engine.observe().await.map_err(|e| e.to_string())?;
    let mut demand = demand::from_pods(kube, &observation).await?;
    for (instance, d) in &mut demand {
        d.excess_for_seconds = excess_since.get(instance).map_or(0, |since| since.elapsed().as_secs());
    }
    let plans = engine.plan(&observation, &demand);
    for plan in &plans {
        if plan.excess > 0 {
            excess_since.entry(plan.instance_id.clone()).or_insert_with(Instant::now);
        } else {
            excess_since.remove(&plan.instance_id);
        }
        println!("{}", serde_json::to_string(plan).unwrap_or_default());
    }
    if options.dry_run {
        return Ok(());
    }
    for execution in engine.apply(&plans).await {
        println!("{}", serde_json::to_string(&execution).unwrap_or_default());
    }
    // ENIs a terminated node left behind (detached, not deleted with it).
    let swept = engine.release(None).await.map_err(|e| e.to_string())?;
    if swept.deleted > 0 {
        println!("{}", serde_json::json!({"swept": swept}));
    }
    Ok(())
}
