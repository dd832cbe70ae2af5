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

/// `Ok(None)` for --help. Defaults from the process environment.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Options>, String> {
    parse_with_env(args, |name| std::env::var(name).ok())
}

/// [`parse`] with the environment passed in, so a caller can check a container's env and args
/// together without touching its own process environment.
pub fn parse_with_env(
    args: impl IntoIterator<Item = String>,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<Options>, String> {
    let mut args = args.into_iter();
    match args.next().as_deref() {
        Some("operator") => {}
        Some("-h" | "--help") | None => return Ok(None),
        Some(other) => return Err(format!("unknown command {other:?}")),
    }
    let env = |k: &str| var(k).filter(|v| !v.is_empty());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_come_from_the_environment_given_and_flags_win() {
        let env = |name: &str| match name {
            "TRELLIS_CLUSTER_NAME" => Some("from-env".to_owned()),
            "AWS_REGION" => Some("eu-west-1".to_owned()),
            "AWS_ENDPOINT_URL" => Some("http://127.0.0.1:5000".to_owned()),
            _ => None,
        };
        let options = parse_with_env(args(&["operator"]), env).expect("valid").expect("not help");
        assert_eq!(options.settings.cluster, "from-env");
        assert_eq!(options.region, "eu-west-1");
        assert_eq!(options.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        let options =
            parse_with_env(args(&["operator", "--cluster", "c", "--region", "us-west-2"]), env).expect("valid");
        let options = options.expect("not help");
        assert_eq!((options.settings.cluster.as_str(), options.region.as_str()), ("c", "us-west-2"));
    }

    #[test]
    fn an_empty_environment_leaves_the_cluster_to_the_flags() {
        let error = parse_with_env(args(&["operator", "--pre-allocate", "x"]), |_| None).expect_err("two problems");
        assert!(error.contains("--pre-allocate") && error.contains("no cluster"), "{error}");
        let options = parse_with_env(args(&["operator", "--cluster", "c"]), |_| Some(String::new())).expect("valid");
        let options = options.expect("not help");
        assert_eq!((options.region.as_str(), options.endpoint), ("us-east-1", None), "empty means unset");
        assert!(parse_with_env(args(&["--help"]), |_| None).expect("help").is_none());
    }
}
