//! What an Azure ML (SDK v1) deployment folder holds: `inferenceconfig.json` (which names the
//! entry script and its source directory), `deploymentconfig.json`, and the model files.

use crate::ImportError;
use modelpod_scoring::inference_config::InferenceConfig;
use std::path::{Path, PathBuf};

/// Extensions of models saved with joblib or pickle.
const PICKLE_EXTENSIONS: &[&str] = &["pkl", "pickle", "joblib", "sav"];
/// Folders no model or entry script lives in.
const SKIPPED_DIRS: &[&str] = &["__pycache__", "node_modules", ".git", ".venv", "venv"];
/// How deep model files are looked for (Azure's `azureml-models/<name>/<version>/outputs/`).
const MAX_DEPTH: usize = 6;

#[derive(Debug)]
pub struct AzureFolder {
    pub root: PathBuf,
    pub entry_script: PathBuf,
    pub source_dir: PathBuf,
    pub deployment_config: Option<PathBuf>,
    /// Models saved with joblib or pickle.
    pub pickles: Vec<PathBuf>,
    /// ONNX files already there (served as they are only if named with --model-file).
    pub onnx_files: Vec<PathBuf>,
    /// Where `AZUREML_MODEL_DIR` points when init() runs.
    pub model_dir: PathBuf,
}

impl AzureFolder {
    /// Reads the folder; `model_dir` overrides where AZUREML_MODEL_DIR points.
    pub fn inspect(root: &Path, model_dir: Option<&Path>) -> Result<AzureFolder, ImportError> {
        let root = root.canonicalize().map_err(|e| ImportError::Folder {
            path: root.to_path_buf(),
            reason: e.to_string(),
        })?;
        if !root.is_dir() {
            return Err(ImportError::Folder {
                path: root,
                reason: "not a directory".into(),
            });
        }
        let config_path = root.join("inferenceconfig.json");
        let config: InferenceConfig = match std::fs::read_to_string(&config_path) {
            // Only entryScript and sourceDirectory matter here: the environment (conda file,
            // base image) is the user's Python, which runs the conversion.
            Ok(text) => InferenceConfig::parse(&text).map_err(|reason| ImportError::Folder {
                path: config_path.clone(),
                reason,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => InferenceConfig::default(),
            Err(e) => {
                return Err(ImportError::Folder {
                    path: config_path,
                    reason: e.to_string(),
                });
            }
        };
        let source_dir = inside(&root, config.source_directory.as_deref().unwrap_or("."))?;
        let entry_script = inside(
            &source_dir,
            config.entry_script.as_deref().unwrap_or("score.py"),
        )?;
        if !entry_script.is_file() {
            return Err(ImportError::Folder {
                path: entry_script,
                reason: "no entry script here (inferenceconfig.json's entryScript, default \
                         score.py)"
                    .into(),
            });
        }
        let mut files = Vec::new();
        walk(&root, 0, &mut files);
        files.sort();
        let has_extension = |path: &Path, wanted: &[&str]| {
            path.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| wanted.iter().any(|w| e.eq_ignore_ascii_case(w)))
        };
        let pickles: Vec<PathBuf> = files
            .iter()
            .filter(|p| has_extension(p, PICKLE_EXTENSIONS))
            .cloned()
            .collect();
        let onnx_files = files
            .iter()
            .filter(|p| has_extension(p, &["onnx"]))
            .cloned()
            .collect();
        let model_dir = match model_dir {
            Some(dir) => dir.canonicalize().map_err(|e| ImportError::Folder {
                path: dir.to_path_buf(),
                reason: e.to_string(),
            })?,
            None => default_model_dir(&root, &pickles),
        };
        let deployment_config = Some(root.join("deploymentconfig.json")).filter(|p| p.is_file());
        Ok(AzureFolder {
            root,
            entry_script,
            source_dir,
            deployment_config,
            pickles,
            onnx_files,
            model_dir,
        })
    }

    /// A name for the service's model: the registered name in Azure's
    /// `azureml-models/<name>/<version>/` layout, else the folder's own name.
    pub fn model_name(&self) -> String {
        let registered = self
            .model_dir
            .strip_prefix(&self.root)
            .ok()
            .and_then(|rel| {
                let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy());
                (parts.next()? == "azureml-models").then(|| parts.next())?
            });
        let raw = registered
            .map(|name| name.into_owned())
            .or_else(|| {
                self.root
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "model".into());
        model_name_from(&raw)
    }
}

/// A repository folder name from anything: letters, digits, `-`, `_` and `.`, never `..`.
pub fn model_name_from(raw: &str) -> String {
    let name = modelpod_scoring::repository::file_name_chars(raw);
    let name = name.trim_matches('.').to_string();
    if name.is_empty() {
        "model".into()
    } else {
        name
    }
}

/// `relative` under `base`, refusing paths that climb out of it (inferenceconfig.json is
/// the user's file, but a `..` there would make the import read elsewhere silently).
fn inside(base: &Path, relative: &str) -> Result<PathBuf, ImportError> {
    let path = Path::new(relative);
    let escapes = path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if escapes {
        return Err(ImportError::Folder {
            path: base.join(relative),
            reason: "inferenceconfig.json names a path outside the deployment folder".into(),
        });
    }
    Ok(path
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .fold(base.to_path_buf(), |joined, c| joined.join(c)))
}

/// AZUREML_MODEL_DIR as Azure set it for one model: the folder the model file sits in (its
/// version folder in the `azureml-models` layout), else the deployment folder.
fn default_model_dir(root: &Path, pickles: &[PathBuf]) -> PathBuf {
    let registered = root.join("azureml-models");
    if let Some(version_dir) = pickles.iter().find_map(|p| {
        let rel = p.strip_prefix(&registered).ok()?;
        let mut parts = rel.components();
        let (name, version) = (parts.next()?, parts.next()?);
        Some(registered.join(name).join(version))
    }) {
        return version_dir;
    }
    match pickles {
        [only] => only.parent().unwrap_or(root).to_path_buf(),
        _ => root.to_path_buf(),
    }
}

fn walk(dir: &Path, depth: usize, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if depth < MAX_DEPTH && !name.starts_with('.') && !SKIPPED_DIRS.contains(&&*name) {
                walk(&path, depth + 1, files);
            }
        } else if kind.is_file() {
            files.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    #[test]
    fn finds_the_entry_script_models_and_model_dir() {
        let dir = folder(&[
            (
                "inferenceconfig.json",
                r#"{"entryScript": "score.py", "sourceDirectory": "src"}"#,
            ),
            ("src/score.py", "def run(data): pass"),
            ("azureml-models/fraud/3/model.joblib", ""),
            ("src/__pycache__/stale.pkl", ""),
            ("deploymentconfig.json", "{}"),
        ]);
        let found = AzureFolder::inspect(dir.path(), None).unwrap();
        assert!(found.entry_script.ends_with("src/score.py"));
        assert_eq!(found.pickles.len(), 1, "{:?}", found.pickles);
        assert!(found.model_dir.ends_with("azureml-models/fraud/3"));
        assert_eq!(found.model_name(), "fraud");
        assert!(found.deployment_config.is_some());
    }

    #[test]
    fn without_inferenceconfig_score_py_beside_the_model() {
        let dir = folder(&[("score.py", ""), ("model/model.pkl", "")]);
        let found = AzureFolder::inspect(dir.path(), None).unwrap();
        assert!(found.model_dir.ends_with("model"));
        assert!(found.deployment_config.is_none());
    }

    #[test]
    fn paths_outside_the_folder_and_missing_scripts_are_refused() {
        let dir = folder(&[(
            "inferenceconfig.json",
            r#"{"entryScript": "../../etc/score.py"}"#,
        )]);
        let e = AzureFolder::inspect(dir.path(), None).unwrap_err();
        assert!(
            e.to_string().contains("outside the deployment folder"),
            "{e}"
        );
        let dir = folder(&[("model.pkl", "")]);
        let e = AzureFolder::inspect(dir.path(), None).unwrap_err();
        assert!(e.to_string().contains("no entry script"), "{e}");
    }

    #[test]
    fn model_names_are_safe_folder_names() {
        assert_eq!(model_name_from("my model/v2"), "my_model_v2");
        assert_eq!(model_name_from(".."), "model");
        assert_eq!(model_name_from("fraud-2.1"), "fraud-2.1");
    }
}
