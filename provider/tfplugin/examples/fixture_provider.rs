//! Captures the msgpack Terraform really sends, for the codec's fixtures.
//!
//! A provider `trellis/fixture` with one resource, `fixture_values`, whose
//! attributes cover every cty type. Run by Terraform with
//! `TFPLUGIN_CAPTURE_DIR` set, the framework writes each configuration
//! Terraform sends in PlanResourceChange there, byte for byte. Refresh the
//! fixtures with `provider/tfplugin/tests/fixtures/capture.sh`.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value as Json;
use tfplugin::{
    Attribute, Block, Config, Diagnostics, ErasedResource, Failure, Mode, Provider, Resource, Schema, Type,
};

struct FixtureProvider;

#[async_trait]
impl Provider for FixtureProvider {
    fn type_name(&self) -> &'static str {
        "fixture"
    }
    fn schema(&self) -> Schema {
        Schema { version: 0, block: Block::default() }
    }
    async fn configure(&self, _: &Config, _: &str) -> Diagnostics {
        Diagnostics::default()
    }
    fn resources(&self) -> Vec<Arc<dyn ErasedResource>> {
        vec![tfplugin::resource(Values)]
    }
}

struct Values;

fn block() -> Block {
    let opt = |n: &str, t: Type| Attribute::optional(n, t);
    Block {
        attributes: vec![
            Attribute::required("name", Type::String),
            opt("s", Type::String),
            opt("n", Type::Number),
            opt("b", Type::Bool),
            opt("l", Type::list(Type::Number)),
            opt("st", Type::set(Type::String)),
            opt("m", Type::map(Type::Bool)),
            opt("o", Type::object([("x", Type::String), ("y", Type::list(Type::Number))])),
            opt("t", Type::Tuple(vec![Type::String, Type::Number])),
            opt("d", Type::Dynamic),
        ],
        ..Block::default()
    }
}

#[async_trait]
impl Resource for Values {
    type State = Json;
    type Private = ();
    fn type_name(&self) -> &'static str {
        "fixture_values"
    }
    fn schema(&self) -> Schema {
        Schema { version: 0, block: block() }
    }
    async fn create(&self, planned: Json, _: &mut ()) -> Result<Json, Failure<Json>> {
        Ok(planned)
    }
    async fn read(&self, current: Json, _: &mut ()) -> Result<Option<Json>, Diagnostics> {
        Ok(Some(current))
    }
    async fn update(&self, _: Json, planned: Json, _: &mut ()) -> Result<Json, Failure<Json>> {
        Ok(planned)
    }
    async fn delete(&self, _: Json, _: &()) -> Result<(), Diagnostics> {
        Ok(())
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match tfplugin::serve(Arc::new(FixtureProvider), "trellis/fixture", Mode::Plugin).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
