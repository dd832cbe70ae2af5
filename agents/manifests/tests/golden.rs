//! The defaults as reviewed YAML: a change to any rendered object shows up as a diff of
//! tests/golden/node_agent_defaults.yaml in review. Regenerate with
//! `TRELLIS_UPDATE_GOLDEN=1 cargo test -p trellis-manifests --test golden`.

use std::path::Path;

use trellis_manifests::node_agent::{self, Settings};

fn yaml(objects: &[serde_json::Value]) -> String {
    objects
        .iter()
        .map(|object| {
            // Through JSON text: serde_json's arbitrary_precision numbers are private structs to
            // any other serializer, plain numbers to a YAML parser.
            let text = serde_json::to_string(object).expect("JSON");
            let value: serde_yaml::Value = serde_yaml::from_str(&text).expect("JSON is YAML");
            format!("---\n{}", serde_yaml::to_string(&value).expect("YAML"))
        })
        .collect()
}

#[test]
fn the_defaults_match_the_golden_file() {
    let settings = Settings {
        owner: "trellis-local.kube-system".into(),
        cluster_name: "trellis-local".into(),
        region: "us-east-1".into(),
        ..Settings::default()
    };
    let rendered = yaml(&node_agent::render(&settings).expect("the defaults render"));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/node_agent_defaults.yaml");
    if std::env::var_os("TRELLIS_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, &rendered).expect("writing the golden file");
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        rendered == golden,
        "the rendered defaults differ from {}; review the change, then regenerate with \
         TRELLIS_UPDATE_GOLDEN=1 cargo test -p trellis-manifests --test golden\n{rendered}",
        path.display()
    );
}
