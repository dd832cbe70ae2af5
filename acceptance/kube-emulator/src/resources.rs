//! The resource types the emulator serves: Kubernetes' built-in ones that
//! Trellis creates or watches, and custom ones added when a CRD is created.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// One served resource type (one group/version/plural).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// "" for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `/status` subresource: writes to the main resource keep status.
    pub status: bool,
    /// Served by a CRD rather than built in.
    pub custom: bool,
    /// Only ever created, never stored or read back: reviews answer in the response.
    pub create_only: bool,
    /// Has the `/token` subresource that issues a TokenRequest (service accounts).
    pub token_request: bool,
}

/// The kind `/token` answers with, which lives in another group than its parent.
const TOKEN_REQUEST_KIND: (&str, &str, &str) = ("authentication.k8s.io", "v1", "TokenRequest");

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    pub fn group_version(&self) -> (String, String) {
        (self.group.clone(), self.version.clone())
    }

    /// The `/api/v1` or `/apis/<group>/<version>` prefix.
    pub fn path_prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        if self.create_only {
            return vec!["create"];
        }
        vec!["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    }

    /// The entry in an APIResourceList (legacy discovery).
    pub fn discovery_entries(&self) -> Vec<Value> {
        let mut main = json!({
            "name": self.plural, "singularName": self.singular, "namespaced": self.namespaced,
            "kind": self.kind, "verbs": self.verbs(),
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut entries = vec![main];
        if self.status {
            entries.push(json!({
                "name": format!("{}/status", self.plural), "singularName": "", "namespaced": self.namespaced,
                "kind": self.kind, "verbs": ["get", "patch", "update"],
            }));
        }
        if self.token_request {
            let (group, version, kind) = TOKEN_REQUEST_KIND;
            entries.push(json!({
                "name": format!("{}/token", self.plural), "singularName": "", "namespaced": self.namespaced,
                "group": group, "version": version, "kind": kind, "verbs": ["create"],
            }));
        }
        entries
    }

    /// The entry in an aggregated discovery document (apidiscovery.k8s.io).
    pub fn aggregated_entry(&self) -> Value {
        let mut entry = json!({
            "resource": self.plural,
            "responseKind": {"group": self.group, "version": self.version, "kind": self.kind},
            "scope": if self.namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": self.singular,
            "verbs": self.verbs(),
        });
        if !self.short_names.is_empty() {
            entry["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            entry["categories"] = json!(self.categories);
        }
        let mut subresources = Vec::new();
        if self.status {
            subresources.push(json!({
                "subresource": "status",
                "responseKind": {"group": self.group, "version": self.version, "kind": self.kind},
                "verbs": ["get", "patch", "update"],
            }));
        }
        if self.token_request {
            let (group, version, kind) = TOKEN_REQUEST_KIND;
            subresources.push(json!({
                "subresource": "token",
                "responseKind": {"group": group, "version": version, "kind": kind},
                "verbs": ["create"],
            }));
        }
        if !subresources.is_empty() {
            entry["subresources"] = json!(subresources);
        }
        entry
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    status: bool,
    all: bool,
}

/// One row of the table below.
#[allow(clippy::too_many_arguments)]
const fn b(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    status: bool,
    all: bool,
) -> Builtin {
    Builtin { group, version, kind, plural, namespaced, short_names, status, all }
}

/// The built-in types Trellis creates or watches.
const BUILTINS: &[Builtin] = &[
    b("", "v1", "Namespace", "namespaces", false, &["ns"], true, false),
    b("", "v1", "ServiceAccount", "serviceaccounts", true, &["sa"], false, false),
    b("", "v1", "ConfigMap", "configmaps", true, &["cm"], false, false),
    b("", "v1", "Secret", "secrets", true, &[], false, false),
    b("", "v1", "Service", "services", true, &["svc"], true, true),
    b("", "v1", "Endpoints", "endpoints", true, &["ep"], false, false),
    b("", "v1", "Pod", "pods", true, &["po"], true, true),
    b("", "v1", "Node", "nodes", false, &["no"], true, false),
    b("", "v1", "Event", "events", true, &["ev"], false, false),
    b("apps", "v1", "Deployment", "deployments", true, &["deploy"], true, true),
    b("apps", "v1", "DaemonSet", "daemonsets", true, &["ds"], true, true),
    b("apps", "v1", "ReplicaSet", "replicasets", true, &["rs"], true, true),
    b("apps", "v1", "StatefulSet", "statefulsets", true, &["sts"], true, true),
    b("batch", "v1", "Job", "jobs", true, &[], true, true),
    b("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", true, &[], false, false),
    b("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", true, &["netpol"], false, false),
    b("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", true, &["pdb"], true, false),
    b("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false, &[], false, false),
    b("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", false, &[], false, false),
    b("rbac.authorization.k8s.io", "v1", "Role", "roles", true, &[], false, false),
    b("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", true, &[], false, false),
    b(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        &["crd", "crds"],
        true,
        false,
    ),
    b(
        "admissionregistration.k8s.io",
        "v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        false,
        &[],
        false,
        false,
    ),
    b(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        false,
        &[],
        false,
        false,
    ),
    b("coordination.k8s.io", "v1", "Lease", "leases", true, &[], false, false),
    b("authentication.k8s.io", "v1", "TokenReview", "tokenreviews", false, &[], false, false),
    b("authentication.k8s.io", "v1", "SelfSubjectReview", "selfsubjectreviews", false, &[], false, false),
    b("authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", false, &[], false, false),
    b("authorization.k8s.io", "v1", "SelfSubjectRulesReview", "selfsubjectrulesreviews", false, &[], false, false),
    b("authorization.k8s.io", "v1", "SubjectAccessReview", "subjectaccessreviews", false, &[], false, false),
    b("authorization.k8s.io", "v1", "LocalSubjectAccessReview", "localsubjectaccessreviews", true, &[], false, false),
];

/// The registry of served types, keyed by (group, version, plural).
#[derive(Debug, Clone)]
pub struct Registry {
    types: BTreeMap<(String, String, String), ResourceType>,
}

impl Default for Registry {
    fn default() -> Self {
        let types = BUILTINS
            .iter()
            .map(|t| {
                let rt = ResourceType {
                    group: t.group.into(),
                    version: t.version.into(),
                    kind: t.kind.into(),
                    plural: t.plural.into(),
                    singular: t.kind.to_lowercase(),
                    namespaced: t.namespaced,
                    short_names: t.short_names.iter().map(|s| (*s).to_owned()).collect(),
                    categories: if t.all { vec!["all".into()] } else { Vec::new() },
                    status: t.status,
                    custom: false,
                    // authentication.k8s.io and authorization.k8s.io hold only
                    // reviews, which are never stored.
                    create_only: ["authentication.k8s.io", "authorization.k8s.io"].contains(&t.group),
                    token_request: t.kind == "ServiceAccount",
                };
                ((rt.group.clone(), rt.version.clone(), rt.plural.clone()), rt)
            })
            .collect();
        Registry { types }
    }
}

impl Registry {
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types.get(&(group.to_owned(), version.to_owned(), plural.to_owned()))
    }

    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.types.values().find(|t| t.api_version() == api_version && t.kind == kind)
    }

    pub fn all(&self) -> impl Iterator<Item = &ResourceType> {
        self.types.values()
    }

    /// Group/versions in the order discovery lists them (core first).
    pub fn group_versions(&self) -> Vec<(String, String)> {
        let mut gvs: Vec<(String, String)> = self.types.values().map(ResourceType::group_version).collect();
        gvs.dedup();
        gvs.sort_by(|a, b| (!a.0.is_empty(), &a.0, &a.1).cmp(&(!b.0.is_empty(), &b.0, &b.1)));
        gvs.dedup();
        gvs
    }

    pub fn in_group_version<'a>(&'a self, group: &'a str, version: &'a str) -> impl Iterator<Item = &'a ResourceType> {
        self.types.values().filter(move |t| t.group == group && t.version == version)
    }

    /// Registers the served versions of a CRD; returns what it added.
    pub fn register_crd(&mut self, crd: &Value) -> Result<Vec<ResourceType>, String> {
        let types = crd_types(crd)?;
        for t in &types {
            self.types.insert((t.group.clone(), t.version.clone(), t.plural.clone()), t.clone());
        }
        Ok(types)
    }

    #[cfg(test)]
    pub fn unregister(&mut self, rt: &ResourceType) {
        self.types.remove(&(rt.group.clone(), rt.version.clone(), rt.plural.clone()));
    }

    pub fn unregister_crd(&mut self, crd: &Value) {
        if let Ok(types) = crd_types(crd) {
            for t in types {
                self.types.remove(&(t.group, t.version, t.plural));
            }
        }
    }
}

fn crd_types(crd: &Value) -> Result<Vec<ResourceType>, String> {
    let spec = crd.get("spec").ok_or("spec: Required value")?;
    let text = |v: &Value, field: &str| v.get(field).and_then(Value::as_str).map(str::to_owned);
    let group = text(spec, "group").ok_or("spec.group: Required value")?;
    let names = spec.get("names").ok_or("spec.names: Required value")?;
    let plural = text(names, "plural").ok_or("spec.names.plural: Required value")?;
    let kind = text(names, "kind").ok_or("spec.names.kind: Required value")?;
    let singular = text(names, "singular").unwrap_or_else(|| kind.to_lowercase());
    let list = |field: &str| -> Vec<String> {
        names
            .get(field)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let namespaced = text(spec, "scope").as_deref() != Some("Cluster");
    let versions = spec.get("versions").and_then(Value::as_array).ok_or("spec.versions: Required value")?;
    let served: Vec<ResourceType> = versions
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(false))
        .filter_map(|v| {
            Some(ResourceType {
                group: group.clone(),
                version: text(v, "name")?,
                kind: kind.clone(),
                plural: plural.clone(),
                singular: singular.clone(),
                namespaced,
                short_names: list("shortNames"),
                categories: list("categories"),
                status: v.pointer("/subresources/status").is_some(),
                custom: true,
                create_only: false,
                token_request: false,
            })
        })
        .collect();
    if served.is_empty() {
        return Err("spec.versions: Invalid value: must have exactly one version marked as storage version".into());
    }
    Ok(served)
}
