//! The provider framework: typed traits a provider implements, and the
//! rules that keep what they return consistent with what Terraform
//! enforces, so an author gets a clear diagnostic from us instead of
//! Terraform's "inconsistent result after apply".

mod plan;
pub(crate) mod service;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::diag::{AttributePath, Diagnostic, Diagnostics, PathStep};
use crate::schema::Schema;
use crate::value::{Type, Value, value_from_json, value_to_json};

pub use plan::Plan;

/// A configuration (provider block, resource or data source body) as
/// Terraform sent it: an object that may still hold unknown values.
#[derive(Debug, Clone)]
pub struct Config {
    value: Value,
}

impl Config {
    pub fn new(value: Value) -> Self {
        Config { value }
    }
    pub fn value(&self) -> &Value {
        &self.value
    }
    /// An attribute's value; null when the block has no such attribute.
    pub fn get(&self, attribute: &str) -> &Value {
        self.value.get(attribute).unwrap_or(&Value::Null)
    }
    /// The configuration as a typed struct. Fails, naming the attribute,
    /// when some value is not known until apply.
    pub fn typed<T: DeserializeOwned>(&self) -> Result<T, Diagnostics> {
        from_value(&self.value)
    }
}

/// Reads a wholly known value into a typed struct; the diagnostic names the
/// failing attribute.
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, Diagnostics> {
    let json = value_to_json(value).map_err(|e| {
        Diagnostics::from(Diagnostic::error("Value not known yet", format!("{e}; it is known only after apply")))
    })?;
    serde_path_to_error::deserialize(json).map_err(|e| {
        let path = attribute_path_of(e.path());
        Diagnostics::from(Diagnostic::error("Unexpected value", e.inner().to_string()).at(path))
    })
}

fn attribute_path_of(path: &serde_path_to_error::Path) -> AttributePath {
    use serde_path_to_error::Segment;
    AttributePath(
        path.iter()
            .filter_map(|s| match s {
                Segment::Seq { index } => Some(PathStep::Index(*index as i64)),
                Segment::Map { key } => Some(PathStep::Attribute(key.clone())),
                Segment::Enum { variant } => Some(PathStep::Attribute(variant.clone())),
                Segment::Unknown => None,
            })
            .collect(),
    )
}

/// Writes a typed struct as a value of `ty`.
pub fn to_value<T: Serialize>(typed: &T, ty: &Type) -> Result<Value, Diagnostics> {
    let json = serde_json::to_value(typed)
        .map_err(|e| Diagnostic::error("Provider produced an unencodable value", e.to_string()))?;
    value_from_json(&json, ty).map_err(|e| {
        Diagnostics::from(Diagnostic::error("Provider produced a value that does not fit its schema", e.to_string()))
    })
}

/// A failed create or update: the diagnostics, and whatever part of the
/// object exists, so Terraform records it and a re-apply converges instead
/// of leaking it.
#[derive(Debug)]
pub struct Failure<S> {
    pub diagnostics: Diagnostics,
    pub partial_state: Option<S>,
}

impl<S> From<Diagnostics> for Failure<S> {
    fn from(diagnostics: Diagnostics) -> Self {
        Failure { diagnostics, partial_state: None }
    }
}

impl<S> From<Diagnostic> for Failure<S> {
    fn from(d: Diagnostic) -> Self {
        Failure::from(Diagnostics::from(d))
    }
}

/// A managed resource type. The framework draws the plan from the schema
/// (config values, defaults, prior values for computed attributes, unknown
/// for new computed ones, replacement for `replaces()` attributes); the
/// resource adjusts it in [`Resource::modify_plan`] and does the work in
/// create, read, update and delete with typed state.
#[async_trait]
pub trait Resource: Send + Sync + 'static {
    /// The whole object, every attribute of the schema. During create and
    /// update, values the plan left unknown arrive as `None`.
    type State: Serialize + DeserializeOwned + Send + Sync;
    /// Data kept in state beside the object but never shown to the user.
    type Private: Serialize + DeserializeOwned + Default + Send + Sync;

    fn type_name(&self) -> &'static str;
    fn schema(&self) -> Schema;

    /// Checks across attributes; per-attribute rules belong in the schema's validators.
    fn validate(&self, _config: &Config, _diags: &mut Diagnostics) {}

    async fn modify_plan(&self, _plan: &mut Plan<'_>) {}

    async fn create(
        &self,
        planned: Self::State,
        private: &mut Self::Private,
    ) -> Result<Self::State, Failure<Self::State>>;

    /// `Ok(None)` means the object is gone and Terraform should plan to create it again.
    async fn read(&self, current: Self::State, private: &mut Self::Private)
    -> Result<Option<Self::State>, Diagnostics>;

    async fn update(
        &self,
        prior: Self::State,
        planned: Self::State,
        private: &mut Self::Private,
    ) -> Result<Self::State, Failure<Self::State>>;

    async fn delete(&self, state: Self::State, private: &Self::Private) -> Result<(), Diagnostics>;

    /// Builds the state for `terraform import`; Terraform then reads it.
    async fn import(&self, _id: &str) -> Result<(Self::State, Self::Private), Diagnostics> {
        Err(Diagnostic::error("Import not supported", format!("{} cannot be imported", self.type_name())).into())
    }
}

/// A data source: reads something and exposes it to the configuration.
#[async_trait]
pub trait DataSource: Send + Sync + 'static {
    type State: Serialize + DeserializeOwned + Send + Sync;

    fn type_name(&self) -> &'static str;
    fn schema(&self) -> Schema;
    fn validate(&self, _config: &Config, _diags: &mut Diagnostics) {}
    /// `config` is the whole object with computed attributes null.
    async fn read(&self, config: Self::State) -> Result<Self::State, Diagnostics>;
}

/// A provider-defined function (`provider::<name>::<function>`).
pub trait Function: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn definition(&self) -> FunctionDefinition;
    /// `arguments` match the declared parameters, wholly known and non-null
    /// unless the parameter allows otherwise.
    fn call(&self, arguments: &[Value]) -> Result<Value, FunctionError>;
}

#[derive(Debug, Clone)]
pub struct FunctionDefinition {
    pub summary: String,
    pub description: String,
    pub parameters: Vec<Parameter>,
    pub return_type: Type,
}

#[derive(Debug, Clone)]
pub struct Parameter {
    pub name: String,
    pub ty: Type,
    pub description: String,
    pub allow_null: bool,
}

/// A function failure, optionally blaming one argument (by position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionError {
    pub text: String,
    pub argument: Option<usize>,
}

impl FunctionError {
    pub fn argument(index: usize, text: impl Into<String>) -> Self {
        FunctionError { text: text.into(), argument: Some(index) }
    }
}

/// The provider: its block, its configuration, what it offers.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The provider type, e.g. `kube`; resource type names start with it.
    fn type_name(&self) -> &'static str;
    fn schema(&self) -> Schema;
    fn validate(&self, _config: &Config, _diags: &mut Diagnostics) {}
    /// Called once per provider process (and once per run when Terraform
    /// reattaches to a debug process), possibly with unknown values.
    async fn configure(&self, config: &Config, terraform_version: &str) -> Diagnostics;
    fn resources(&self) -> Vec<Arc<dyn ErasedResource>>;
    fn data_sources(&self) -> Vec<Arc<dyn ErasedDataSource>> {
        Vec::new()
    }
    fn functions(&self) -> Vec<Arc<dyn Function>> {
        Vec::new()
    }
}

/// Boxes a typed resource for [`Provider::resources`].
pub fn resource<R: Resource>(r: R) -> Arc<dyn ErasedResource> {
    Arc::new(plan::Typed(r))
}

/// Boxes a typed data source for [`Provider::data_sources`].
pub fn data_source<D: DataSource>(d: D) -> Arc<dyn ErasedDataSource> {
    Arc::new(plan::Typed(d))
}

pub use plan::{ErasedDataSource, ErasedResource};
