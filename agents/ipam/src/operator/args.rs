//! The command line, reported all at once on error.

use crate::Settings;

/// The usage text, for `program` (`trellis-ipam` or `trellis-agent`).
pub fn usage(program: &str) -> String {
    USAGE.replace("{program}", program)
}

const USAGE: &str = "\
usage: {program} operator [--once] [--dry-run] [--cluster NAME] [--region R] [--endpoint URL]
                             [--prefix-delegation] [--pre-allocate N] [--min-allocate N] [--max-allocate N] [--max-above-watermark N]
                             [--first-interface-index 0|1] [--subnet-id ID]... [--subnet-tag KEY=VALUE]...
                             [--security-group ID]... [--release-excess] [--excess-ip-release-delay SECONDS] [--interval SECONDS]
Defaults come from TRELLIS_CLUSTER_NAME, AWS_REGION and AWS_ENDPOINT_URL; Kubernetes from KUBECONFIG.";

#[derive(Debug, Clone)]
pub struct Options {
    pub once: bool,
    pub dry_run: bool,
    pub region: String,
    pub endpoint: Option<String>,
    pub interval_seconds: u64,
    pub settings: Settings,
}

/// `Ok(None)` for --help.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Options>, String> {
    let mut args = args.into_iter();
    match args.next().as_deref() {
        Some("operator") => {}
        Some("-h" | "--help") | None => return Ok(None),
        Some(other) => return Err(format!("unknown command {other:?}")),
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut o = Options {
        once: false,
        dry_run: false,
        region: env("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
        endpoint: env("AWS_ENDPOINT_URL"),
        interval_seconds: 10,
        settings: Settings { cluster: env("TRELLIS_CLUSTER_NAME").unwrap_or_default(), ..Settings::default() },
    };
    let mut errors = Vec::new();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: Result<String, String>| {
            v.and_then(|v| v.parse::<u32>().map_err(|_| format!("{flag}: {v:?} is not a number")))
        };
        let result: Result<(), String> = match flag.as_str() {
            "--once" => {
                o.once = true;
                Ok(())
            }
            "--dry-run" => {
                o.dry_run = true;
                Ok(())
            }
            "--cluster" => value().map(|v| o.settings.cluster = v),
            "--region" => value().map(|v| o.region = v),
            "--endpoint" => value().map(|v| o.endpoint = Some(v)),
            "--prefix-delegation" => {
                o.settings.prefix_delegation = true;
                Ok(())
            }
            "--release-excess" => {
                o.settings.release_excess = true;
                Ok(())
            }
            "--pre-allocate" => number(value()).map(|n| o.settings.pre_allocate = n),
            "--min-allocate" => number(value()).map(|n| o.settings.min_allocate = n),
            "--max-above-watermark" => number(value()).map(|n| o.settings.max_above_watermark = n),
            "--max-allocate" => number(value()).map(|n| o.settings.max_allocate = n),
            "--excess-ip-release-delay" => {
                number(value()).map(|n| o.settings.excess_release_delay_seconds = u64::from(n))
            }
            "--first-interface-index" => number(value()).and_then(|n| match n {
                0 | 1 => {
                    o.settings.first_interface_index = n;
                    Ok(())
                }
                _ => Err(format!("--first-interface-index must be 0 or 1, not {n}")),
            }),
            "--interval" => number(value()).map(|n| o.interval_seconds = u64::from(n.max(1))),
            "--subnet-id" => value().map(|v| o.settings.subnet_ids.push(v)),
            "--security-group" => value().map(|v| o.settings.security_group_ids.push(v)),
            "--subnet-tag" => value().and_then(|v| match v.split_once('=') {
                Some((k, val)) => {
                    o.settings.subnet_tags.insert(k.to_owned(), val.to_owned());
                    Ok(())
                }
                None => Err(format!("--subnet-tag wants KEY=VALUE, not {v:?}")),
            }),
            other => Err(format!("unknown option {other:?}")),
        };
        if let Err(e) = result {
            errors.push(e);
        }
    }
    if o.settings.cluster.is_empty() {
        errors.push("no cluster: pass --cluster or set TRELLIS_CLUSTER_NAME".into());
    }
    if errors.is_empty() { Ok(Some(o)) } else { Err(errors.join("; ")) }
}
