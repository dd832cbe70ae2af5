//! Schemas for the provider block, resources and data sources: what
//! Terraform shows and checks, plus what the framework needs to plan
//! (defaults, replacement triggers, validators) and to write docs.

use std::collections::BTreeMap;

use crate::diag::{AttributePath, Diagnostic, Diagnostics, PathStep};
use crate::proto::tfplugin5 as pb;
use crate::value::{Type, Value};

/// A resource's, data source's or the provider's schema.
#[derive(Debug, Clone)]
pub struct Schema {
    /// Bumped when stored state needs upgrading.
    pub version: i64,
    pub block: Block,
}

#[derive(Debug, Clone, Default)]
pub struct Block {
    pub description: String,
    pub attributes: Vec<Attribute>,
    pub blocks: Vec<NestedBlock>,
    pub deprecated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Required,
    Optional,
    /// Set by the user or, when left out, by the provider.
    OptionalComputed,
    Computed,
}

#[derive(Debug, Clone)]
pub struct Attribute {
    pub name: String,
    pub ty: Type,
    pub description: String,
    pub presence: Presence,
    pub sensitive: bool,
    pub deprecated: bool,
    /// Planned when the configuration leaves the attribute out; only for
    /// `OptionalComputed` attributes.
    pub default: Option<Value>,
    /// A change of this attribute replaces the object.
    pub requires_replace: bool,
    pub validators: Vec<Validator>,
}

impl Attribute {
    fn new(name: &str, ty: Type, presence: Presence) -> Self {
        Attribute {
            name: name.to_owned(),
            ty,
            description: String::new(),
            presence,
            sensitive: false,
            deprecated: false,
            default: None,
            requires_replace: false,
            validators: Vec::new(),
        }
    }
    pub fn required(name: &str, ty: Type) -> Self {
        Attribute::new(name, ty, Presence::Required)
    }
    pub fn optional(name: &str, ty: Type) -> Self {
        Attribute::new(name, ty, Presence::Optional)
    }
    pub fn computed(name: &str, ty: Type) -> Self {
        Attribute::new(name, ty, Presence::Computed)
    }
    /// Optional with a default the provider plans when the attribute is left out.
    pub fn with_default(name: &str, ty: Type, default: impl Into<Value>) -> Self {
        let mut a = Attribute::new(name, ty, Presence::OptionalComputed);
        a.default = Some(default.into());
        a
    }
    pub fn describe(mut self, description: &str) -> Self {
        self.description = description.to_owned();
        self
    }
    pub fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }
    pub fn replaces(mut self) -> Self {
        self.requires_replace = true;
        self
    }
    pub fn validate(mut self, v: Validator) -> Self {
        self.validators.push(v);
        self
    }
    pub fn is_computed(&self) -> bool {
        matches!(self.presence, Presence::Computed | Presence::OptionalComputed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nesting {
    Single,
    Group,
    List,
    Set,
    Map,
}

#[derive(Debug, Clone)]
pub struct NestedBlock {
    pub name: String,
    pub nesting: Nesting,
    pub block: Block,
    pub min_items: i64,
    pub max_items: i64,
}

/// A check on a known, non-null attribute value. Unknown values are never
/// checked: they may arrive during validation and are checked again once
/// known.
#[derive(Debug, Clone)]
pub enum Validator {
    OneOf(&'static [&'static str]),
    NotEmpty,
    /// Inclusive integer range.
    IntegerBetween(i64, i64),
    Custom {
        description: &'static str,
        check: fn(&Value) -> Result<(), String>,
    },
}

impl Validator {
    /// The rule in words, for the docs and for the diagnostic.
    pub fn description(&self) -> String {
        match self {
            Validator::OneOf(options) => {
                let quoted: Vec<String> = options.iter().map(|o| format!("`{o}`")).collect();
                format!("one of {}", quoted.join(", "))
            }
            Validator::NotEmpty => "non-empty".to_owned(),
            Validator::IntegerBetween(lo, hi) => format!("a whole number from {lo} to {hi}"),
            Validator::Custom { description, .. } => (*description).to_owned(),
        }
    }

    fn check(&self, value: &Value) -> Result<(), String> {
        match (self, value) {
            (Validator::OneOf(options), Value::String(s)) if !options.contains(&s.as_str()) => {
                Err(format!("{s:?} is not {}", self.description()))
            }
            (Validator::NotEmpty, Value::String(s)) if s.trim().is_empty() => Err("must not be empty".into()),
            (Validator::IntegerBetween(lo, hi), Value::Number(n)) => match n.as_i64() {
                Some(i) if (*lo..=*hi).contains(&i) => Ok(()),
                _ => Err(format!("{n} is not {}", self.description())),
            },
            (Validator::Custom { check, .. }, v) => check(v),
            _ => Ok(()),
        }
    }
}

impl Block {
    /// The object type values of this block have.
    pub fn implied_type(&self) -> Type {
        let mut attrs: BTreeMap<String, Type> =
            self.attributes.iter().map(|a| (a.name.clone(), a.ty.clone())).collect();
        for nb in &self.blocks {
            let inner = nb.block.implied_type();
            let ty = match nb.nesting {
                Nesting::Single | Nesting::Group => inner,
                Nesting::List => Type::list(inner),
                Nesting::Set => Type::set(inner),
                Nesting::Map => Type::map(inner),
            };
            attrs.insert(nb.name.clone(), ty);
        }
        Type::Object(attrs)
    }

    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }

    /// Runs every attribute's validators over a configuration value,
    /// recursing into nested blocks, and reports each failure on its path.
    pub fn validate(&self, config: &Value, path: &AttributePath, diags: &mut Diagnostics) {
        for attr in &self.attributes {
            let Some(v) = config.get(&attr.name) else { continue };
            if v.is_null() || !v.is_wholly_known() {
                continue;
            }
            for validator in &attr.validators {
                if let Err(message) = validator.check(v) {
                    diags.push(
                        Diagnostic::error(format!("Invalid value for {}", attr.name), message)
                            .at(path.then_attribute(&attr.name)),
                    );
                }
            }
        }
        for nb in &self.blocks {
            let at = path.then_attribute(&nb.name);
            match config.get(&nb.name) {
                Some(Value::Object(_)) => {
                    if let Some(v) = config.get(&nb.name) {
                        nb.block.validate(v, &at, diags);
                    }
                }
                Some(Value::List(items)) | Some(Value::Set(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        let step =
                            if nb.nesting == Nesting::List { at.then(PathStep::Index(i as i64)) } else { at.clone() };
                        nb.block.validate(item, &step, diags);
                    }
                }
                Some(Value::Map(items)) => {
                    for (k, item) in items {
                        nb.block.validate(item, &at.then(PathStep::Key(k.clone())), diags);
                    }
                }
                _ => {}
            }
        }
    }

    pub(crate) fn to_proto(&self) -> pb::schema::Block {
        pb::schema::Block {
            version: 0,
            attributes: self.attributes.iter().map(Attribute::to_proto).collect(),
            block_types: self.blocks.iter().map(NestedBlock::to_proto).collect(),
            description: self.description.clone(),
            description_kind: pb::StringKind::Markdown as i32,
            deprecated: self.deprecated,
        }
    }
}

/// A default as it would be written in a configuration.
fn hcl(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_owned(),
        Value::List(items) | Value::Set(items) | Value::Tuple(items) => {
            format!("[{}]", items.iter().map(hcl).collect::<Vec<_>>().join(", "))
        }
        Value::Map(entries) | Value::Object(entries) => {
            let entries: Vec<String> = entries.iter().map(|(k, v)| format!("{k} = {}", hcl(v))).collect();
            if entries.is_empty() { "{}".to_owned() } else { format!("{{ {} }}", entries.join(", ")) }
        }
        Value::Dynamic(_, inner) => hcl(inner),
        Value::Unknown(_) => "(known after apply)".to_owned(),
    }
}

impl Attribute {
    /// The description Terraform and the docs show, with the rules the
    /// value must follow and its default appended.
    pub fn full_description(&self) -> String {
        let mut text = self.description.clone();
        let rules: Vec<String> = self.validators.iter().map(Validator::description).collect();
        if !rules.is_empty() {
            text.push_str(&format!(" Must be {}.", rules.join(" and ")));
        }
        if let Some(d) = &self.default {
            text.push_str(&format!(" Defaults to `{}`.", hcl(d)));
        }
        if self.requires_replace {
            text.push_str(" Changing it replaces the resource.");
        }
        text.trim().to_owned()
    }

    fn to_proto(&self) -> pb::schema::Attribute {
        pb::schema::Attribute {
            name: self.name.clone(),
            r#type: self.ty.to_json_bytes(),
            description: self.full_description(),
            required: self.presence == Presence::Required,
            optional: matches!(self.presence, Presence::Optional | Presence::OptionalComputed),
            computed: self.is_computed(),
            sensitive: self.sensitive,
            description_kind: pb::StringKind::Markdown as i32,
            deprecated: self.deprecated,
            write_only: false,
        }
    }
}

impl NestedBlock {
    fn to_proto(&self) -> pb::schema::NestedBlock {
        use pb::schema::nested_block::NestingMode;
        pb::schema::NestedBlock {
            type_name: self.name.clone(),
            block: Some(self.block.to_proto()),
            nesting: match self.nesting {
                Nesting::Single => NestingMode::Single,
                Nesting::Group => NestingMode::Group,
                Nesting::List => NestingMode::List,
                Nesting::Set => NestingMode::Set,
                Nesting::Map => NestingMode::Map,
            } as i32,
            min_items: self.min_items,
            max_items: self.max_items,
        }
    }
}

impl Schema {
    pub(crate) fn to_proto(&self) -> pb::Schema {
        let mut block = self.block.to_proto();
        block.version = self.version;
        pb::Schema { version: self.version, block: Some(block) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> Block {
        Block {
            attributes: vec![
                Attribute::with_default("algorithm", Type::String, "ECDSA_P256")
                    .validate(Validator::OneOf(&["ECDSA_P256", "ED25519"])),
                Attribute::required("hours", Type::Number).validate(Validator::IntegerBetween(1, 10)),
            ],
            blocks: vec![NestedBlock {
                name: "rule".into(),
                nesting: Nesting::List,
                block: Block {
                    attributes: vec![Attribute::required("name", Type::String).validate(Validator::NotEmpty)],
                    ..Block::default()
                },
                min_items: 0,
                max_items: 0,
            }],
            ..Block::default()
        }
    }

    #[test]
    fn validators_report_on_the_attribute_path_and_skip_unknowns() {
        let config = Value::Object(
            [
                ("algorithm".to_owned(), Value::string("RSA")),
                ("hours".to_owned(), Value::unknown()),
                ("rule".to_owned(), Value::List(vec![Value::Object([("name".to_owned(), Value::string(" "))].into())])),
            ]
            .into(),
        );
        let mut diags = Diagnostics::default();
        block().validate(&config, &AttributePath::root(), &mut diags);
        let paths: Vec<String> = diags.iter().filter_map(|d| d.path.as_ref()).map(ToString::to_string).collect();
        assert_eq!(paths, ["algorithm", "rule[0].name"]);
        assert!(diags.0[0].detail.contains("\"RSA\" is not one of `ECDSA_P256`, `ED25519`"));
    }

    #[test]
    fn implied_type_includes_nested_blocks() {
        let ty = block().implied_type().to_json().to_string();
        assert_eq!(
            ty,
            r#"["object",{"algorithm":"string","hours":"number","rule":["list",["object",{"name":"string"}]]}]"#
        );
    }
}
