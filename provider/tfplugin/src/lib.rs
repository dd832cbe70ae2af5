//! The Terraform plugin protocol edge (tfplugin5) and the provider
//! framework on top of it. Nothing here knows about AWS or Kubernetes, and
//! no protocol type leaves this crate.

pub mod diag;
pub mod docs;
pub mod framework;
pub mod schema;
pub mod server;
pub mod value;

mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs, dead_code)]
    pub mod tfplugin5 {
        tonic::include_proto!("tfplugin5");
    }
    pub mod plugin {
        tonic::include_proto!("plugin");
    }
}

pub use diag::{AttributePath, Diagnostic, Diagnostics, PathStep, Severity};
pub use framework::{
    Config, DataSource, Failure, Function, FunctionDefinition, FunctionError, Parameter, Plan, Provider, Resource,
    data_source, from_value, resource, to_value,
};
pub use framework::{ErasedDataSource, ErasedResource};
pub use schema::{Attribute, Block, NestedBlock, Nesting, Presence, Schema, Validator};
pub use server::{Mode, ServeError, serve};
pub use value::{Number, Type, Value};
