//! CNI error results: `{cniVersion, code, msg, details}` on stdout with a non-zero exit.

use serde_json::{Value, json};

use crate::version::CniVersion;

/// The spec's well-known codes, then this plugin's own (100 and up, as the spec reserves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    IncompatibleVersion,
    UnsupportedField,
    UnknownContainer,
    InvalidEnvironment,
    Io,
    Decode,
    InvalidConfig,
    TryAgainLater,
    /// STATUS: the plugin cannot network new pods.
    NotAvailable,
    /// STATUS: the plugin cannot network new pods for want of resources (addresses).
    LimitedResources,
    /// ADD: every address of the node's pool is leased.
    PoolExhausted,
    /// A netlink operation (links, addresses, routes, neighbours) failed.
    Datapath,
    /// CHECK found the pod's networking different from its result.
    CheckFailed,
    /// The node agent refused a request with a code of its own.
    AgentRefused,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        Self::IncompatibleVersion,
        Self::UnsupportedField,
        Self::UnknownContainer,
        Self::InvalidEnvironment,
        Self::Io,
        Self::Decode,
        Self::InvalidConfig,
        Self::TryAgainLater,
        Self::NotAvailable,
        Self::LimitedResources,
        Self::PoolExhausted,
        Self::Datapath,
        Self::CheckFailed,
        Self::AgentRefused,
    ];

    pub fn code(self) -> u32 {
        match self {
            Self::IncompatibleVersion => 1,
            Self::UnsupportedField => 2,
            Self::UnknownContainer => 3,
            Self::InvalidEnvironment => 4,
            Self::Io => 5,
            Self::Decode => 6,
            Self::InvalidConfig => 7,
            Self::TryAgainLater => 11,
            Self::NotAvailable => 50,
            Self::LimitedResources => 51,
            Self::PoolExhausted => 100,
            Self::Datapath => 101,
            Self::CheckFailed => 102,
            Self::AgentRefused => 103,
        }
    }

    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// An error result. `msg` is the short reason (naming the field, variable or path at fault),
/// `details` the underlying cause when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {}: {msg}{}", .code.code(), if .details.is_empty() { String::new() } else { format!(" ({})", .details) })]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self { code, msg: msg.into(), details: String::new() }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The spec's error object; `details` is left out when empty, as it is optional.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut value = json!({
            "cniVersion": version.as_str(),
            "code": self.code.code(),
            "msg": self.msg,
        });
        if !self.details.is_empty()
            && let Some(object) = value.as_object_mut()
        {
            object.insert("details".to_owned(), Value::String(self.details.clone()));
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_specs_and_round_trip() {
        let expected = [1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 100, 101, 102, 103];
        assert_eq!(ErrorCode::ALL.map(ErrorCode::code), expected);
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(code.code()), Some(code));
        }
        assert_eq!(ErrorCode::from_code(8), None);
    }

    #[test]
    fn golden_error_json() {
        let error = CniError::new(ErrorCode::InvalidConfig, "ipam.podCIDR: required in cluster-pool mode");
        let expected: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","code":7,"msg":"ipam.podCIDR: required in cluster-pool mode"}"#,
        )
        .expect("golden JSON parses");
        assert_eq!(error.to_json(CniVersion::V1_0_0), expected);

        let with_details = CniError::new(ErrorCode::Io, "reading the network config from stdin")
            .with_details("Broken pipe (os error 32)");
        let expected: Value = serde_json::from_str(
            r#"{"cniVersion":"1.1.0","code":5,"msg":"reading the network config from stdin","details":"Broken pipe (os error 32)"}"#,
        )
        .expect("golden JSON parses");
        assert_eq!(with_details.to_json(CniVersion::V1_1_0), expected);
    }

    #[test]
    fn display_carries_code_message_and_details() {
        let error =
            CniError::new(ErrorCode::TryAgainLater, "agent socket /run/x.sock is absent").with_details("ENOENT");
        assert_eq!(error.to_string(), "CNI error 11: agent socket /run/x.sock is absent (ENOENT)");
    }
}
