//! The CNI specification versions this plugin speaks.

use std::fmt;

/// A CNI specification version the plugin accepts in network configs and writes in results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    /// Oldest first, as `VERSION` lists them.
    pub const SUPPORTED: [CniVersion; 4] = [Self::V0_3_1, Self::V0_4_0, Self::V1_0_0, Self::V1_1_0];
    pub const LATEST: CniVersion = Self::V1_1_0;

    pub fn parse(text: &str) -> Option<Self> {
        Self::SUPPORTED.into_iter().find(|v| v.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK arrived in 0.4.0; a runtime speaking 0.3.1 never sends it.
    pub fn has_check(self) -> bool {
        self >= Self::V0_4_0
    }

    /// Before 1.0.0 every `ips` entry carried `"version": "4"|"6"`.
    pub fn ips_carry_version(self) -> bool {
        self < Self::V1_0_0
    }

    /// Interface MTUs in results arrived in 1.1.0.
    pub fn interfaces_carry_mtu(self) -> bool {
        self >= Self::V1_1_0
    }

    /// `"0.3.1, 0.4.0, 1.0.0, 1.1.0"`, for messages.
    pub fn supported_list() -> String {
        Self::SUPPORTED.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly_the_supported_versions() {
        for v in CniVersion::SUPPORTED {
            assert_eq!(CniVersion::parse(v.as_str()), Some(v));
        }
        for other in ["0.1.0", "0.2.0", "0.3.0", "1.1", "1.2.0", "", " 1.1.0"] {
            assert_eq!(CniVersion::parse(other), None, "{other:?}");
        }
    }

    #[test]
    fn features_follow_the_spec_history() {
        assert!(!CniVersion::V0_3_1.has_check());
        assert!(CniVersion::V0_4_0.has_check());
        assert!(CniVersion::V0_4_0.ips_carry_version());
        assert!(!CniVersion::V1_0_0.ips_carry_version());
        assert!(!CniVersion::V1_0_0.interfaces_carry_mtu());
        assert!(CniVersion::V1_1_0.interfaces_carry_mtu());
        assert_eq!(CniVersion::supported_list(), "0.3.1, 0.4.0, 1.0.0, 1.1.0");
    }
}
