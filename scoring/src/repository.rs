//! The model repository on disk: `<root>/<model>/<version>/model.onnx` with an optional
//! `<root>/<model>/model.toml`, or Azure's layout where `AZUREML_MODEL_DIR` points at
//! `azureml-models/<name>/<version>/` (one model) or at `azureml-models/` (several).

use crate::manifest::ModelManifest;
use std::path::{Path, PathBuf};

/// One model found in the repository: its manifest (or why it is unreadable) and versions.
#[derive(Debug, Clone)]
pub struct ModelSource {
    pub name: String,
    pub dir: PathBuf,
    pub manifest: Result<ModelManifest, String>,
    pub versions: Vec<VersionSource>,
}

/// One version folder and the ONNX file found in it (or why none could be chosen).
#[derive(Debug, Clone)]
pub struct VersionSource {
    pub version: u64,
    pub file: Result<PathBuf, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("model repository {0} is not a readable directory: {1}")]
    Unreadable(PathBuf, String),
}

/// `text` with every character but ASCII letters, digits, `-`, `_` and `.` replaced by `_`,
/// for a file or folder name made from outside input; callers still rule out the empty
/// name, `.` and `..`, each in its own way.
pub fn file_name_chars(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Lists the models under `root`. Unreadable manifests and version folders without a usable
/// ONNX file are reported per model, so one broken model never hides the others.
pub fn scan_repository(root: &Path) -> Result<Vec<ModelSource>, RepositoryError> {
    let unreadable =
        |e: std::io::Error| RepositoryError::Unreadable(root.to_path_buf(), e.to_string());
    let meta = std::fs::metadata(root).map_err(unreadable)?;
    if !meta.is_dir() {
        return Err(RepositoryError::Unreadable(
            root.to_path_buf(),
            "not a directory".into(),
        ));
    }
    let mut models = Vec::new();
    for entry in sorted_dirs(root).map_err(unreadable)? {
        let name = file_name(&entry);
        if name.starts_with('.') {
            continue;
        }
        if version_dirs(&entry).is_empty() {
            continue;
        }
        models.push(scan_model(&name, &entry));
    }
    // Azure's single-model layout only when the folder holds no models of ours: a repository
    // may itself sit in a folder whose name is a number.
    if models.is_empty()
        && let Some(single) = azure_single_model(root)
    {
        return Ok(vec![single]);
    }
    Ok(models)
}

/// Reads one model folder.
pub fn scan_model(name: &str, dir: &Path) -> ModelSource {
    let manifest = ModelManifest::read_from_dir(dir).map_err(|e| e.to_string());
    let file_hint = manifest.as_ref().ok().and_then(|m| m.file.clone());
    let versions = version_dirs(dir)
        .into_iter()
        .map(|(version, path)| VersionSource {
            version,
            file: find_onnx_file(&path, file_hint.as_deref()),
        })
        .collect();
    ModelSource {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        manifest,
        versions,
    }
}

/// `azureml-models/<name>/<version>/` given directly: the folder is named by a version and
/// holds an ONNX file rather than model folders.
fn azure_single_model(root: &Path) -> Option<ModelSource> {
    let canonical = root.canonicalize().ok()?;
    let version: u64 = file_name(&canonical).parse().ok()?;
    let model_dir = canonical.parent()?;
    let name = file_name(model_dir);
    if name.is_empty() || onnx_files(&canonical, 2).is_empty() {
        return None;
    }
    // The manifest may sit beside the model file or one level up, as in our own layout.
    let manifest = match ModelManifest::read_from_dir(&canonical) {
        Ok(m) if m != ModelManifest::default() => Ok(m),
        Ok(_) => ModelManifest::read_from_dir(model_dir),
        Err(e) => Err(e),
    }
    .map_err(|e| e.to_string());
    let file_hint = manifest.as_ref().ok().and_then(|m| m.file.clone());
    Some(ModelSource {
        name,
        dir: model_dir.to_path_buf(),
        versions: vec![VersionSource {
            version,
            file: find_onnx_file(&canonical, file_hint.as_deref()),
        }],
        manifest,
    })
}

fn version_dirs(model_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut versions: Vec<(u64, PathBuf)> = sorted_dirs(model_dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let v = file_name(&p).parse::<u64>().ok().filter(|&v| v > 0)?;
            Some((v, p))
        })
        .collect();
    versions.sort_by_key(|(v, _)| *v);
    versions
}

fn find_onnx_file(version_dir: &Path, hint: Option<&str>) -> Result<PathBuf, String> {
    if let Some(hint) = hint {
        let path = version_dir.join(hint);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{} does not exist", path.display()))
        };
    }
    let default = version_dir.join("model.onnx");
    if default.is_file() {
        return Ok(default);
    }
    match onnx_files(version_dir, 2).as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("no .onnx file in {}", version_dir.display())),
        several => Err(format!(
            "{} holds {} .onnx files; name one with `file` in model.toml",
            version_dir.display(),
            several.len()
        )),
    }
}

fn onnx_files(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() && depth > 0 {
            found.extend(onnx_files(&path, depth - 1));
        } else if path.extension().is_some_and(|e| e == "onnx") && path.is_file() {
            found.push(path);
        }
    }
    found
}

fn sorted_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn a_repository_in_a_numbered_folder_is_not_taken_for_azures_layout() {
        let root = tempfile::tempdir().unwrap();
        let repo = root.path().join("100");
        for name in ["a", "b"] {
            std::fs::create_dir_all(repo.join(name).join("1")).unwrap();
            std::fs::write(repo.join(name).join("1/model.onnx"), b"x").unwrap();
        }
        let names: Vec<String> = scan_repository(&repo)
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn scans_models_versions_and_reports_problems_per_model() {
        let root = tempfile::tempdir().unwrap();
        touch(&root.path().join("a/1/model.onnx"));
        touch(&root.path().join("a/2/other.onnx"));
        touch(&root.path().join("b/1/x.onnx"));
        touch(&root.path().join("b/1/y.onnx"));
        touch(&root.path().join("c/readme.txt"));
        std::fs::write(root.path().join("b/model.toml"), "nonsense = 1").unwrap();
        let models = scan_repository(root.path()).unwrap();
        assert_eq!(
            models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let a = &models[0];
        assert_eq!(
            a.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(
            a.versions[1]
                .file
                .as_ref()
                .unwrap()
                .ends_with("2/other.onnx")
        );
        let b = &models[1];
        assert!(b.manifest.is_err());
        assert!(
            b.versions[0]
                .file
                .as_ref()
                .unwrap_err()
                .contains("2 .onnx files")
        );
    }

    #[test]
    fn accepts_azure_single_model_layout() {
        let root = tempfile::tempdir().unwrap();
        let version_dir = root.path().join("azureml-models/sklearn_iris/3");
        touch(&version_dir.join("outputs/iris.onnx"));
        let models = scan_repository(&version_dir).unwrap();
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].name, "sklearn_iris");
        assert_eq!(models[0].versions[0].version, 3);
        assert!(
            models[0].versions[0]
                .file
                .as_ref()
                .unwrap()
                .ends_with("outputs/iris.onnx")
        );
        // The folder above it is an ordinary repository.
        let models = scan_repository(&root.path().join("azureml-models")).unwrap();
        assert_eq!(models[0].name, "sklearn_iris");
    }

    #[test]
    fn missing_root_is_an_error() {
        assert!(scan_repository(Path::new("/definitely/not/here")).is_err());
    }
}
