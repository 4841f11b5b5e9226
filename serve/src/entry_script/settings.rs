//! How an entry-script service is started: Azure's inferenceconfig.json, resolved against
//! the command line and the environment into paths, an interpreter and variables.

use modelpod_scoring::inference_config::InferenceConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the command line adds to inferenceconfig.json.
#[derive(Debug, Clone, Default)]
pub struct EntryScriptArgs {
    pub python: Option<PathBuf>,
    pub workers: Option<usize>,
    pub name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct EntryScriptConfig {
    /// The name `/score?model=` selects it by.
    pub name: String,
    pub inference_config: PathBuf,
    /// The source directory: AML_APP_ROOT, the workers' working directory.
    pub app_root: PathBuf,
    /// Relative to `app_root`.
    pub entry_script: String,
    /// AZUREML_MODEL_DIR.
    pub model_dir: PathBuf,
    pub python: PathBuf,
    pub workers: usize,
    /// environment.environmentVariables.
    pub environment: BTreeMap<String, String>,
    /// SCORING_TIMEOUT_MS inside the worker: Azure's own per-run() alarm.
    pub scoring_timeout: Duration,
    /// How long import and init() may take.
    pub start_timeout: Duration,
    /// The fields of inferenceconfig.json not applied, by name: logged when the service starts
    /// (configuration is read before logging is set up).
    pub notes: Vec<String>,
}

/// Azure's server gives init() as long as it takes; this only bounds a worker that hangs.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EntryScriptConfigError(pub String);

impl EntryScriptConfig {
    /// Reads `path` (inferenceconfig.json), warning by name about every field it does not
    /// apply, and resolves where everything is.
    pub fn resolve(
        path: &Path,
        args: &EntryScriptArgs,
        scoring_timeout: Duration,
    ) -> Result<EntryScriptConfig, EntryScriptConfigError> {
        let file =
            InferenceConfig::read(path).map_err(|e| EntryScriptConfigError(e.to_string()))?;
        for note in &file.notes {
            tracing::warn!(file = %path.display(), "{note}");
        }
        let folder = absolute(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )?;
        let app_root = absolute(&folder.join(file.source_directory.as_deref().unwrap_or(".")))?;
        let entry_script = file
            .entry_script
            .clone()
            .unwrap_or_else(|| "score.py".into());
        if !app_root.join(&entry_script).is_file() {
            return Err(EntryScriptConfigError(format!(
                "{}: entry script {} not found in {}",
                path.display(),
                entry_script,
                app_root.display()
            )));
        }
        let model_dir = match std::env::var_os("AZUREML_MODEL_DIR") {
            // As given: Azure sets it whether or not the folder exists, and so does this.
            Some(dir) if !dir.is_empty() => std::path::absolute(Path::new(&dir))
                .map_err(|e| EntryScriptConfigError(format!("AZUREML_MODEL_DIR: {e}")))?,
            _ => folder.clone(),
        };
        let python = match (&args.python, &file.interpreter_path) {
            // The workers run in the source directory: a relative path is made whole here.
            (Some(python), _) if python.components().count() > 1 => std::path::absolute(python)
                .map_err(|e| EntryScriptConfigError(format!("--python: {e}")))?,
            (Some(python), _) => python.clone(),
            (None, Some(interpreter)) if interpreter.contains('/') => folder.join(interpreter),
            (None, Some(interpreter)) => PathBuf::from(interpreter),
            (None, None) => active_environment_python(),
        };
        let workers = args.workers.unwrap_or(1);
        if workers == 0 {
            return Err(EntryScriptConfigError(
                "WORKER_COUNT (--entry-script-workers) must be at least 1".into(),
            ));
        }
        let name = args.name.clone().unwrap_or_else(|| {
            folder
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "score".into())
        });
        Ok(EntryScriptConfig {
            name,
            inference_config: path.to_path_buf(),
            app_root,
            entry_script,
            model_dir,
            python,
            workers,
            environment: file.environment_variables,
            scoring_timeout,
            start_timeout: DEFAULT_START_TIMEOUT,
            notes: file.notes,
        })
    }

    pub fn entry_script_path(&self) -> PathBuf {
        self.app_root.join(&self.entry_script)
    }

    /// The variables Azure's server sets for a script, as it sets them.
    pub fn azure_variables(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AML_APP_ROOT", self.app_root.display().to_string()),
            ("AZUREML_ENTRY_SCRIPT", self.entry_script.clone()),
            (
                "AZUREML_SOURCE_DIRECTORY",
                self.app_root.display().to_string(),
            ),
            ("AZUREML_MODEL_DIR", self.model_dir.display().to_string()),
            (
                "SCORING_TIMEOUT_MS",
                self.scoring_timeout.as_millis().to_string(),
            ),
            ("WORKER_COUNT", self.workers.to_string()),
        ]
    }
}

/// The interpreter of the environment modelpod was started in: a virtualenv, then a conda
/// environment, then `python3` on PATH.
fn active_environment_python() -> PathBuf {
    for variable in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(prefix) = std::env::var_os(variable).filter(|p| !p.is_empty()) {
            let python = Path::new(&prefix).join("bin/python");
            if python.is_file() {
                return python;
            }
        }
    }
    PathBuf::from("python3")
}

fn absolute(path: &Path) -> Result<PathBuf, EntryScriptConfigError> {
    path.canonicalize()
        .map_err(|e| EntryScriptConfigError(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_the_source_directory_interpreter_and_variables() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/score.py"), "def init(): pass\n").unwrap();
        let path = dir.path().join("inferenceconfig.json");
        std::fs::write(
            &path,
            r#"{"entryScript": "score.py", "sourceDirectory": "src",
                "environment": {"python": {"interpreterPath": "env/bin/python", "userManagedDependencies": true},
                                "environmentVariables": {"LABELS": "a,b"}}}"#,
        )
        .unwrap();
        let args = EntryScriptArgs {
            workers: Some(3),
            name: Some("churn".into()),
            ..EntryScriptArgs::default()
        };
        let config = EntryScriptConfig::resolve(&path, &args, Duration::from_secs(5)).unwrap();
        let root = dir.path().canonicalize().unwrap();
        assert_eq!(config.app_root, root.join("src"));
        assert_eq!(config.python, root.join("env/bin/python"));
        assert_eq!(config.environment["LABELS"], "a,b");
        let variables: BTreeMap<_, _> = config.azure_variables().into_iter().collect();
        assert_eq!(variables["AZUREML_ENTRY_SCRIPT"], "score.py");
        assert_eq!(variables["SCORING_TIMEOUT_MS"], "5000");
        assert_eq!(variables["WORKER_COUNT"], "3");
        assert_eq!(config.name, "churn");
    }

    #[test]
    fn a_missing_entry_script_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inferenceconfig.json");
        std::fs::write(&path, r#"{"entryScript": "nope.py"}"#).unwrap();
        let error =
            EntryScriptConfig::resolve(&path, &EntryScriptArgs::default(), Duration::from_secs(1))
                .unwrap_err()
                .to_string();
        assert!(error.contains("nope.py"), "{error}");
    }
}
