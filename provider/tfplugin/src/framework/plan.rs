//! Planning and the consistency rules, between the typed traits and the
//! raw values the service exchanges with Terraform.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use super::{Config, DataSource, Failure, Resource, from_value, to_value};
use crate::diag::{AttributePath, Diagnostic, Diagnostics, PathStep};
use crate::schema::{Block, Nesting, Presence, Schema};
use crate::value::{Type, Value};

/// A plan being drawn for one resource instance. The framework fills it
/// from the schema before the resource sees it; the resource may only
/// change computed attributes the configuration leaves open, so the plan
/// it returns is always one Terraform accepts.
pub struct Plan<'a> {
    block: &'a Block,
    config: &'a Config,
    prior: Option<&'a Value>,
    planned: Value,
    requires_replace: Vec<AttributePath>,
    pub diagnostics: Diagnostics,
}

impl<'a> Plan<'a> {
    pub fn config(&self) -> &Config {
        self.config
    }
    /// The state before this change; `None` when the object is to be created.
    pub fn prior(&self) -> Option<&Value> {
        self.prior
    }
    pub fn planned(&self, attribute: &str) -> &Value {
        self.planned.get(attribute).unwrap_or(&Value::Null)
    }

    /// Sets a computed attribute the configuration leaves open. Anything
    /// else is a provider bug, reported as an error rather than sent to
    /// Terraform as an invalid plan.
    pub fn set(&mut self, attribute: &str, value: Value) {
        let open =
            self.block.attribute(attribute).is_some_and(|a| a.is_computed()) && self.config.get(attribute).is_null();
        if !open {
            self.diagnostics.push(
                Diagnostic::error(
                    "Provider bug: plan changes a configured attribute",
                    format!("{attribute} is set by the configuration or is not computed; the provider may not plan another value"),
                )
                .at(AttributePath::attribute(attribute)),
            );
            return;
        }
        if let Value::Object(attrs) = &mut self.planned {
            attrs.insert(attribute.to_owned(), value);
        }
    }

    /// Marks a computed attribute as known only after apply.
    pub fn set_unknown(&mut self, attribute: &str) {
        self.set(attribute, Value::unknown());
    }

    /// Asks Terraform to replace the object because `attribute` changes.
    /// Terraform replaces only if the prior and planned values differ (or
    /// the planned one is unknown).
    pub fn replace_because(&mut self, attribute: &str) {
        let path = AttributePath::attribute(attribute);
        if !self.requires_replace.contains(&path) {
            self.requires_replace.push(path);
        }
    }

    /// True when the plan so far replaces the object.
    pub fn replaces(&self) -> bool {
        let Some(prior) = self.prior else { return false };
        self.requires_replace.iter().any(|p| match p.0.as_slice() {
            [PathStep::Attribute(a)] => {
                !prior.get(a).unwrap_or(&Value::Null).same_as(self.planned.get(a).unwrap_or(&Value::Null))
            }
            _ => true,
        })
    }
}

/// What the framework computes before the resource's own adjustments:
/// configuration values, defaults for open optional attributes, prior
/// values for computed ones, and unknown where nothing is known yet.
pub(crate) fn draw(block: &Block, config: &Value, prior: Option<&Value>) -> Value {
    let mut out = BTreeMap::new();
    for attr in &block.attributes {
        let configured = config.get(&attr.name).unwrap_or(&Value::Null);
        let value = if !configured.is_null() || !attr.is_computed() {
            configured.clone()
        } else if let Some(default) = &attr.default {
            default.clone()
        } else if let Some(p) = prior.and_then(|p| p.get(&attr.name)) {
            p.clone()
        } else {
            Value::unknown()
        };
        out.insert(attr.name.clone(), value);
    }
    for nb in &block.blocks {
        let cfg = config.get(&nb.name).unwrap_or(&Value::Null);
        let pri = prior.and_then(|p| p.get(&nb.name)).filter(|v| !v.is_null());
        let item = |i: usize, c: &Value| {
            let p = match pri {
                Some(Value::List(items)) => items.get(i),
                _ => None,
            };
            draw(&nb.block, c, p)
        };
        let value = match (nb.nesting, cfg) {
            (Nesting::Single, Value::Null) => Value::Null,
            (Nesting::Single | Nesting::Group, c) => draw(&nb.block, c, pri),
            (Nesting::List, Value::List(items)) => {
                Value::List(items.iter().enumerate().map(|(i, c)| item(i, c)).collect())
            }
            (Nesting::Set, Value::Set(items)) => Value::Set(items.iter().map(|c| draw(&nb.block, c, None)).collect()),
            (Nesting::Map, Value::Map(items)) => Value::Map(
                items.iter().map(|(k, c)| (k.clone(), draw(&nb.block, c, pri.and_then(|p| p.get(k))))).collect(),
            ),
            // Terraform wants empty collections, never null, for absent blocks.
            (Nesting::List, _) => Value::List(Vec::new()),
            (Nesting::Set, _) => Value::Set(Vec::new()),
            (Nesting::Map, _) => Value::Map(BTreeMap::new()),
        };
        out.insert(nb.name.clone(), value);
    }
    Value::Object(out)
}

/// Paths of `replaces()` attributes, top level and in single/group
/// blocks, whose planned value differs from the prior one.
fn replacement_paths(block: &Block, prior: &Value, planned: &Value, at: &AttributePath, out: &mut Vec<AttributePath>) {
    for attr in block.attributes.iter().filter(|a| a.requires_replace) {
        let p = prior.get(&attr.name).unwrap_or(&Value::Null);
        let n = planned.get(&attr.name).unwrap_or(&Value::Null);
        if !p.same_as(n) {
            out.push(at.then_attribute(&attr.name));
        }
    }
    for nb in block.blocks.iter().filter(|b| matches!(b.nesting, Nesting::Single | Nesting::Group)) {
        if let (Some(p), Some(n)) = (prior.get(&nb.name), planned.get(&nb.name)) {
            replacement_paths(&nb.block, p, n, &at.then_attribute(&nb.name), out);
        }
    }
}

/// Terraform's rule for plans: a non-computed attribute is planned exactly
/// as configured. Checked after the resource's adjustments.
fn check_planned(block: &Block, config: &Value, planned: &Value, diags: &mut Diagnostics) {
    for attr in block.attributes.iter().filter(|a| !a.is_computed()) {
        let c = config.get(&attr.name).unwrap_or(&Value::Null);
        let p = planned.get(&attr.name).unwrap_or(&Value::Null);
        if !c.same_as(p) {
            diags.push(
                Diagnostic::error("Provider bug: planned value differs from configuration", "")
                    .at(AttributePath::attribute(&attr.name)),
            );
        }
    }
}

/// Makes an apply result consistent with its plan: configured attributes
/// keep the user's values verbatim; a computed attribute planned known
/// must come back the same, and nothing may stay unknown. Violations are
/// reported on the attribute, so Terraform never sees a silent mismatch.
pub(crate) fn reconcile(
    block: &Block,
    planned: &Value,
    actual: &Value,
    at: &AttributePath,
    diags: &mut Diagnostics,
) -> Value {
    let mut out = BTreeMap::new();
    for attr in &block.attributes {
        let p = planned.get(&attr.name).unwrap_or(&Value::Null);
        let a = actual.get(&attr.name).unwrap_or(&Value::Null);
        let path = at.then_attribute(&attr.name);
        let value = if attr.presence == Presence::Required || attr.presence == Presence::Optional {
            p.clone()
        } else if p.is_wholly_known() {
            if !p.same_as(a) {
                diags.push(
                    Diagnostic::error(
                        "Provider bug: apply result differs from the plan",
                        format!("{path} was planned as {p:?} but the provider produced {a:?}"),
                    )
                    .at(path.clone()),
                );
            }
            p.clone()
        } else if a.is_wholly_known() {
            a.clone()
        } else {
            diags.push(
                Diagnostic::error("Provider bug: value left unknown after apply", format!("{path} has no value"))
                    .at(path.clone()),
            );
            a.unknowns_as_null()
        };
        out.insert(attr.name.clone(), value);
    }
    for nb in &block.blocks {
        let p = planned.get(&nb.name).unwrap_or(&Value::Null);
        let a = actual.get(&nb.name).unwrap_or(&Value::Null);
        let path = at.then_attribute(&nb.name);
        let value = match (p, a) {
            (Value::Object(_), Value::Object(_)) => reconcile(&nb.block, p, a, &path, diags),
            (Value::List(ps), Value::List(as_)) if ps.len() == as_.len() => Value::List(
                ps.iter()
                    .zip(as_)
                    .enumerate()
                    .map(|(i, (p, a))| reconcile(&nb.block, p, a, &path.then(PathStep::Index(i as i64)), diags))
                    .collect(),
            ),
            _ if a.is_wholly_known() => a.clone(),
            _ => {
                diags.push(Diagnostic::error("Provider bug: value left unknown after apply", "").at(path));
                a.unknowns_as_null()
            }
        };
        out.insert(nb.name.clone(), value);
    }
    Value::Object(out)
}

fn encode_private<P: serde::Serialize>(private: &P) -> Result<Vec<u8>, Diagnostics> {
    let json =
        serde_json::to_value(private).map_err(|e| Diagnostic::error("Provider bug: private state", e.to_string()))?;
    if json.is_null() {
        return Ok(Vec::new());
    }
    Ok(json.to_string().into_bytes())
}

fn decode_private<P: DeserializeOwned + Default>(bytes: &[u8]) -> Result<P, Diagnostics> {
    if bytes.is_empty() {
        return Ok(P::default());
    }
    serde_json::from_slice(bytes).map_err(|e| {
        Diagnostic::error(
            "Unreadable private state",
            format!("the provider's private data in state does not parse: {e}"),
        )
        .into()
    })
}

/// What the framework hands the service after planning (not for provider code).
#[doc(hidden)]
pub struct PlanOutcome {
    pub planned: Value,
    pub requires_replace: Vec<AttributePath>,
    pub planned_private: Vec<u8>,
    pub diagnostics: Diagnostics,
}

/// What the framework hands the service after apply, read or import (not for provider code).
#[doc(hidden)]
pub struct ApplyOutcome {
    pub new_state: Value,
    pub private: Vec<u8>,
    pub diagnostics: Diagnostics,
}

/// A resource without its types, as the service dispatches to it.
#[async_trait]
pub trait ErasedResource: Send + Sync {
    fn type_name(&self) -> &'static str;
    fn schema(&self) -> Schema;
    fn validate(&self, config: &Config, diags: &mut Diagnostics);
    async fn plan(&self, schema: &Schema, config: &Config, prior: Option<&Value>, prior_private: &[u8]) -> PlanOutcome;
    async fn apply(
        &self,
        schema: &Schema,
        ty: &Type,
        prior: Option<&Value>,
        planned: Option<&Value>,
        planned_private: &[u8],
    ) -> ApplyOutcome;
    async fn read(&self, ty: &Type, current: &Value, private: &[u8]) -> ApplyOutcome;
    async fn import(&self, ty: &Type, id: &str) -> ApplyOutcome;
}

pub(crate) struct Typed<T>(pub T);

#[async_trait]
impl<R: Resource> ErasedResource for Typed<R> {
    fn type_name(&self) -> &'static str {
        self.0.type_name()
    }
    fn schema(&self) -> Schema {
        self.0.schema()
    }
    fn validate(&self, config: &Config, diags: &mut Diagnostics) {
        self.0.validate(config, diags);
    }

    async fn plan(&self, schema: &Schema, config: &Config, prior: Option<&Value>, prior_private: &[u8]) -> PlanOutcome {
        let block = &schema.block;
        let mut plan = Plan {
            block,
            config,
            prior,
            planned: draw(block, config.value(), prior),
            requires_replace: Vec::new(),
            diagnostics: Diagnostics::default(),
        };
        if let Some(prior) = prior {
            replacement_paths(block, prior, &plan.planned, &AttributePath::root(), &mut plan.requires_replace);
        }
        self.0.modify_plan(&mut plan).await;
        check_planned(block, config.value(), &plan.planned, &mut plan.diagnostics);
        PlanOutcome {
            planned: plan.planned,
            requires_replace: plan.requires_replace,
            planned_private: prior_private.to_vec(),
            diagnostics: plan.diagnostics,
        }
    }

    async fn apply(
        &self,
        schema: &Schema,
        ty: &Type,
        prior: Option<&Value>,
        planned: Option<&Value>,
        planned_private: &[u8],
    ) -> ApplyOutcome {
        let mut diagnostics = Diagnostics::default();
        let fail = |prior: Option<&Value>, d: Diagnostics| ApplyOutcome {
            new_state: prior.cloned().unwrap_or(Value::Null),
            private: planned_private.to_vec(),
            diagnostics: d,
        };
        let mut private: R::Private = match decode_private(planned_private) {
            Ok(p) => p,
            Err(d) => return fail(prior, d),
        };
        let Some(planned) = planned else {
            // Destroy.
            let Some(prior) = prior else { return fail(None, Diagnostics::default()) };
            let result = match from_value::<R::State>(prior) {
                Ok(state) => self.0.delete(state, &private).await,
                Err(d) => Err(d),
            };
            return match result {
                Ok(()) => ApplyOutcome { new_state: Value::Null, private: Vec::new(), diagnostics },
                Err(d) => fail(Some(prior), d),
            };
        };
        let typed_planned = match from_value::<R::State>(&planned.unknowns_as_null()) {
            Ok(s) => s,
            Err(d) => return fail(prior, d),
        };
        let result = match prior {
            None => self.0.create(typed_planned, &mut private).await,
            Some(prior_value) => match from_value::<R::State>(prior_value) {
                Ok(p) => self.0.update(p, typed_planned, &mut private).await,
                Err(d) => Err(Failure::from(d)),
            },
        };
        let (state, failure) = match result {
            Ok(state) => (Some(state), None),
            Err(Failure { diagnostics, partial_state }) => (partial_state, Some(diagnostics)),
        };
        let new_state = match state.map(|s| to_value(&s, ty)) {
            // A partial state after a failure says what really exists; made
            // to look like the plan, the failed change would never be retried.
            Some(Ok(v)) if failure.is_some() => v.unknowns_as_null(),
            Some(Ok(v)) => reconcile(&schema.block, planned, &v, &AttributePath::root(), &mut diagnostics),
            Some(Err(d)) => {
                diagnostics.extend(d);
                prior.cloned().unwrap_or(Value::Null)
            }
            None => prior.cloned().unwrap_or(Value::Null),
        };
        if let Some(d) = failure {
            diagnostics.extend(d);
        }
        let private = match encode_private(&private) {
            Ok(p) => p,
            Err(d) => {
                diagnostics.extend(d);
                planned_private.to_vec()
            }
        };
        ApplyOutcome { new_state, private, diagnostics }
    }

    async fn read(&self, ty: &Type, current: &Value, private_bytes: &[u8]) -> ApplyOutcome {
        let unchanged = |d: Diagnostics| ApplyOutcome {
            new_state: current.clone(),
            private: private_bytes.to_vec(),
            diagnostics: d,
        };
        let mut private: R::Private = match decode_private(private_bytes) {
            Ok(p) => p,
            Err(d) => return unchanged(d),
        };
        let state = match from_value::<R::State>(current) {
            Ok(s) => s,
            Err(d) => return unchanged(d),
        };
        match self.0.read(state, &mut private).await {
            Ok(None) => {
                ApplyOutcome { new_state: Value::Null, private: Vec::new(), diagnostics: Diagnostics::default() }
            }
            Ok(Some(s)) => match (to_value(&s, ty), encode_private(&private)) {
                (Ok(v), Ok(p)) => ApplyOutcome { new_state: v, private: p, diagnostics: Diagnostics::default() },
                (Err(d), _) | (_, Err(d)) => unchanged(d),
            },
            Err(d) => unchanged(d),
        }
    }

    async fn import(&self, ty: &Type, id: &str) -> ApplyOutcome {
        let imported = self.0.import(id).await.and_then(|(s, p)| Ok((to_value(&s, ty)?, encode_private(&p)?)));
        match imported {
            Ok((new_state, private)) => ApplyOutcome { new_state, private, diagnostics: Diagnostics::default() },
            Err(diagnostics) => ApplyOutcome { new_state: Value::Null, private: Vec::new(), diagnostics },
        }
    }
}

/// A data source without its types.
#[async_trait]
pub trait ErasedDataSource: Send + Sync {
    fn type_name(&self) -> &'static str;
    fn schema(&self) -> Schema;
    fn validate(&self, config: &Config, diags: &mut Diagnostics);
    async fn read(&self, schema: &Schema, ty: &Type, config: &Value) -> ApplyOutcome;
}

#[async_trait]
impl<D: DataSource> ErasedDataSource for Typed<D> {
    fn type_name(&self) -> &'static str {
        self.0.type_name()
    }
    fn schema(&self) -> Schema {
        self.0.schema()
    }
    fn validate(&self, config: &Config, diags: &mut Diagnostics) {
        self.0.validate(config, diags);
    }
    async fn read(&self, schema: &Schema, ty: &Type, config: &Value) -> ApplyOutcome {
        let mut diagnostics = Diagnostics::default();
        // Computed attributes arrive null; drawn like a create, they are
        // open for the data source to fill and configured ones stay as given.
        let planned = draw(&schema.block, config, None);
        let result = match from_value::<D::State>(&planned.unknowns_as_null()) {
            Ok(c) => self.0.read(c).await.and_then(|s| to_value(&s, ty)),
            Err(d) => Err(d),
        };
        let new_state = match result {
            Ok(v) => reconcile(&schema.block, &planned, &v, &AttributePath::root(), &mut diagnostics),
            Err(d) => {
                diagnostics.extend(d);
                Value::Null
            }
        };
        ApplyOutcome { new_state, private: Vec::new(), diagnostics }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Attribute, NestedBlock};

    fn block() -> Block {
        Block {
            attributes: vec![
                Attribute::required("name", Type::String),
                Attribute::with_default("size", Type::Number, 3).replaces(),
                Attribute::optional("note", Type::String),
                Attribute::computed("id", Type::String),
            ],
            blocks: vec![NestedBlock {
                name: "rule".into(),
                nesting: Nesting::List,
                block: Block { attributes: vec![Attribute::required("port", Type::Number)], ..Block::default() },
                min_items: 0,
                max_items: 0,
            }],
            ..Block::default()
        }
    }

    fn object<const N: usize>(entries: [(&str, Value); N]) -> Value {
        Value::Object(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    fn config(size: Value) -> Value {
        object([
            ("name", "a".into()),
            ("size", size),
            ("note", Value::Null),
            ("id", Value::Null),
            ("rule", Value::Null),
        ])
    }

    #[test]
    fn create_plans_defaults_unknown_computed_and_empty_blocks() {
        let c = config(Value::Null);
        let planned = draw(&block(), &c, None);
        assert_eq!(planned.get("size"), Some(&Value::int(3)));
        assert_eq!(planned.get("note"), Some(&Value::Null));
        assert!(planned.get("id").is_some_and(Value::is_unknown));
        assert_eq!(planned.get("rule"), Some(&Value::List(vec![])));
    }

    #[test]
    fn update_keeps_prior_computed_values_and_marks_replacement() {
        let prior = object([
            ("name", "a".into()),
            ("size", Value::int(3)),
            ("note", Value::Null),
            ("id", "x1".into()),
            ("rule", Value::List(vec![])),
        ]);
        let c = config(Value::int(4));
        let planned = draw(&block(), &c, Some(&prior));
        assert_eq!(planned.get("id"), Some(&Value::string("x1")));
        let mut paths = Vec::new();
        replacement_paths(&block(), &prior, &planned, &AttributePath::root(), &mut paths);
        assert_eq!(paths, [AttributePath::attribute("size")]);
    }

    #[test]
    fn reconcile_keeps_configured_values_and_names_inconsistent_computed_ones() {
        let planned = object([
            ("name", "a".into()),
            ("size", Value::int(3)),
            ("note", Value::Null),
            ("id", "x1".into()),
            ("rule", Value::List(vec![])),
        ]);
        let actual = object([
            ("name", "A".into()),
            ("size", Value::int(3)),
            ("note", Value::Null),
            ("id", "x2".into()),
            ("rule", Value::List(vec![])),
        ]);
        let mut diags = Diagnostics::default();
        let out = reconcile(&block(), &planned, &actual, &AttributePath::root(), &mut diags);
        assert_eq!(out.get("name"), Some(&Value::string("a")), "the user's spelling stays");
        assert_eq!(diags.0.len(), 1);
        assert_eq!(diags.0[0].path, Some(AttributePath::attribute("id")));
    }

    #[test]
    fn reconcile_refuses_values_left_unknown() {
        let planned = object([
            ("name", "a".into()),
            ("size", Value::int(3)),
            ("note", Value::Null),
            ("id", Value::unknown()),
            ("rule", Value::List(vec![])),
        ]);
        let mut diags = Diagnostics::default();
        let out = reconcile(&block(), &planned, &planned, &AttributePath::root(), &mut diags);
        assert!(out.is_wholly_known());
        assert_eq!(diags.0[0].path, Some(AttributePath::attribute("id")));
    }

    #[test]
    fn a_resource_cannot_plan_over_its_configuration() {
        let c = Config::new(config(Value::int(5)));
        let schema_block = block();
        let mut plan = Plan {
            block: &schema_block,
            config: &c,
            prior: None,
            planned: draw(&schema_block, c.value(), None),
            requires_replace: Vec::new(),
            diagnostics: Diagnostics::default(),
        };
        plan.set("size", Value::int(9));
        plan.set("id", "known-early".into());
        assert_eq!(plan.planned("size"), &Value::int(5));
        assert_eq!(plan.planned("id"), &Value::string("known-early"));
        assert_eq!(plan.diagnostics.0.len(), 1);
        assert_eq!(plan.diagnostics.0[0].path, Some(AttributePath::attribute("size")));
    }
}
