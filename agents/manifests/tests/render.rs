//! What every rendered object must be, whatever the settings, and which settings are refused.

mod support;

use std::collections::BTreeSet;

use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, policy::v1 as policy, rbac::v1 as rbac};
use serde_json::Value;
use trellis_manifests::node_agent::{self, IpamMode, LoadBalancerAlgorithm, PolicyEnforcement, RenderError, Settings};
use trellis_manifests::{MANAGED_BY, MANAGED_BY_LABEL, OWNER_LABEL, object_key};

use support::base;

fn cluster_pool() -> Settings {
    let mut settings = base();
    settings.ipam.mode = IpamMode::ClusterPool;
    settings.ipam.cluster_pool_cidr = Some("10.244.0.0/16".into());
    settings
}

fn some_variants() -> Vec<Settings> {
    let mut elsewhere = base();
    elsewhere.namespace = "networking".into();
    elsewhere.operator_replicas = 1;
    elsewhere.operator_role_arn = Some("arn:aws:iam::123456789012:role/op".into());
    vec![base(), cluster_pool(), elsewhere]
}

/// Parses as its k8s-openapi type and serializes back to the same JSON: no misspelt or
/// unknown field can reach the API server.
fn round_trips<T: serde::de::DeserializeOwned + serde::Serialize>(object: &Value) {
    let typed: T = serde_json::from_value(object.clone()).unwrap_or_else(|e| panic!("{}: {e}", object_key(object)));
    let back = serde_json::to_value(&typed).expect("serializes");
    assert_eq!(&back, object, "{} does not survive its own type", object_key(object));
}

#[test]
fn every_object_is_its_kubernetes_type_labelled_as_trellis_owned() {
    for settings in some_variants() {
        let objects = node_agent::render(&settings).expect("renders");
        let keys: BTreeSet<String> = objects.iter().map(object_key).collect();
        assert_eq!(keys.len(), objects.len(), "duplicate objects: {keys:?}");
        for object in &objects {
            let kind = object["kind"].as_str().unwrap_or_default();
            match kind {
                "ServiceAccount" => round_trips::<core::ServiceAccount>(object),
                "ClusterRole" => round_trips::<rbac::ClusterRole>(object),
                "ClusterRoleBinding" => round_trips::<rbac::ClusterRoleBinding>(object),
                "DaemonSet" => round_trips::<apps::DaemonSet>(object),
                "Deployment" => round_trips::<apps::Deployment>(object),
                "PodDisruptionBudget" => round_trips::<policy::PodDisruptionBudget>(object),
                other => panic!("unexpected kind {other}"),
            }
            let namespaced = !kind.starts_with("Cluster");
            let namespace = object.pointer("/metadata/namespace").and_then(Value::as_str);
            assert_eq!(namespace, namespaced.then_some(settings.namespace.as_str()), "{}", object_key(object));
            let labels = &object["metadata"]["labels"];
            assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
            assert_eq!(labels[OWNER_LABEL], settings.owner.as_str());
            assert_eq!(labels["app.kubernetes.io/part-of"], "trellis");
        }
    }
}

#[test]
fn the_operator_runs_only_in_eni_mode_and_its_budget_only_with_replicas_to_spare() {
    let kinds = |settings: &Settings| -> Vec<String> {
        node_agent::render(settings).expect("renders").iter().map(object_key).collect()
    };
    let eni = kinds(&base());
    assert_eq!(
        eni,
        [
            "/v1/ServiceAccount/kube-system/trellis-agent",
            "/v1/ServiceAccount/kube-system/trellis-operator",
            "rbac.authorization.k8s.io/v1/ClusterRole//trellis-agent",
            "rbac.authorization.k8s.io/v1/ClusterRole//trellis-operator",
            "rbac.authorization.k8s.io/v1/ClusterRoleBinding//trellis-agent",
            "rbac.authorization.k8s.io/v1/ClusterRoleBinding//trellis-operator",
            "apps/v1/DaemonSet/kube-system/trellis-agent",
            "apps/v1/Deployment/kube-system/trellis-operator",
            "policy/v1/PodDisruptionBudget/kube-system/trellis-operator",
        ]
    );
    assert!(!kinds(&Settings { operator_replicas: 1, ..base() }).iter().any(|k| k.contains("PodDisruptionBudget")));
    let pool = kinds(&cluster_pool());
    assert!(pool.iter().all(|k| !k.contains("operator")), "{pool:?}");
    assert!(pool.iter().any(|k| k.contains("DaemonSet")), "{pool:?}");
}

#[test]
fn the_rbac_reads_and_patches_only_nodes() {
    let objects = node_agent::render(&base()).expect("renders");
    for role in objects.iter().filter(|o| o["kind"] == "ClusterRole") {
        for rule in role["rules"].as_array().expect("rules") {
            let verbs: Vec<&str> = rule["verbs"].as_array().expect("verbs").iter().filter_map(Value::as_str).collect();
            let resources: Vec<&str> =
                rule["resources"].as_array().expect("resources").iter().filter_map(Value::as_str).collect();
            assert!(!verbs.contains(&"*") && !resources.contains(&"*"), "{rule}");
            for verb in verbs.iter().filter(|v| !matches!(**v, "get" | "list" | "watch")) {
                assert_eq!((*verb, resources.as_slice()), ("patch", ["nodes"].as_slice()), "{}", object_key(role));
            }
        }
    }
    let binding = objects.iter().find(|o| o["kind"] == "ClusterRoleBinding").expect("a binding");
    assert_eq!(binding["subjects"][0]["namespace"], "kube-system");
}

#[test]
fn the_role_arn_annotates_only_the_operators_service_account() {
    let arn = "arn:aws:iam::123456789012:role/op";
    let settings = Settings { operator_role_arn: Some(arn.into()), ..base() };
    let objects = node_agent::render(&settings).expect("renders");
    let annotated: Vec<String> = objects
        .iter()
        .filter(|o| o["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == arn)
        .map(object_key)
        .collect();
    assert_eq!(annotated, ["/v1/ServiceAccount/kube-system/trellis-operator"]);
}

#[test]
fn images_are_pulled_by_digest_when_there_is_one() {
    let mut settings = base();
    assert_eq!(settings.image.reference(), format!("ghcr.io/trellis/trellis-agent:{}", env!("CARGO_PKG_VERSION")));
    let digest = format!("sha256:{}", "0f".repeat(32));
    settings.image.digest = Some(digest.clone());
    let text = serde_json::to_string(&node_agent::render(&settings).expect("renders")).expect("JSON");
    assert!(text.contains(&format!("\"ghcr.io/trellis/trellis-agent@{digest}\"")));
    assert!(!text.contains(&format!("trellis-agent:{}", env!("CARGO_PKG_VERSION"))));
}

#[test]
fn a_bad_setting_is_refused_by_its_name() {
    let refused = |change: &dyn Fn(&mut Settings)| -> String {
        let mut settings = base();
        change(&mut settings);
        match node_agent::render(&settings) {
            Err(error @ RenderError::Invalid { .. }) => {
                let setting = error.setting().expect("names a setting").to_owned();
                assert!(error.to_string().starts_with(&format!("{setting}: ")), "{error}");
                setting
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    };
    fn pool(cidr: Option<&'static str>) -> impl Fn(&mut Settings) {
        move |s: &mut Settings| {
            s.ipam.mode = IpamMode::ClusterPool;
            s.ipam.cluster_pool_cidr = cidr.map(str::to_owned);
        }
    }
    type Change = Box<dyn Fn(&mut Settings)>;
    let cases: Vec<(&str, Change)> = vec![
        ("log_level", Box::new(|s| s.log_level = "loud".into())),
        ("log_level", Box::new(|s| s.log_level = "WARN".into())),
        ("operator_replicas", Box::new(|s| s.operator_replicas = 0)),
        ("operator_replicas", Box::new(|s| s.operator_replicas = -1)),
        ("ipam.cluster_pool_cidr", Box::new(pool(None))),
        ("ipam.cluster_pool_cidr", Box::new(pool(Some("10.0.0.0/33")))),
        ("ipam.cluster_pool_cidr", Box::new(pool(Some("pods")))),
        ("ipam.cluster_pool_cidr", Box::new(pool(Some("fd00::/64")))),
        ("ipam.cluster_pool_cidr", Box::new(pool(Some("10.244.1.7/16")))),
        ("owner", Box::new(|s| s.owner.clear())),
        ("owner", Box::new(|s| s.owner = "a/b".into())),
        ("namespace", Box::new(|s| s.namespace = "Kube_System".into())),
        ("cluster_name", Box::new(|s| s.cluster_name.clear())),
        ("region", Box::new(|s| s.region.clear())),
        ("aws_endpoint", Box::new(|s| s.aws_endpoint = Some("127.0.0.1:5000".into()))),
        ("image.repository", Box::new(|s| s.image.repository = "ghcr.io/x@sha256:00".into())),
        ("image.tag", Box::new(|s| s.image.tag = "1.0 beta".into())),
        ("image.digest", Box::new(|s| s.image.digest = Some("sha256:xyz".into()))),
        ("ipam.first_interface_index", Box::new(|s| s.ipam.first_interface_index = 2)),
        ("ipam.subnet_ids[1]", Box::new(|s| s.ipam.subnet_ids = vec!["subnet-1".into(), String::new()])),
        ("ipam.subnet_tags", Box::new(|s| s.ipam.subnet_tags = [("a=b".into(), "c".into())].into())),
        ("ipam.security_group_ids[0]", Box::new(|s| s.ipam.security_group_ids = vec!["sg 1".into()])),
        (
            "agent_resources.requests.memory",
            Box::new(|s| {
                s.agent_resources.requests.insert("memory".into(), "lots".into());
            }),
        ),
        (
            "operator_resources.limits.cpu",
            Box::new(|s| {
                s.operator_resources.limits.insert("cpu".into(), "1.5 cores".into());
            }),
        ),
        ("operator_role_arn", Box::new(|s| s.operator_role_arn = Some("trellis-operator".into()))),
        ("k8s_service_host", Box::new(|s| s.k8s_service_host = Some("https://api.example".into()))),
        ("k8s_service_port", Box::new(|s| s.k8s_service_port = 0)),
    ];
    for (setting, change) in &cases {
        assert_eq!(refused(change.as_ref()), *setting);
    }
    // What only the operator reads is not required when there is no operator.
    let mut pool_only = Settings { cluster_name: String::new(), region: String::new(), ..base() };
    pool(Some("10.244.0.0/16"))(&mut pool_only);
    node_agent::render(&pool_only).expect("cluster-pool needs no cluster name or region");
}

#[test]
fn settings_read_from_json_take_the_defaults_for_what_they_leave_out() {
    let settings: Settings = serde_json::from_value(serde_json::json!({
        "owner": "o",
        "cluster_name": "c",
        "region": "r",
        "ipam": {"mode": "cluster-pool", "cluster_pool_cidr": "10.0.0.0/16"},
        "load_balancer": {"algorithm": "random"},
        "policy_enforcement": "never",
    }))
    .expect("settings");
    assert_eq!(settings.ipam.mode, IpamMode::ClusterPool);
    assert_eq!(settings.load_balancer.algorithm, LoadBalancerAlgorithm::Random);
    assert_eq!(settings.policy_enforcement, PolicyEnforcement::Never);
    assert!(settings.kube_proxy_replacement && settings.flow_observability);
    assert_eq!((settings.namespace.as_str(), settings.operator_replicas), ("kube-system", 2));
    assert!(settings.ipam.prefix_delegation);
    assert!(serde_json::from_value::<Settings>(serde_json::json!({"bogus": 1})).is_err());
}
