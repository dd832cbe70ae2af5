//! `trellis-ipam operator [--once] [--dry-run] …`: runs the IPAM engine for
//! a cluster's nodes, as `trellis-agent operator` will once the agent
//! exists. With `--dry-run` it prints each node's plan and changes nothing.

mod args;
mod demand;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use trellis_ipam::aws::{AwsConfig, AwsEc2};
use trellis_ipam::engine::Engine;

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let options = match args::parse(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("trellis-ipam: {e}\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-ipam: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: args::Options) -> Result<(), String> {
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
            Err(e) if !options.once => eprintln!("trellis-ipam: {e}; retrying in {}s", options.interval_seconds),
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
    options: &args::Options,
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
