//! The modelpod service an import writes: `models/<name>/1/model.onnx`, the manifest with the
//! steps that reproduce run()'s answer, the deployment configuration, and the check.

use crate::ImportError;
use crate::convert::Conversion;
use std::path::{Path, PathBuf};

pub struct ServiceLayout {
    pub root: PathBuf,
    pub model: String,
}

impl ServiceLayout {
    pub fn repository(&self) -> PathBuf {
        self.root.join("models")
    }
    pub fn model_dir(&self) -> PathBuf {
        self.repository().join(&self.model)
    }
    pub fn onnx(&self) -> PathBuf {
        self.model_dir().join("1").join("model.onnx")
    }
    pub fn deployment_config(&self) -> PathBuf {
        self.root.join("deploymentconfig.json")
    }
    pub fn report(&self) -> PathBuf {
        self.root.join("import-report.json")
    }
    /// The sample request and run()'s answer, to check a deployment with later.
    pub fn check_file(&self) -> PathBuf {
        self.root.join("check.json")
    }

    /// Makes the output folder; one that holds files already is refused unless `replace`.
    pub fn prepare(&self, replace: bool) -> Result<(), ImportError> {
        let occupied = std::fs::read_dir(&self.root).is_ok_and(|mut d| d.next().is_some());
        if occupied {
            if !replace {
                return Err(ImportError::OutputExists(self.root.clone()));
            }
            std::fs::remove_dir_all(&self.root).map_err(ImportError::Io)?;
        }
        std::fs::create_dir_all(self.onnx().parent().expect("has a parent"))
            .map_err(ImportError::Io)
    }
}

/// model.toml for a converted model: the output run() answered with, squeezed where
/// predict() was 1-d. Batching stays at its default (on, for the converters' `[None, ...]`).
pub fn manifest_text(conversion: &Conversion, source: &Path) -> String {
    let mut score = toml::Table::new();
    if let Some(output) = &conversion.output {
        score.insert("output".into(), toml::Value::String(output.clone()));
    }
    if conversion.squeeze {
        let mut squeeze = toml::Table::new();
        squeeze.insert("op".into(), toml::Value::String("squeeze".into()));
        score.insert(
            "post".into(),
            toml::Value::Array(vec![toml::Value::Table(squeeze)]),
        );
    }
    let mut manifest = toml::Table::new();
    manifest.insert("score".into(), toml::Value::Table(score));
    let header = format!(
        "# Written by `modelpod import` from {}: {} {}() converted to ONNX{}.\n",
        source.display(),
        conversion.model_class.as_deref().unwrap_or("the model"),
        conversion.method.as_deref().unwrap_or("predict"),
        conversion
            .kind
            .as_deref()
            .map(|k| format!(" (a {k})"))
            .unwrap_or_default()
    );
    format!(
        "{header}{}",
        toml::to_string(&manifest).expect("a table of strings serialises")
    )
}
