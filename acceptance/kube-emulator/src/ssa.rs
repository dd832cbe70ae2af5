// PLACEHOLDER so the crate compiles while this module is written: replace this whole file.
use serde_json::Value;
#[derive(Debug)]
pub struct Conflict {
    pub manager: String,
    pub field: String,
}
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("conflicts")]
    Conflicts(Vec<Conflict>),
    #[error("{0}")]
    Invalid(String),
}
pub fn apply(_l: Option<&Value>, c: &Value, _m: &str, _f: bool, _n: &str, _v: &str, _k: &str) -> Result<Value, ApplyError> {
    Ok(c.clone())
}
