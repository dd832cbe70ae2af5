//! Authentication and RBAC through the `kube` crate, as an agent on EKS
//! meets them: its service account token from TokenRequest, the roles and
//! bindings an installer creates, the apiserver's 401 and 403, and the
//! admin token that may do anything.

mod common;

use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{LocalSubjectAccessReview, SubjectAccessReview};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Resource};
use kube_emulator::{Emulator, Options};
use serde_json::{Value, json};

const AGENT_NS: &str = "kube-system";
const AGENT: &str = "trellis-agent";
const AGENT_USER: &str = "system:serviceaccount:kube-system:trellis-agent";
const HOUR: Duration = Duration::from_secs(3600);

/// An emulator with namespace `team` and service account
/// kube-system/trellis-agent; an admin client; and a client acting as
/// the service account, with a token from TokenRequest.
async fn setup() -> (Emulator, Client, Client) {
    let emulator = common::emulator(Options::default()).await;
    let admin = common::client(&emulator).await;
    create::<Namespace>(&admin, None, json!({"metadata": {"name": "team"}})).await;
    create::<ServiceAccount>(&admin, Some(AGENT_NS), json!({"metadata": {"name": AGENT}})).await;
    let request = TokenRequest { spec: Some(TokenRequestSpec::default()), ..TokenRequest::default() };
    let issued = Api::<ServiceAccount>::namespaced(admin.clone(), AGENT_NS)
        .create_token_request(AGENT, &PostParams::default(), &request)
        .await
        .expect("token request");
    let token = issued.status.and_then(|s| s.token).expect("token");
    let agent = common::client_with_token(&emulator, &token).await;
    (emulator, admin, agent)
}

/// Creates an object of type `K` given as JSON, in `namespace` if it has one.
async fn create<K: Resource<DynamicType = ()>>(client: &Client, namespace: Option<&str>, object: Value) {
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let object: DynamicObject = serde_json::from_value(object).expect("object");
    api.create(&PostParams::default(), &object).await.unwrap_or_else(|e| panic!("creating a {}: {e}", resource.kind));
}

async fn cluster_role(client: &Client, name: &str, rules: Value) {
    create::<ClusterRole>(client, None, json!({"metadata": {"name": name}, "rules": rules})).await;
}

/// Binds a role to the agent: with a ClusterRoleBinding without a
/// namespace, else with a RoleBinding in it.
async fn bind_agent(client: &Client, name: &str, namespace: Option<&str>, role_kind: &str, role: &str) {
    let binding = json!({"metadata": {"name": name},
        "subjects": [{"kind": "ServiceAccount", "name": AGENT, "namespace": AGENT_NS}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role}});
    match namespace {
        Some(ns) => create::<RoleBinding>(client, Some(ns), binding).await,
        None => create::<ClusterRoleBinding>(client, None, binding).await,
    }
}

async fn pod(client: &Client, namespace: &str, name: &str) {
    let pod = json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
    create::<Pod>(client, Some(namespace), pod).await;
}

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).expect("config map")
}

/// The message of a 403, after checking its code, reason and details
/// (the plural, and the name the request named) are the apiserver's.
fn forbidden(e: &kube::Error, kind: &str, name: &str) -> String {
    let kube::Error::Api(status) = e else { panic!("expected a Status, got {e:?}") };
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"), "{status:?}");
    let details = status.details.as_ref().expect("details");
    assert_eq!((details.kind.as_str(), details.name.as_str()), (kind, name), "{status:?}");
    status.message.clone()
}

#[tokio::test]
async fn a_cluster_role_to_list_pods_lists_them_everywhere_and_nothing_else() {
    let (emulator, admin, agent) = setup().await;
    cluster_role(&admin, "pod-lister", json!([{"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}])).await;
    bind_agent(&admin, "agent-pods", None, "ClusterRole", "pod-lister").await;
    pod(&admin, "team", "p").await;

    assert_eq!(Api::<Pod>::all(agent.clone()).list(&ListParams::default()).await.expect("list all").items.len(), 1);
    Api::<Pod>::namespaced(agent.clone(), "team").list(&ListParams::default()).await.expect("list in team");

    let nodes: Api<Node> = Api::all(agent.clone());
    let get = nodes.get("node-1").await.expect_err("may not get nodes");
    assert_eq!(
        forbidden(&get, "nodes", "node-1"),
        format!(
            "nodes \"node-1\" is forbidden: User \"{AGENT_USER}\" cannot get resource \"nodes\" in API group \"\" at the cluster scope"
        )
    );
    let list = nodes.list(&ListParams::default()).await.expect_err("may not list nodes");
    assert_eq!(
        forbidden(&list, "nodes", ""),
        format!(
            "nodes is forbidden: User \"{AGENT_USER}\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
        )
    );
    let one = Api::<Pod>::namespaced(agent, "team").get("p").await.expect_err("list is not get");
    assert_eq!(
        forbidden(&one, "pods", "p"),
        format!(
            "pods \"p\" is forbidden: User \"{AGENT_USER}\" cannot get resource \"pods\" in API group \"\" in the namespace \"team\""
        )
    );

    // The admin token is a superuser whatever the bindings say, as system:masters is.
    Api::<Node>::all(admin.clone()).get("node-1").await.expect("admin gets nodes");
    Api::<ClusterRoleBinding>::all(admin.clone())
        .delete("cluster-admin", &DeleteParams::default())
        .await
        .expect("unbind");
    Api::<Node>::all(admin).get("node-1").await.expect("still a superuser");
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_role_binding_to_a_cluster_role_grants_it_in_its_namespace_only() {
    let (emulator, admin, agent) = setup().await;
    cluster_role(&admin, "cm-editor", json!([{"verbs": ["*"], "apiGroups": [""], "resources": ["configmaps"]}])).await;
    bind_agent(&admin, "agent-cms", Some("team"), "ClusterRole", "cm-editor").await;
    let pp = PostParams::default();
    let team: Api<ConfigMap> = Api::namespaced(agent.clone(), "team");
    team.create(&pp, &config_map("c")).await.expect("create in team");
    team.delete("c", &DeleteParams::default()).await.expect("delete in team");

    let default: Api<ConfigMap> = Api::namespaced(agent.clone(), "default");
    let elsewhere = default.create(&pp, &config_map("c")).await.expect_err("in default");
    assert_eq!(
        forbidden(&elsewhere, "configmaps", ""),
        format!(
            "configmaps is forbidden: User \"{AGENT_USER}\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"default\""
        )
    );
    let everywhere = Api::<ConfigMap>::all(agent).list(&ListParams::default()).await.expect_err("across namespaces");
    assert!(
        forbidden(&everywhere, "configmaps", "")
            .ends_with("cannot list resource \"configmaps\" in API group \"\" at the cluster scope")
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn resource_names_subresources_and_watch_need_rules_of_their_own() {
    let (emulator, admin, agent) = setup().await;
    let rules = json!([
        {"verbs": ["get", "list", "watch", "patch"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["trellis-config"]},
        {"verbs": ["get", "patch"], "apiGroups": [""], "resources": ["pods/status"]},
        {"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]},
    ]);
    create::<Role>(&admin, Some("team"), json!({"metadata": {"name": "agent"}, "rules": rules})).await;
    bind_agent(&admin, "agent", Some("team"), "Role", "agent").await;
    let admin_cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "team");
    for name in ["trellis-config", "other"] {
        admin_cms.create(&PostParams::default(), &config_map(name)).await.expect("config map");
    }
    pod(&admin, "team", "p").await;

    let cms: Api<ConfigMap> = Api::namespaced(agent.clone(), "team");
    cms.get("trellis-config").await.expect("the named one");
    let patch = Patch::Merge(json!({"data": {"k": "v2"}}));
    cms.patch("trellis-config", &PatchParams::default(), &patch).await.expect("patch the named one");
    let other = cms.get("other").await.expect_err("another name");
    assert!(forbidden(&other, "configmaps", "other").contains("cannot get resource \"configmaps\""));
    // A rule with resourceNames allows no list, which names nothing...
    forbidden(&cms.list(&ListParams::default()).await.expect_err("list"), "configmaps", "");
    // ...unless the list pins the name, as kubectl's wait after a delete does.
    let pinned = cms.list(&ListParams::default().fields("metadata.name=trellis-config")).await.expect("pinned list");
    assert_eq!(pinned.items.len(), 1);

    let pods: Api<Pod> = Api::namespaced(agent.clone(), "team");
    pods.get_status("p").await.expect("pods/status");
    let status_patch = Patch::Merge(json!({"status": {"phase": "Running"}}));
    pods.patch_status("p", &PatchParams::default(), &status_patch).await.expect("patch pods/status");
    let get = pods.get("p").await.expect_err("pods/status does not give pods");
    assert!(forbidden(&get, "pods", "p").contains("cannot get resource \"pods\" in API group"));
    let log = pods.get_subresource("log", "p").await.expect_err("nor pods/log");
    assert!(
        forbidden(&log, "pods", "p")
            .contains("cannot get resource \"pods/log\" in API group \"\" in the namespace \"team\"")
    );

    // list is not watch.
    assert_eq!(pods.list(&ListParams::default()).await.expect("list").items.len(), 1);
    let watch = pods.watch(&WatchParams::default(), "0").await.err().expect("watch needs the watch verb");
    assert!(forbidden(&watch, "pods", "").contains("cannot watch resource \"pods\""));
    let add_watch = json!([{"op": "add", "path": "/rules/-",
        "value": {"verbs": ["watch"], "apiGroups": [""], "resources": ["pods"]}}]);
    let add_watch = Patch::Json::<()>(serde_json::from_value(add_watch).expect("json patch"));
    Api::<Role>::namespaced(admin, "team").patch("agent", &PatchParams::default(), &add_watch).await.expect("grant");
    let mut events = Box::pin(pods.watch(&WatchParams::default(), "0").await.expect("watch now"));
    assert!(events.try_next().await.expect("an event").is_some());
    emulator.shutdown().await;
}

#[tokio::test]
async fn an_apply_that_creates_needs_create_and_a_removed_binding_revokes_at_once() {
    let (emulator, admin, agent) = setup().await;
    let rules = json!([{"verbs": ["get", "patch"], "apiGroups": [""], "resources": ["configmaps"]}]);
    create::<Role>(&admin, Some("team"), json!({"metadata": {"name": "patcher"}, "rules": rules})).await;
    bind_agent(&admin, "patcher", Some("team"), "Role", "patcher").await;
    let cms: Api<ConfigMap> = Api::namespaced(agent.clone(), "team");
    let apply = |value: &str| {
        Patch::Apply(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"k": value}}),
        )
    };
    let refused = cms.patch("applied", &PatchParams::apply("trellis"), &apply("1")).await.expect_err("no create");
    // The apiserver's create-on-patch check words a refusal with the authorizer's reason alone.
    assert_eq!(forbidden(&refused, "configmaps", "applied"), "configmaps \"applied\" is forbidden: ");
    Api::<ConfigMap>::namespaced(admin.clone(), "team")
        .create(&PostParams::default(), &config_map("applied"))
        .await
        .expect("admin creates it");
    let take_over = PatchParams::apply("trellis").force();
    cms.patch("applied", &take_over, &apply("2")).await.expect("an apply that patches");

    Api::<RoleBinding>::namespaced(admin, "team").delete("patcher", &DeleteParams::default()).await.expect("unbind");
    let revoked = cms.get("applied").await.expect_err("revoked");
    assert!(forbidden(&revoked, "configmaps", "applied").contains(AGENT_USER));
    emulator.shutdown().await;
}

#[tokio::test]
async fn bad_tokens_get_401_and_no_token_is_anonymous() {
    let (emulator, admin, _) = setup().await;
    let unauthorized = |e: kube::Error| {
        let kube::Error::Api(status) = e else { panic!("expected a Status, got {e:?}") };
        assert_eq!(
            (status.code, status.reason.as_str(), status.message.as_str()),
            (401, "Unauthorized", "Unauthorized")
        );
    };
    let expired = emulator
        .issue_service_account_token(AGENT_NS, AGENT, &[], None, SystemTime::now() - Duration::from_secs(1))
        .expect("expired token");
    let foreign = emulator
        .issue_service_account_token(AGENT_NS, AGENT, &["identity.trellis.dev"], None, SystemTime::now() + HOUR)
        .expect("token for another audience");
    for token in [expired.as_str(), foreign.as_str(), "not-a-token"] {
        let client = common::client_with_token(&emulator, token).await;
        unauthorized(client.apiserver_version().await.expect_err("401"));
    }
    let live =
        emulator.issue_service_account_token(AGENT_NS, AGENT, &[], None, SystemTime::now() + HOUR).expect("live");
    let client = common::client_with_token(&emulator, &live).await;
    client.apiserver_version().await.expect("system:discovery lets any authenticated user read /version");
    Api::<ServiceAccount>::namespaced(admin, AGENT_NS)
        .delete(AGENT, &DeleteParams::default())
        .await
        .expect("delete sa");
    unauthorized(client.apiserver_version().await.expect_err("its service account is gone"));

    // Without a token, a request is system:anonymous, which may read /version and no more.
    let mut kubeconfig: serde_yaml::Value = serde_yaml::from_str(&emulator.kubeconfig_yaml()).expect("yaml");
    kubeconfig["users"][0]["user"] = serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
    let kubeconfig = Kubeconfig::from_yaml(&serde_yaml::to_string(&kubeconfig).expect("yaml")).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("config");
    let anonymous = Client::try_from(config).expect("client");
    anonymous.apiserver_version().await.expect("system:public-info-viewer");
    let pods = Api::<Pod>::all(anonymous.clone()).list(&ListParams::default()).await.expect_err("anonymous");
    assert_eq!(
        forbidden(&pods, "pods", ""),
        "pods is forbidden: User \"system:anonymous\" cannot list resource \"pods\" in API group \"\" at the cluster scope"
    );
    let groups = anonymous.list_api_groups().await.expect_err("discovery is for authenticated users");
    assert_eq!(forbidden(&groups, "", ""), "forbidden: User \"system:anonymous\" cannot get path \"/apis\"");
    emulator.shutdown().await;
}

#[tokio::test]
async fn subject_access_reviews_answer_for_anyone_with_the_reason() {
    let (emulator, admin, agent) = setup().await;
    let review = |spec: Value| {
        let reviews = Api::<SubjectAccessReview>::all(admin.clone());
        async move {
            let review: SubjectAccessReview = serde_json::from_value(json!({"spec": spec})).expect("review");
            reviews.create(&PostParams::default(), &review).await
        }
    };
    let list_pods = json!({"verb": "list", "resource": "pods", "namespace": "team"});
    let as_agent = json!({"user": AGENT_USER, "groups": ["system:serviceaccounts", "system:authenticated"],
        "resourceAttributes": list_pods.clone()});
    let status = review(as_agent.clone()).await.expect("review").status.expect("status");
    assert_eq!((status.allowed, status.reason), (false, None));

    bind_agent(&admin, "agent-view", Some("team"), "ClusterRole", "view").await;
    bind_agent(&admin, "dangling", None, "ClusterRole", "no-such-role").await;
    let status = review(as_agent).await.expect("review").status.expect("status");
    assert!(status.allowed);
    assert_eq!(
        status.reason.as_deref(),
        Some(
            "RBAC: allowed by RoleBinding \"agent-view/team\" of ClusterRole \"view\" to ServiceAccount \"trellis-agent/kube-system\""
        )
    );
    let secrets =
        json!({"user": AGENT_USER, "resourceAttributes": {"verb": "get", "resource": "secrets", "namespace": "team"}});
    let status = review(secrets).await.expect("review").status.expect("status");
    assert!(!status.allowed, "view does not read secrets");
    assert_eq!(
        status.reason.as_deref(),
        Some("RBAC: clusterrole.rbac.authorization.k8s.io \"no-such-role\" not found")
    );

    // A ClusterRoleBinding's service account must say which namespace it is in.
    let no_namespace = json!({"metadata": {"name": "nowhere"}, "subjects": [{"kind": "ServiceAccount", "name": AGENT}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}});
    let refused = Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &serde_json::from_value(no_namespace).expect("binding"))
        .await
        .expect_err("refused");
    assert_eq!(
        (common::status_code(&refused), common::status_message(&refused).as_str()),
        (
            422,
            "ClusterRoleBinding.rbac.authorization.k8s.io \"nowhere\" is invalid: subjects[0].namespace: Required value"
        )
    );

    let masters = json!({"user": "someone", "groups": ["system:masters"], "nonResourceAttributes": {"verb": "get", "path": "/metrics"}});
    assert!(review(masters).await.expect("review").status.expect("status").allowed);
    let nobody = review(json!({"resourceAttributes": list_pods.clone()})).await.expect_err("no user or group");
    assert_eq!(common::status_code(&nobody), 422);

    // A LocalSubjectAccessReview asks within its own namespace only.
    let local = |namespace: &str| {
        serde_json::from_value::<LocalSubjectAccessReview>(json!({"metadata": {"namespace": "team"}, "spec": {
            "user": AGENT_USER, "resourceAttributes": {"verb": "list", "resource": "pods", "namespace": namespace}}}))
        .expect("review")
    };
    let locals: Api<LocalSubjectAccessReview> = Api::namespaced(admin.clone(), "team");
    let status = locals.create(&PostParams::default(), &local("team")).await.expect("local").status.expect("status");
    assert!(status.allowed);
    let elsewhere = locals.create(&PostParams::default(), &local("default")).await.expect_err("another namespace");
    assert_eq!(
        (common::status_code(&elsewhere), common::status_message(&elsewhere).as_str()),
        (400, "spec.resourceAttributes.namespace must match namespace: team")
    );

    // Asking about others takes a grant the agent does not have.
    let denied = Api::<SubjectAccessReview>::all(agent)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"spec": {"user": "x", "resourceAttributes": list_pods}})).expect("review"),
        )
        .await
        .expect_err("forbidden");
    forbidden(&denied, "subjectaccessreviews", "");
    emulator.shutdown().await;
}

#[tokio::test]
async fn namespaces_carry_their_name_as_a_label() {
    let emulator = common::emulator(Options::default()).await;
    let namespaces: Api<Namespace> = Api::all(common::client(&emulator).await);
    let label =
        |ns: &Namespace| ns.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/metadata.name")).cloned();
    assert_eq!(label(&namespaces.get("kube-system").await.expect("kube-system")), Some("kube-system".into()));
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "team", "labels": {"a": "b"}}})).expect("ns");
    let created = namespaces.create(&PostParams::default(), &ns).await.expect("create");
    assert_eq!(label(&created), Some("team".into()));
    let mut replaced = created.clone();
    replaced.metadata.labels = Some([("kubernetes.io/metadata.name".to_owned(), "other".to_owned())].into());
    let updated = namespaces.replace("team", &PostParams::default(), &replaced).await.expect("replace");
    assert_eq!(updated.metadata.labels, Some([("kubernetes.io/metadata.name".to_owned(), "team".to_owned())].into()));
    let selected =
        namespaces.list(&ListParams::default().labels("kubernetes.io/metadata.name=team")).await.expect("list");
    assert_eq!(selected.items.len(), 1);
    emulator.shutdown().await;
}
