//! The `tfplugin5.Provider` gRPC service: decodes Terraform's requests,
//! dispatches to the provider's resources, data sources and functions,
//! and encodes their answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic::{Request, Response, Status};

use super::plan::{ApplyOutcome, ErasedDataSource, ErasedResource};
use super::{Config, Function, Provider};
use crate::diag::{AttributePath, Diagnostic, Diagnostics};
use crate::proto::tfplugin5 as pb;
use crate::proto::tfplugin5::provider_server::Provider as ProviderRpc;
use crate::schema::Schema;
use crate::value::{Type, Value, decode_msgpack, encode_msgpack, value_from_json};

struct Entry<T: ?Sized> {
    schema: Schema,
    ty: Type,
    imp: Arc<T>,
}

/// Everything the provider offers, with schemas computed once per process:
/// Terraform asks for them in every process it starts.
pub(crate) struct Catalog {
    provider: Arc<dyn Provider>,
    provider_schema: Schema,
    provider_ty: Type,
    resources: HashMap<&'static str, Entry<dyn ErasedResource>>,
    data_sources: HashMap<&'static str, Entry<dyn ErasedDataSource>>,
    functions: HashMap<&'static str, Arc<dyn Function>>,
}

impl Catalog {
    pub(crate) fn new(provider: Arc<dyn Provider>) -> Self {
        let provider_schema = provider.schema();
        let provider_ty = provider_schema.block.implied_type();
        let resources = provider
            .resources()
            .into_iter()
            .map(|r| {
                let schema = r.schema();
                (r.type_name(), Entry { ty: schema.block.implied_type(), schema, imp: r })
            })
            .collect();
        let data_sources = provider
            .data_sources()
            .into_iter()
            .map(|d| {
                let schema = d.schema();
                (d.type_name(), Entry { ty: schema.block.implied_type(), schema, imp: d })
            })
            .collect();
        let functions = provider.functions().into_iter().map(|f| (f.name(), f)).collect();
        Catalog { provider, provider_schema, provider_ty, resources, data_sources, functions }
    }

    pub(crate) fn provider(&self) -> &dyn Provider {
        self.provider.as_ref()
    }
    pub(crate) fn provider_schema(&self) -> &Schema {
        &self.provider_schema
    }
    pub(crate) fn resource_schemas(&self) -> impl Iterator<Item = (&'static str, &Schema)> {
        self.resources.iter().map(|(n, e)| (*n, &e.schema))
    }
    pub(crate) fn data_source_schemas(&self) -> impl Iterator<Item = (&'static str, &Schema)> {
        self.data_sources.iter().map(|(n, e)| (*n, &e.schema))
    }
    pub(crate) fn functions(&self) -> impl Iterator<Item = &Arc<dyn Function>> {
        self.functions.values()
    }

    fn resource(&self, name: &str) -> Result<&Entry<dyn ErasedResource>, Diagnostics> {
        self.resources.get(name).ok_or_else(|| unknown_type("resource", name))
    }
    fn data_source(&self, name: &str) -> Result<&Entry<dyn ErasedDataSource>, Diagnostics> {
        self.data_sources.get(name).ok_or_else(|| unknown_type("data source", name))
    }
}

fn unknown_type(kind: &str, name: &str) -> Diagnostics {
    Diagnostic::error(format!("Unknown {kind} type"), format!("this provider has no {kind} type {name:?}")).into()
}

pub(crate) struct ProviderService {
    catalog: Arc<Catalog>,
    stopped: AtomicBool,
}

impl ProviderService {
    pub(crate) fn new(catalog: Arc<Catalog>) -> Self {
        ProviderService { catalog, stopped: AtomicBool::new(false) }
    }

    /// Terraform promises no calls after Stop; if one comes anyway, it is
    /// refused rather than started half-way through a shutdown.
    fn refuse_if_stopped(&self) -> Result<(), Diagnostics> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(Diagnostic::error(
                "Provider is stopping",
                "Terraform asked the provider to stop; no new operations start",
            )
            .into());
        }
        Ok(())
    }
}

/// With `TFPLUGIN_CAPTURE_DIR` set, keeps each planned configuration's raw
/// msgpack there: how the codec's fixtures are captured from real
/// Terraform, and a way to see exactly what Terraform sent when debugging.
/// Configurations can hold secrets, so it is never on by default.
fn capture(dv: Option<&pb::DynamicValue>) {
    let (Some(dir), Some(dv)) = (std::env::var_os("TFPLUGIN_CAPTURE_DIR"), dv) else { return };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &dv.msgpack);
    let name: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    let path = std::path::Path::new(&dir).join(format!("{name}.msgpack"));
    if let Err(e) = std::fs::write(&path, &dv.msgpack) {
        tracing::warn!(path = %path.display(), error = %e, "cannot capture the configuration");
    }
}

fn decode(dv: Option<&pb::DynamicValue>, ty: &Type) -> Result<Value, Diagnostics> {
    let Some(dv) = dv else { return Ok(Value::Null) };
    let result = if !dv.msgpack.is_empty() {
        decode_msgpack(&dv.msgpack, ty).map_err(|e| e.to_string())
    } else if !dv.json.is_empty() {
        serde_json::from_slice(&dv.json)
            .map_err(|e| e.to_string())
            .and_then(|j| value_from_json(&j, ty).map_err(|e| e.to_string()))
    } else {
        Ok(Value::Null)
    };
    result.map_err(|e| Diagnostic::error("Undecodable value from Terraform", e).into())
}

fn encode(v: &Value, ty: &Type) -> Result<pb::DynamicValue, Diagnostics> {
    let msgpack =
        encode_msgpack(v, ty).map_err(|e| Diagnostic::error("Provider bug: unencodable value", e.to_string()))?;
    Ok(pb::DynamicValue { msgpack, json: Vec::new() })
}

/// Encodes `v`, folding an encoding failure into `diags`.
fn encode_into(v: &Value, ty: &Type, diags: &mut Diagnostics) -> Option<pb::DynamicValue> {
    match encode(v, ty) {
        Ok(dv) => Some(dv),
        Err(d) => {
            diags.extend(d);
            None
        }
    }
}

fn validate_config(schema: &Schema, value: Value, custom: impl FnOnce(&Config, &mut Diagnostics)) -> Diagnostics {
    let mut diags = Diagnostics::default();
    schema.block.validate(&value, &AttributePath::root(), &mut diags);
    custom(&Config::new(value), &mut diags);
    diags
}

/// Validates a configuration for a resource or data source type: the
/// schema's validators, then the type's own cross-attribute checks.
fn validate_entry<T: ?Sized>(
    entry: Result<&Entry<T>, Diagnostics>,
    config: Option<&pb::DynamicValue>,
    custom: impl FnOnce(&T, &Config, &mut Diagnostics),
) -> Diagnostics {
    let e = match entry {
        Ok(e) => e,
        Err(d) => return d,
    };
    match decode(config, &e.ty) {
        Ok(v) => validate_config(&e.schema, v, |cfg, d| custom(&e.imp, cfg, d)),
        Err(d) => d,
    }
}

type RpcResult<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl ProviderRpc for ProviderService {
    async fn get_metadata(&self, _: Request<pb::get_metadata::Request>) -> RpcResult<pb::get_metadata::Response> {
        use pb::get_metadata as m;
        let c = &self.catalog;
        Ok(Response::new(m::Response {
            server_capabilities: Some(capabilities()),
            diagnostics: Vec::new(),
            data_sources: c.data_sources.keys().map(|n| m::DataSourceMetadata { type_name: (*n).into() }).collect(),
            resources: c.resources.keys().map(|n| m::ResourceMetadata { type_name: (*n).into() }).collect(),
            functions: c.functions.keys().map(|n| m::FunctionMetadata { name: (*n).into() }).collect(),
            ephemeral_resources: Vec::new(),
        }))
    }

    async fn get_schema(
        &self,
        _: Request<pb::get_provider_schema::Request>,
    ) -> RpcResult<pb::get_provider_schema::Response> {
        let c = &self.catalog;
        Ok(Response::new(pb::get_provider_schema::Response {
            provider: Some(c.provider_schema.to_proto()),
            resource_schemas: c.resources.iter().map(|(n, e)| ((*n).to_owned(), e.schema.to_proto())).collect(),
            data_source_schemas: c.data_sources.iter().map(|(n, e)| ((*n).to_owned(), e.schema.to_proto())).collect(),
            functions: c.functions.iter().map(|(n, f)| ((*n).to_owned(), function_to_proto(f.as_ref()))).collect(),
            ephemeral_resource_schemas: HashMap::new(),
            diagnostics: Vec::new(),
            provider_meta: None,
            server_capabilities: Some(capabilities()),
        }))
    }

    async fn prepare_provider_config(
        &self,
        r: Request<pb::prepare_provider_config::Request>,
    ) -> RpcResult<pb::prepare_provider_config::Response> {
        let c = &self.catalog;
        let diags = match decode(r.get_ref().config.as_ref(), &c.provider_ty) {
            Ok(v) => validate_config(&c.provider_schema, v, |cfg, d| c.provider.validate(cfg, d)),
            Err(d) => d,
        };
        Ok(Response::new(pb::prepare_provider_config::Response {
            prepared_config: None,
            diagnostics: diags.to_proto(),
        }))
    }

    async fn validate_resource_type_config(
        &self,
        r: Request<pb::validate_resource_type_config::Request>,
    ) -> RpcResult<pb::validate_resource_type_config::Response> {
        let req = r.get_ref();
        let diags = validate_entry(self.catalog.resource(&req.type_name), req.config.as_ref(), |imp, cfg, d| {
            imp.validate(cfg, d);
        });
        Ok(Response::new(pb::validate_resource_type_config::Response { diagnostics: diags.to_proto() }))
    }

    async fn validate_data_source_config(
        &self,
        r: Request<pb::validate_data_source_config::Request>,
    ) -> RpcResult<pb::validate_data_source_config::Response> {
        let req = r.get_ref();
        let diags = validate_entry(self.catalog.data_source(&req.type_name), req.config.as_ref(), |imp, cfg, d| {
            imp.validate(cfg, d);
        });
        Ok(Response::new(pb::validate_data_source_config::Response { diagnostics: diags.to_proto() }))
    }

    async fn upgrade_resource_state(
        &self,
        r: Request<pb::upgrade_resource_state::Request>,
    ) -> RpcResult<pb::upgrade_resource_state::Response> {
        let req = r.get_ref();
        let result = self.catalog.resource(&req.type_name).and_then(|e| {
            if req.version > e.schema.version {
                return Err(Diagnostic::error(
                    "State written by a newer provider",
                    format!(
                        "{} state has schema version {}, this provider knows up to {}; upgrade the provider",
                        req.type_name, req.version, e.schema.version
                    ),
                )
                .into());
            }
            let raw = req.raw_state.as_ref().map(|s| s.json.as_slice()).unwrap_or_default();
            if raw.is_empty() {
                return Err(Diagnostic::error(
                    "Unreadable state",
                    "the stored state has no JSON form (pre-0.12 flatmap state is not supported)",
                )
                .into());
            }
            let json: serde_json::Value =
                serde_json::from_slice(raw).map_err(|e| Diagnostic::error("Unreadable state", e.to_string()))?;
            let value =
                value_from_json(&json, &e.ty).map_err(|err| Diagnostic::error("Unreadable state", err.to_string()))?;
            encode(&value, &e.ty)
        });
        let (upgraded_state, diags) = match result {
            Ok(v) => (Some(v), Diagnostics::default()),
            Err(d) => (None, d),
        };
        Ok(Response::new(pb::upgrade_resource_state::Response { upgraded_state, diagnostics: diags.to_proto() }))
    }

    async fn configure(&self, r: Request<pb::configure::Request>) -> RpcResult<pb::configure::Response> {
        let req = r.get_ref();
        let c = &self.catalog;
        // A reattached provider serves one Terraform run after another, and
        // each begins here: a Stop from an earlier run no longer holds.
        self.stopped.store(false, Ordering::SeqCst);
        let diags = match decode(req.config.as_ref(), &c.provider_ty) {
            Ok(v) => c.provider.configure(&Config::new(v), &req.terraform_version).await,
            Err(d) => d,
        };
        Ok(Response::new(pb::configure::Response { diagnostics: diags.to_proto() }))
    }

    async fn read_resource(&self, r: Request<pb::read_resource::Request>) -> RpcResult<pb::read_resource::Response> {
        let req = r.get_ref();
        let mut diags = Diagnostics::default();
        let mut response = pb::read_resource::Response { private: req.private.clone(), ..Default::default() };
        match self.catalog.resource(&req.type_name).and_then(|e| Ok((e, decode(req.current_state.as_ref(), &e.ty)?))) {
            Ok((_, Value::Null)) => {}
            Ok((e, current)) => {
                let ApplyOutcome { new_state, private, diagnostics } = e.imp.read(&e.ty, &current, &req.private).await;
                diags.extend(diagnostics);
                response.new_state = encode_into(&new_state, &e.ty, &mut diags);
                response.private = private;
            }
            Err(d) => diags.extend(d),
        }
        response.diagnostics = diags.to_proto();
        Ok(Response::new(response))
    }

    async fn plan_resource_change(
        &self,
        r: Request<pb::plan_resource_change::Request>,
    ) -> RpcResult<pb::plan_resource_change::Response> {
        let req = r.get_ref();
        let mut diags = Diagnostics::default();
        let mut response = pb::plan_resource_change::Response::default();
        capture(req.config.as_ref());
        let decoded = self.refuse_if_stopped().and_then(|()| {
            let e = self.catalog.resource(&req.type_name)?;
            let prior = decode(req.prior_state.as_ref(), &e.ty)?;
            let config = decode(req.config.as_ref(), &e.ty)?;
            Ok((e, prior, config))
        });
        // Destroys are never planned here: without the plan_destroy
        // capability Terraform plans them itself.
        match decoded {
            Ok((e, prior, config)) => {
                let prior = (!prior.is_null()).then_some(&prior);
                let outcome = e.imp.plan(&e.schema, &Config::new(config), prior, &req.prior_private).await;
                diags.extend(outcome.diagnostics);
                response.planned_state = encode_into(&outcome.planned, &e.ty, &mut diags);
                response.requires_replace = outcome.requires_replace.iter().map(AttributePath::to_proto).collect();
                response.planned_private = outcome.planned_private;
            }
            Err(d) => diags.extend(d),
        }
        response.diagnostics = diags.to_proto();
        Ok(Response::new(response))
    }

    async fn apply_resource_change(
        &self,
        r: Request<pb::apply_resource_change::Request>,
    ) -> RpcResult<pb::apply_resource_change::Response> {
        let req = r.get_ref();
        let mut diags = Diagnostics::default();
        let mut response = pb::apply_resource_change::Response::default();
        let decoded = self.refuse_if_stopped().and_then(|()| {
            let e = self.catalog.resource(&req.type_name)?;
            let prior = decode(req.prior_state.as_ref(), &e.ty)?;
            let planned = decode(req.planned_state.as_ref(), &e.ty)?;
            Ok((e, prior, planned))
        });
        match decoded {
            Ok((e, prior, planned)) => {
                let prior_ref = (!prior.is_null()).then_some(&prior);
                let planned_ref = (!planned.is_null()).then_some(&planned);
                let outcome = e.imp.apply(&e.schema, &e.ty, prior_ref, planned_ref, &req.planned_private).await;
                diags.extend(outcome.diagnostics);
                response.new_state = encode_into(&outcome.new_state, &e.ty, &mut diags);
                response.private = outcome.private;
            }
            Err(d) => diags.extend(d),
        }
        response.diagnostics = diags.to_proto();
        Ok(Response::new(response))
    }

    async fn import_resource_state(
        &self,
        r: Request<pb::import_resource_state::Request>,
    ) -> RpcResult<pb::import_resource_state::Response> {
        let req = r.get_ref();
        let mut diags = Diagnostics::default();
        let mut response = pb::import_resource_state::Response::default();
        match self.catalog.resource(&req.type_name) {
            Ok(e) => {
                let ApplyOutcome { new_state, private, diagnostics } = e.imp.import(&e.ty, &req.id).await;
                diags.extend(diagnostics);
                if !diags.has_errors()
                    && let Some(state) = encode_into(&new_state, &e.ty, &mut diags)
                {
                    response.imported_resources.push(pb::import_resource_state::ImportedResource {
                        type_name: req.type_name.clone(),
                        state: Some(state),
                        private,
                    });
                }
            }
            Err(d) => diags.extend(d),
        }
        response.diagnostics = diags.to_proto();
        Ok(Response::new(response))
    }

    async fn read_data_source(
        &self,
        r: Request<pb::read_data_source::Request>,
    ) -> RpcResult<pb::read_data_source::Response> {
        let req = r.get_ref();
        let mut diags = Diagnostics::default();
        let mut response = pb::read_data_source::Response::default();
        let decoded = self.refuse_if_stopped().and_then(|()| {
            let e = self.catalog.data_source(&req.type_name)?;
            Ok((e, decode(req.config.as_ref(), &e.ty)?))
        });
        match decoded {
            Ok((e, config)) => {
                let outcome = e.imp.read(&e.schema, &e.ty, &config).await;
                diags.extend(outcome.diagnostics);
                response.state = encode_into(&outcome.new_state, &e.ty, &mut diags);
            }
            Err(d) => diags.extend(d),
        }
        response.diagnostics = diags.to_proto();
        Ok(Response::new(response))
    }

    async fn get_functions(&self, _: Request<pb::get_functions::Request>) -> RpcResult<pb::get_functions::Response> {
        Ok(Response::new(pb::get_functions::Response {
            functions: self
                .catalog
                .functions
                .iter()
                .map(|(n, f)| ((*n).to_owned(), function_to_proto(f.as_ref())))
                .collect(),
            diagnostics: Vec::new(),
        }))
    }

    async fn call_function(&self, r: Request<pb::call_function::Request>) -> RpcResult<pb::call_function::Response> {
        let req = r.get_ref();
        let fail = |text: String, argument: Option<usize>| pb::call_function::Response {
            result: None,
            error: Some(pb::FunctionError { text, function_argument: argument.map(|i| i as i64) }),
        };
        let Some(f) = self.catalog.functions.get(req.name.as_str()) else {
            return Ok(Response::new(fail(format!("this provider has no function {:?}", req.name), None)));
        };
        let def = f.definition();
        if req.arguments.len() != def.parameters.len() {
            let text = format!("{} takes {} arguments, got {}", req.name, def.parameters.len(), req.arguments.len());
            return Ok(Response::new(fail(text, None)));
        }
        let mut arguments = Vec::with_capacity(def.parameters.len());
        for (i, (arg, param)) in req.arguments.iter().zip(&def.parameters).enumerate() {
            match decode(Some(arg), &param.ty) {
                Ok(v) => arguments.push(v),
                Err(d) => return Ok(Response::new(fail(d.to_string(), Some(i)))),
            }
        }
        let response = match f.call(&arguments) {
            Ok(v) => match encode(&v, &def.return_type) {
                Ok(result) => pb::call_function::Response { result: Some(result), error: None },
                Err(d) => fail(d.to_string(), None),
            },
            Err(e) => fail(e.text, e.argument),
        };
        Ok(Response::new(response))
    }

    async fn stop(&self, _: Request<pb::stop::Request>) -> RpcResult<pb::stop::Response> {
        tracing::info!("Terraform asked the provider to stop");
        self.stopped.store(true, Ordering::SeqCst);
        Ok(Response::new(pb::stop::Response { error: String::new() }))
    }
}

/// Schemas are fixed for a build of the provider, so Terraform may reuse the
/// copy it fetched from the first provider process of a command instead of
/// asking each later one.
fn capabilities() -> pb::ServerCapabilities {
    pb::ServerCapabilities { get_provider_schema_optional: true, ..Default::default() }
}

fn function_to_proto(f: &dyn Function) -> pb::Function {
    let def = f.definition();
    pb::Function {
        parameters: def
            .parameters
            .iter()
            .map(|p| pb::function::Parameter {
                name: p.name.clone(),
                r#type: p.ty.to_json_bytes(),
                allow_null_value: p.allow_null,
                allow_unknown_values: false,
                description: p.description.clone(),
                description_kind: pb::StringKind::Markdown as i32,
            })
            .collect(),
        variadic_parameter: None,
        r#return: Some(pb::function::Return { r#type: def.return_type.to_json_bytes() }),
        summary: def.summary.clone(),
        description: def.description.clone(),
        description_kind: pb::StringKind::Markdown as i32,
        deprecation_message: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::framework::{DataSource, Failure, FunctionDefinition, FunctionError, Parameter, Resource};
    use crate::schema::{Attribute, Block, Validator};

    /// A resource whose id is "id-" + name, with an optional count.
    struct Thing;

    #[derive(Serialize, Deserialize)]
    struct ThingState {
        id: Option<String>,
        name: Option<String>,
        count: Option<i64>,
    }

    #[async_trait]
    impl Resource for Thing {
        type State = ThingState;
        type Private = Vec<String>;
        fn type_name(&self) -> &'static str {
            "test_thing"
        }
        fn schema(&self) -> Schema {
            Schema {
                version: 1,
                block: Block {
                    attributes: vec![
                        Attribute::computed("id", Type::String),
                        Attribute::required("name", Type::String).validate(Validator::NotEmpty),
                        Attribute::with_default("count", Type::Number, 1).validate(Validator::IntegerBetween(0, 9)),
                    ],
                    ..Block::default()
                },
            }
        }
        async fn create(
            &self,
            planned: ThingState,
            private: &mut Vec<String>,
        ) -> Result<ThingState, Failure<ThingState>> {
            private.push("created".into());
            Ok(ThingState { id: planned.name.as_ref().map(|n| format!("id-{n}")), ..planned })
        }
        async fn read(&self, current: ThingState, _: &mut Vec<String>) -> Result<Option<ThingState>, Diagnostics> {
            Ok(Some(current))
        }
        async fn update(
            &self,
            _: ThingState,
            planned: ThingState,
            _: &mut Vec<String>,
        ) -> Result<ThingState, Failure<ThingState>> {
            Ok(planned)
        }
        async fn delete(&self, _: ThingState, _: &Vec<String>) -> Result<(), Diagnostics> {
            Ok(())
        }
    }

    struct Echo;

    #[derive(Serialize, Deserialize)]
    struct EchoState {
        input: Option<String>,
        output: Option<String>,
    }

    #[async_trait]
    impl DataSource for Echo {
        type State = EchoState;
        fn type_name(&self) -> &'static str {
            "test_echo"
        }
        fn schema(&self) -> Schema {
            Schema {
                version: 0,
                block: Block {
                    attributes: vec![
                        Attribute::required("input", Type::String),
                        Attribute::computed("output", Type::String),
                    ],
                    ..Block::default()
                },
            }
        }
        async fn read(&self, config: EchoState) -> Result<EchoState, Diagnostics> {
            Ok(EchoState { output: config.input.as_ref().map(|i| i.to_uppercase()), ..config })
        }
    }

    struct Double;

    impl Function for Double {
        fn name(&self) -> &'static str {
            "double"
        }
        fn definition(&self) -> FunctionDefinition {
            FunctionDefinition {
                summary: "Doubles.".into(),
                description: String::new(),
                parameters: vec![Parameter {
                    name: "n".into(),
                    ty: Type::Number,
                    description: String::new(),
                    allow_null: false,
                }],
                return_type: Type::Number,
            }
        }
        fn call(&self, arguments: &[Value]) -> Result<Value, FunctionError> {
            match arguments[0].as_number().and_then(crate::value::Number::as_i64) {
                Some(n) if n >= 0 => Ok(Value::int(n * 2)),
                _ => Err(FunctionError::argument(0, "n must be a non-negative whole number")),
            }
        }
    }

    struct TestProvider;

    #[async_trait]
    impl Provider for TestProvider {
        fn type_name(&self) -> &'static str {
            "test"
        }
        fn schema(&self) -> Schema {
            Schema { version: 0, block: Block::default() }
        }
        async fn configure(&self, _: &Config, _: &str) -> Diagnostics {
            Diagnostics::default()
        }
        fn resources(&self) -> Vec<Arc<dyn ErasedResource>> {
            vec![crate::framework::resource(Thing)]
        }
        fn data_sources(&self) -> Vec<Arc<dyn ErasedDataSource>> {
            vec![crate::framework::data_source(Echo)]
        }
        fn functions(&self) -> Vec<Arc<dyn Function>> {
            vec![Arc::new(Double)]
        }
    }

    fn service() -> ProviderService {
        ProviderService::new(Arc::new(Catalog::new(Arc::new(TestProvider))))
    }

    fn thing_type() -> Type {
        Type::object([("id", Type::String), ("name", Type::String), ("count", Type::Number)])
    }

    fn dv(v: &Value, ty: &Type) -> Option<pb::DynamicValue> {
        Some(encode(v, ty).expect("encode"))
    }

    fn thing(id: Value, name: &str, count: Value) -> Value {
        Value::Object([("id".into(), id), ("name".into(), name.into()), ("count".into(), count)].into())
    }

    fn errors(diags: &[pb::Diagnostic]) -> Vec<String> {
        diags.iter().map(|d| format!("{}: {}", d.summary, d.detail)).collect()
    }

    #[tokio::test]
    async fn create_plans_defaults_and_unknowns_then_applies_consistently() {
        let svc = service();
        let ty = thing_type();
        let config = thing(Value::Null, "a", Value::Null);
        let plan = svc
            .plan_resource_change(Request::new(pb::plan_resource_change::Request {
                type_name: "test_thing".into(),
                prior_state: dv(&Value::Null, &ty),
                proposed_new_state: dv(&config, &ty),
                config: dv(&config, &ty),
                ..Default::default()
            }))
            .await
            .expect("rpc")
            .into_inner();
        assert!(plan.diagnostics.is_empty(), "{:?}", errors(&plan.diagnostics));
        let planned = decode(plan.planned_state.as_ref(), &ty).expect("planned");
        assert!(planned.get("id").is_some_and(Value::is_unknown));
        assert_eq!(planned.get("count"), Some(&Value::int(1)));

        let applied = svc
            .apply_resource_change(Request::new(pb::apply_resource_change::Request {
                type_name: "test_thing".into(),
                prior_state: dv(&Value::Null, &ty),
                planned_state: plan.planned_state,
                config: dv(&config, &ty),
                planned_private: plan.planned_private,
                ..Default::default()
            }))
            .await
            .expect("rpc")
            .into_inner();
        assert!(applied.diagnostics.is_empty(), "{:?}", errors(&applied.diagnostics));
        let state = decode(applied.new_state.as_ref(), &ty).expect("state");
        assert_eq!(state, thing("id-a".into(), "a", Value::int(1)));
        assert_eq!(applied.private, br#"["created"]"#);
    }

    #[tokio::test]
    async fn validation_names_the_attribute_and_unknown_types_are_diagnosed() {
        let svc = service();
        let ty = thing_type();
        let bad = thing(Value::Null, "", Value::int(12));
        let resp = svc
            .validate_resource_type_config(Request::new(pb::validate_resource_type_config::Request {
                type_name: "test_thing".into(),
                config: dv(&bad, &ty),
                ..Default::default()
            }))
            .await
            .expect("rpc")
            .into_inner();
        let paths: Vec<String> = resp
            .diagnostics
            .iter()
            .filter_map(|d| d.attribute.as_ref())
            .flat_map(|p| p.steps.iter())
            .filter_map(|s| match &s.selector {
                Some(pb::attribute_path::step::Selector::AttributeName(n)) => Some(n.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(paths, ["name", "count"]);

        let resp = svc
            .validate_resource_type_config(Request::new(pb::validate_resource_type_config::Request {
                type_name: "test_nope".into(),
                ..Default::default()
            }))
            .await
            .expect("rpc")
            .into_inner();
        assert!(errors(&resp.diagnostics)[0].contains("no resource type \"test_nope\""));
    }

    #[tokio::test]
    async fn upgrade_reads_older_state_json_and_refuses_newer_versions() {
        let svc = service();
        let upgrade = |version, json: &str| pb::upgrade_resource_state::Request {
            type_name: "test_thing".into(),
            version,
            raw_state: Some(pb::RawState { json: json.as_bytes().to_vec(), ..Default::default() }),
        };
        // Written before `count` existed: the new attribute reads as null.
        let resp =
            svc.upgrade_resource_state(Request::new(upgrade(0, r#"{"id":"id-a","name":"a"}"#))).await.expect("rpc");
        let state = decode(resp.get_ref().upgraded_state.as_ref(), &thing_type()).expect("state");
        assert_eq!(state, thing("id-a".into(), "a", Value::Null));

        let resp = svc.upgrade_resource_state(Request::new(upgrade(2, "{}"))).await.expect("rpc").into_inner();
        assert!(errors(&resp.diagnostics)[0].contains("newer provider"));
    }

    #[tokio::test]
    async fn data_source_fills_computed_attributes() {
        let svc = service();
        let ty = Type::object([("input", Type::String), ("output", Type::String)]);
        let config = Value::Object([("input".into(), "hi".into()), ("output".into(), Value::Null)].into());
        let resp = svc
            .read_data_source(Request::new(pb::read_data_source::Request {
                type_name: "test_echo".into(),
                config: dv(&config, &ty),
                ..Default::default()
            }))
            .await
            .expect("rpc")
            .into_inner();
        let state = decode(resp.state.as_ref(), &ty).expect("state");
        assert_eq!(state.get("output"), Some(&Value::string("HI")));
    }

    #[tokio::test]
    async fn functions_return_results_and_blame_arguments() {
        let svc = service();
        let call = |n: i64| pb::call_function::Request {
            name: "double".into(),
            arguments: vec![encode(&Value::int(n), &Type::Number).expect("arg")],
        };
        let ok = svc.call_function(Request::new(call(21))).await.expect("rpc").into_inner();
        assert_eq!(decode(ok.result.as_ref(), &Type::Number).expect("result"), Value::int(42));
        let err = svc.call_function(Request::new(call(-1))).await.expect("rpc").into_inner();
        assert_eq!(err.error.expect("error").function_argument, Some(0));
    }

    #[tokio::test]
    async fn after_stop_no_new_operation_starts() {
        let svc = service();
        svc.stop(Request::new(pb::stop::Request {})).await.expect("stop");
        let resp = svc
            .plan_resource_change(Request::new(pb::plan_resource_change::Request {
                type_name: "test_thing".into(),
                ..Default::default()
            }))
            .await
            .expect("rpc")
            .into_inner();
        assert!(errors(&resp.diagnostics)[0].contains("stopping"));
    }
}
