//! The agent's configuration, from environment variables; every problem is reported at once.

use std::path::PathBuf;

use thiserror::Error;

use crate::ebpf::{EbpfConfig, OBJECT_ENV};

pub const BPFFS_ENV: &str = "TRELLIS_BPFFS";
pub const MOUNT_BPFFS_ENV: &str = "TRELLIS_MOUNT_BPFFS";
pub const CGROUP_ENV: &str = "TRELLIS_CGROUP";

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
        let mount_bpffs = match var(MOUNT_BPFFS_ENV).as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                problems.push(format!("{MOUNT_BPFFS_ENV}={other:?} must be true or false"));
                true
            }
        };
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        Ok(Self { ebpf: EbpfConfig { object, bpffs, mount_bpffs, cgroup } })
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
}
