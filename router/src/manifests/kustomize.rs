//! The objects as a kustomize base: one JSON file per object (kustomize reads JSON as the
//! YAML it is) and a kustomization.yaml listing them, so `kubectl apply -k DIR` applies the
//! same objects as `kubectl apply -f` on the List, and overlays can patch them.

use serde_json::{Value, json};
use std::path::Path;

/// Writes `list`'s items into `dir` (created if missing); returns the files written.
pub fn write_kustomize_base(list: &Value, dir: &Path) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let mut resources = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let kind = item["kind"].as_str().unwrap_or("object").to_lowercase();
        let name = item["metadata"]["name"].as_str().unwrap_or("unnamed");
        let file = format!("{index:02}-{kind}-{name}.json");
        std::fs::write(dir.join(&file), serde_json::to_vec_pretty(item)?)?;
        resources.push(file);
    }
    let kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
    });
    // JSON is YAML: no YAML writer needed for a file this simple.
    std::fs::write(
        dir.join("kustomization.yaml"),
        serde_json::to_vec_pretty(&kustomization)?,
    )?;
    Ok(resources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_object_gets_a_file_and_the_kustomization_lists_them() {
        let dir = tempfile::tempdir().unwrap();
        let list = json!({"items": [
            {"kind": "Deployment", "metadata": {"name": "iris"}},
            {"kind": "Service", "metadata": {"name": "iris"}},
        ]});
        let files = write_kustomize_base(&list, dir.path()).unwrap();
        assert_eq!(files, ["00-deployment-iris.json", "01-service-iris.json"]);
        let kustomization: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("kustomization.yaml")).unwrap())
                .unwrap();
        assert_eq!(kustomization["resources"], json!(files));
    }
}
