//! Registry-style documentation (`docs/index.md`, `docs/resources/*.md`,
//! `docs/functions/*.md`) written from the schemas themselves, so the docs
//! cannot say something the provider does not do.

use std::fmt::Write;
use std::path::PathBuf;
use std::sync::Arc;

use crate::framework::Provider;
use crate::framework::service::Catalog;
use crate::schema::{Attribute, Block, Nesting, Presence, Schema};

/// One file of the docs tree, relative to the docs directory.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub path: PathBuf,
    pub content: String,
}

/// Renders every page. `source_address` is e.g. `trellis/kube`.
pub fn render(provider: Arc<dyn Provider>, source_address: &str) -> Vec<Page> {
    let catalog = Catalog::new(provider);
    let type_name = catalog.provider().type_name();
    let mut pages = Vec::new();

    let mut index = front_matter(&format!("{type_name} Provider"), &catalog.provider_schema().block.description);
    let _ = writeln!(index, "# {type_name} Provider\n\n{}\n", catalog.provider_schema().block.description);
    let _ = writeln!(
        index,
        "## Example Usage\n\n```terraform\nterraform {{\n  required_providers {{\n    {type_name} = {{\n      source = \"{source_address}\"\n    }}\n  }}\n}}\n\nprovider \"{type_name}\" {{}}\n```\n"
    );
    index.push_str(&block_section(&catalog.provider_schema().block, "Schema"));
    pages.push(Page { path: "index.md".into(), content: index });

    schema_pages(&mut pages, catalog.resource_schemas(), type_name, source_address, ("Resource", "resources"));
    schema_pages(&mut pages, catalog.data_source_schemas(), type_name, source_address, ("Data Source", "data-sources"));

    let mut functions: Vec<_> = catalog.functions().collect();
    functions.sort_by_key(|f| f.name());
    for f in functions {
        let def = f.definition();
        let name = f.name();
        let mut page = front_matter(&format!("{name} function - {source_address}"), &def.summary);
        let params: Vec<&str> = def.parameters.iter().map(|p| p.name.as_str()).collect();
        let _ = writeln!(page, "# function: {name}\n\n{}\n\n{}\n", def.summary, def.description);
        let _ = writeln!(
            page,
            "## Signature\n\n```text\n{name}({}) {}\n```\n",
            signature(&def.parameters),
            def.return_type
        );
        let _ = writeln!(
            page,
            "## Example Usage\n\n```terraform\noutput \"example\" {{\n  value = provider::{type_name}::{name}({})\n}}\n```\n",
            params.join(", ")
        );
        let _ = writeln!(page, "## Arguments\n");
        for (i, p) in def.parameters.iter().enumerate() {
            let _ = writeln!(page, "{}. `{}` ({}) {}", i + 1, p.name, p.ty, p.description);
        }
        pages.push(Page { path: format!("functions/{name}.md").into(), content: page });
    }
    pages
}

/// One page per resource or data source type, named without the provider prefix.
fn schema_pages<'a>(
    pages: &mut Vec<Page>,
    schemas: impl Iterator<Item = (&'static str, &'a Schema)>,
    type_name: &str,
    source_address: &str,
    (kind, dir): (&str, &str),
) {
    let mut schemas: Vec<_> = schemas.collect();
    schemas.sort_by_key(|(n, _)| *n);
    for (name, schema) in schemas {
        let mut page = front_matter(&format!("{name} {kind} - {source_address}"), &schema.block.description);
        let _ = writeln!(page, "# {name} ({kind})\n\n{}\n", schema.block.description);
        page.push_str(&block_section(&schema.block, "Schema"));
        let file = name.strip_prefix(&format!("{type_name}_")).unwrap_or(name);
        pages.push(Page { path: format!("{dir}/{file}.md").into(), content: page });
    }
}

fn signature(params: &[crate::framework::Parameter]) -> String {
    params.iter().map(|p| format!("{} {}", p.name, p.ty)).collect::<Vec<_>>().join(", ")
}

fn front_matter(title: &str, description: &str) -> String {
    let first_line = description.lines().next().unwrap_or_default();
    format!("---\npage_title: \"{title}\"\nsubcategory: \"\"\ndescription: |-\n  {first_line}\n---\n\n")
}

fn block_section(block: &Block, heading: &str) -> String {
    let mut out = format!("## {heading}\n\n");
    type Member = fn(&Attribute) -> bool;
    let groups: [(&str, Member); 3] = [
        ("Required", |a| a.presence == Presence::Required),
        ("Optional", |a| matches!(a.presence, Presence::Optional | Presence::OptionalComputed)),
        ("Read-Only", |a| a.presence == Presence::Computed),
    ];
    for (title, member) in groups {
        let attrs: Vec<&Attribute> = block.attributes.iter().filter(|a| member(a)).collect();
        let blocks: Vec<_> = if title == "Optional" { block.blocks.iter().collect() } else { Vec::new() };
        if attrs.is_empty() && blocks.is_empty() {
            continue;
        }
        let _ = writeln!(out, "### {title}\n");
        for a in attrs {
            let sensitive = if a.sensitive { ", Sensitive" } else { "" };
            let _ = writeln!(out, "- `{}` ({}{sensitive}) {}", a.name, type_label(&a.ty), a.full_description());
        }
        for b in blocks {
            let _ = writeln!(out, "- `{}` (Block {}) {}", b.name, nesting_label(b.nesting), b.block.description);
        }
        out.push('\n');
    }
    for b in &block.blocks {
        out.push_str(&block_section(&b.block, &format!("Nested Schema for `{}`", b.name)));
    }
    out
}

fn type_label(ty: &crate::value::Type) -> String {
    use crate::value::Type;
    match ty {
        Type::Bool => "Boolean".into(),
        Type::Number => "Number".into(),
        Type::String => "String".into(),
        Type::Dynamic => "Dynamic".into(),
        Type::List(e) => format!("List of {}", type_label(e)),
        Type::Set(e) => format!("Set of {}", type_label(e)),
        Type::Map(e) => format!("Map of {}", type_label(e)),
        Type::Object(_) => "Object".into(),
        Type::Tuple(_) => "Tuple".into(),
    }
}

fn nesting_label(n: Nesting) -> &'static str {
    match n {
        Nesting::Single | Nesting::Group => "",
        Nesting::List => "List",
        Nesting::Set => "Set",
        Nesting::Map => "Map",
    }
}

/// Writes `pages` under `dir`, or with `check` only compares them. Returns
/// the pages that differ from what is on disk (all written ones when not
/// checking are up to date afterwards, so the list is then empty) and any
/// stray `.md` files the provider no longer renders.
pub fn sync(pages: &[Page], dir: &std::path::Path, check: bool) -> std::io::Result<Vec<PathBuf>> {
    let mut stale = Vec::new();
    for page in pages {
        let path = dir.join(&page.path);
        let current = std::fs::read_to_string(&path).ok();
        if current.as_deref() == Some(page.content.as_str()) {
            continue;
        }
        if check {
            stale.push(path);
        } else {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, &page.content)?;
        }
    }
    let rendered: std::collections::HashSet<PathBuf> = pages.iter().map(|p| dir.join(&p.path)).collect();
    for sub in ["", "resources", "data-sources", "functions"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "md") && !rendered.contains(&path) {
                if check {
                    stale.push(path);
                } else {
                    std::fs::remove_file(&path)?;
                }
            }
        }
    }
    Ok(stale)
}
