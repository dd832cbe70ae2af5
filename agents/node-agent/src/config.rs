//! The agent's configuration, from environment variables; every problem is reported at once.

use std::path::PathBuf;

use thiserror::Error;

use crate::ebpf::{EbpfConfig, OBJECT_ENV};
use crate::policy::PolicyEnforcement;
use crate::services::Algorithm;

pub const BPFFS_ENV: &str = "TRELLIS_BPFFS";
pub const MOUNT_BPFFS_ENV: &str = "TRELLIS_MOUNT_BPFFS";
pub const CGROUP_ENV: &str = "TRELLIS_CGROUP";
/// `false` leaves Services to kube-proxy: the socket load balancer is not attached.
pub const KUBE_PROXY_REPLACEMENT_ENV: &str = "TRELLIS_KUBE_PROXY_REPLACEMENT";
/// The algorithm of Services without the `trellis.io/lb-algorithm` annotation.
pub const LB_ALGORITHM_ENV: &str = "TRELLIS_LB_ALGORITHM";
pub const POLICY_ENFORCEMENT_ENV: &str = "TRELLIS_POLICY_ENFORCEMENT";
/// `false`: the agent neither reads nor keeps flows.
pub const FLOW_OBSERVABILITY_ENV: &str = "TRELLIS_FLOW_OBSERVABILITY";

/// Where an installed agent finds its programs unless told otherwise.
pub const DEFAULT_OBJECT: &str = "/usr/lib/trellis/trellis-ebpf-programs";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
pub const DEFAULT_CGROUP: &str = "/sys/fs/cgroup";

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub ebpf: EbpfConfig,
    pub kube_proxy_replacement: bool,
    pub lb_algorithm: Algorithm,
    pub policy_enforcement: PolicyEnforcement,
    pub flow_observability: bool,
}

impl Config {
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut path = |name: &str, default: &str| {
            let value = var(name).unwrap_or_else(|| default.to_owned());
            let path = PathBuf::from(&value);
            if !path.is_absolute() {
                problems.push(format!("{name}={value:?} must be an absolute path"));
            }
            path
        };
        let object = path(OBJECT_ENV, DEFAULT_OBJECT);
        let bpffs = path(BPFFS_ENV, DEFAULT_BPFFS);
        let cgroup = path(CGROUP_ENV, DEFAULT_CGROUP);
        let mut choices = Choices { var: &var, problems: &mut problems };
        let mount_bpffs = choices.flag(MOUNT_BPFFS_ENV, true);
        let kube_proxy_replacement = choices.flag(KUBE_PROXY_REPLACEMENT_ENV, true);
        let lb_algorithm = choices.one_of(LB_ALGORITHM_ENV, &Algorithm::NAMES, Algorithm::from_name);
        let policy_enforcement =
            choices.one_of(POLICY_ENFORCEMENT_ENV, &PolicyEnforcement::NAMES, PolicyEnforcement::from_name);
        let flow_observability = choices.flag(FLOW_OBSERVABILITY_ENV, true);
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        Ok(Self {
            ebpf: EbpfConfig { object, bpffs, mount_bpffs, cgroup },
            kube_proxy_replacement,
            lb_algorithm,
            policy_enforcement,
            flow_observability,
        })
    }
}

/// Variables that take one of a few values; what is wrong goes to `problems`.
struct Choices<'a, V> {
    var: &'a V,
    problems: &'a mut Vec<String>,
}

impl<V: Fn(&str) -> Option<String>> Choices<'_, V> {
    /// `name`'s value as `parse` reads it, `T::default()` when unset or not one of `accepted`.
    fn one_of<T: Default>(&mut self, name: &str, accepted: &[&str], parse: impl Fn(&str) -> Option<T>) -> T {
        self.read(name, accepted, parse).unwrap_or_default()
    }

    fn flag(&mut self, name: &str, default: bool) -> bool {
        self.read(name, &["true", "false"], |text| text.parse().ok()).unwrap_or(default)
    }

    fn read<T>(&mut self, name: &str, accepted: &[&str], parse: impl Fn(&str) -> Option<T>) -> Option<T> {
        let text = (self.var)(name)?;
        let parsed = parse(&text);
        if parsed.is_none() {
            let accepted = match accepted {
                [one, other] => format!("{one} or {other}"),
                many => format!("one of {}", many.join(", ")),
            };
            self.problems.push(format!("{name}={text:?} must be {accepted}"));
        }
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_env(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_attach_at_the_root_cgroup_with_the_standard_bpffs() {
        let config = from(&[]).expect("defaults are valid");
        assert_eq!(
            config.ebpf,
            EbpfConfig {
                object: DEFAULT_OBJECT.into(),
                bpffs: DEFAULT_BPFFS.into(),
                mount_bpffs: true,
                cgroup: DEFAULT_CGROUP.into(),
            }
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let error =
            from(&[(OBJECT_ENV, "prog.o"), (CGROUP_ENV, "cg"), (MOUNT_BPFFS_ENV, "yes")]).expect_err("three problems");
        assert_eq!(error.0.len(), 3, "{error}");
        assert!(error.to_string().contains("TRELLIS_EBPF_OBJECT=\"prog.o\" must be an absolute path"));
        assert!(error.to_string().contains("TRELLIS_MOUNT_BPFFS=\"yes\" must be true or false"));
    }

    #[test]
    fn the_datapath_features_default_to_cilium_s_and_take_their_alternatives() {
        let config = from(&[]).expect("defaults are valid");
        assert!(config.kube_proxy_replacement && config.flow_observability);
        assert_eq!((config.lb_algorithm, config.policy_enforcement), (Algorithm::Maglev, PolicyEnforcement::Default));
        let config = from(&[
            (KUBE_PROXY_REPLACEMENT_ENV, "false"),
            (LB_ALGORITHM_ENV, "random"),
            (POLICY_ENFORCEMENT_ENV, "always"),
            (FLOW_OBSERVABILITY_ENV, "false"),
        ])
        .expect("valid");
        assert!(!config.kube_proxy_replacement && !config.flow_observability);
        assert_eq!((config.lb_algorithm, config.policy_enforcement), (Algorithm::Random, PolicyEnforcement::Always));
        let config = from(&[(POLICY_ENFORCEMENT_ENV, "never")]).expect("valid");
        assert_eq!(config.policy_enforcement, PolicyEnforcement::Never);
    }

    #[test]
    fn bad_feature_values_name_their_variable_and_the_accepted_values() {
        let error = from(&[
            (KUBE_PROXY_REPLACEMENT_ENV, "strict"),
            (LB_ALGORITHM_ENV, "round-robin"),
            (POLICY_ENFORCEMENT_ENV, "Always"),
            (FLOW_OBSERVABILITY_ENV, "1"),
        ])
        .expect_err("four problems");
        assert_eq!(
            error.0,
            vec![
                "TRELLIS_KUBE_PROXY_REPLACEMENT=\"strict\" must be true or false",
                "TRELLIS_LB_ALGORITHM=\"round-robin\" must be maglev or random",
                "TRELLIS_POLICY_ENFORCEMENT=\"Always\" must be one of default, always, never",
                "TRELLIS_FLOW_OBSERVABILITY=\"1\" must be true or false",
            ]
        );
    }
}
