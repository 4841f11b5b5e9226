//! Azure ML's `inferenceconfig.json` (SDK v1 and CLI v1): which entry script serves the model,
//! from which source directory, in which Python environment. Both layouts are read: the
//! current one (`environment.python...`) and the older flat one (`runtime`, `condaFile`,
//! `baseImage`).
//!
//! Every field is either honoured at run time, or applies when an image is built (conda and
//! Docker settings: `images/build.sh` bakes them in), or unknown; the last two are reported
//! by name, so nothing in the user's file is dropped unseen.

use crate::deployment::AzureConfigError;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct InferenceConfig {
    /// Relative to the source directory; Azure's default is `score.py`.
    pub entry_script: Option<String>,
    /// Relative to the file's folder.
    pub source_directory: Option<String>,
    /// `environment.python.interpreterPath`: the interpreter of a user-managed environment.
    pub interpreter_path: Option<String>,
    /// `environment.python.userManagedDependencies`: whether `interpreterPath` is the
    /// environment (Azure builds a conda environment otherwise, and ignores the path).
    pub user_managed_dependencies: bool,
    /// `environment.environmentVariables`, set in every worker.
    pub environment_variables: BTreeMap<String, String>,
    pub environment_name: Option<String>,
    /// One line per field not honoured at run time, naming it.
    pub notes: Vec<String>,
}

/// Fields that describe how the environment's image is built: honoured by `images/build.sh`,
/// not by a running server.
const BUILD_TIME_FIELDS: &[&str] = &[
    "environment.python.condaDependencies",
    "environment.python.condaDependenciesFile",
    "environment.python.baseCondaEnvironment",
    "environment.docker",
    "environment.inferencingStackVersion",
    "condaFile",
    "baseImage",
    "baseImageRegistry",
    "extraDockerfileSteps",
    "enableGpu",
    "cudaVersion",
    "dependencies",
    "runtime",
];

/// Fields Azure accepts that change nothing for a running web service.
const INERT_FIELDS: &[&str] = &[
    "environment.version",
    "environment.spark",
    "environment.databricks",
    "environment.r",
    "environment.assetId",
    "description",
    "schemaFile",
    "sourceDirectory",
    "entryScript",
    "environment.name",
    "environment.environmentVariables",
    "environment.python.interpreterPath",
    "environment.python.userManagedDependencies",
];

impl InferenceConfig {
    pub fn read(path: &Path) -> Result<InferenceConfig, AzureConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| AzureConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        InferenceConfig::parse(&text).map_err(|reason| AzureConfigError::Invalid {
            path: path.display().to_string(),
            reason,
        })
    }

    pub fn parse(text: &str) -> Result<InferenceConfig, String> {
        let root: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let Value::Object(root) = root else {
            return Err("an inference configuration is a JSON object".into());
        };
        let mut config = InferenceConfig {
            entry_script: string_at(&root, &["entryScript"])?,
            source_directory: string_at(&root, &["sourceDirectory"])?,
            interpreter_path: string_at(&root, &["environment", "python", "interpreterPath"])?,
            user_managed_dependencies: match value_at(
                &root,
                &["environment", "python", "userManagedDependencies"],
            ) {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(format!(
                        "environment.python.userManagedDependencies must be true or false, not {other}"
                    ));
                }
            },
            environment_name: string_at(&root, &["environment", "name"])?,
            ..InferenceConfig::default()
        };
        if let Some(variables) = value_at(&root, &["environment", "environmentVariables"]) {
            let Value::Object(variables) = variables else {
                return Err("environment.environmentVariables must be an object".into());
            };
            for (name, value) in variables {
                let value = match value {
                    Value::String(s) => s.clone(),
                    Value::Null => continue,
                    other => other.to_string(),
                };
                config.environment_variables.insert(name.clone(), value);
            }
        }
        let mut fields = Vec::new();
        leaf_fields("", &root, &mut fields);
        for field in fields {
            if INERT_FIELDS.iter().any(|f| covers(f, &field)) {
                continue;
            }
            if let Some(build) = BUILD_TIME_FIELDS.iter().find(|f| covers(f, &field)) {
                if !config
                    .notes
                    .iter()
                    .any(|n| n.starts_with(&format!("{build}:")))
                {
                    config.notes.push(format!(
                        "{build}: describes how the environment is built; not applied at run \
                         time (bake it into an image with images/build.sh, or point \
                         environment.python.interpreterPath or --python at a ready environment)"
                    ));
                }
                continue;
            }
            config
                .notes
                .push(format!("{field}: unknown field, ignored"));
        }
        if config.interpreter_path.is_some() && !config.user_managed_dependencies {
            config.notes.push(
                "environment.python.interpreterPath: used although userManagedDependencies is \
                 false (Azure would build a conda environment instead)"
                    .into(),
            );
        }
        Ok(config)
    }
}

fn value_at<'a>(root: &'a Map<String, Value>, path: &[&str]) -> Option<&'a Value> {
    let (last, parents) = path.split_last()?;
    let mut object = root;
    for key in parents {
        object = object.get(*key)?.as_object()?;
    }
    object.get(*last)
}

fn string_at(root: &Map<String, Value>, path: &[&str]) -> Result<Option<String>, String> {
    match value_at(root, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{} must be a string, not {other}", path.join("."))),
    }
}

/// Dotted names of the fields that are not objects (objects are walked into; a null or
/// empty value says nothing and is skipped).
fn leaf_fields(prefix: &str, object: &Map<String, Value>, out: &mut Vec<String>) {
    for (key, value) in object {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Null => {}
            Value::Object(inner) if inner.is_empty() => {}
            Value::Object(inner) if !INERT_FIELDS.contains(&name.as_str()) => {
                leaf_fields(&name, inner, out)
            }
            _ => out.push(name),
        }
    }
}

/// Whether `field` is `known` or lies inside it.
fn covers(known: &str, field: &str) -> bool {
    field == known
        || field
            .strip_prefix(known)
            .is_some_and(|rest| rest.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cli_v1_layout_and_names_what_it_does_not_apply() {
        let config = InferenceConfig::parse(
            r#"{
                "entryScript": "score.py",
                "sourceDirectory": "src",
                "environment": {
                    "name": "sklearn-env",
                    "version": "1",
                    "python": {
                        "interpreterPath": "/opt/env/bin/python",
                        "userManagedDependencies": true,
                        "condaDependencies": {"dependencies": ["python=3.11", {"pip": ["joblib"]}]}
                    },
                    "environmentVariables": {"LABELS": "cat,dog", "THREADS": 2},
                    "docker": {"baseImage": "mcr.microsoft.com/azureml/base", "enabled": false}
                },
                "enableGpu": false,
                "colour": "blue"
            }"#,
        )
        .unwrap();
        assert_eq!(config.entry_script.as_deref(), Some("score.py"));
        assert_eq!(config.source_directory.as_deref(), Some("src"));
        assert_eq!(
            config.interpreter_path.as_deref(),
            Some("/opt/env/bin/python")
        );
        assert!(config.user_managed_dependencies);
        assert_eq!(config.environment_variables["LABELS"], "cat,dog");
        assert_eq!(config.environment_variables["THREADS"], "2");
        let notes = config.notes.join("\n");
        for field in [
            "environment.python.condaDependencies:",
            "environment.docker:",
            "enableGpu:",
            "colour: unknown field",
        ] {
            assert!(notes.contains(field), "{field} missing from:\n{notes}");
        }
        assert!(!notes.contains("environment.version"), "{notes}");
    }

    #[test]
    fn reads_the_older_flat_layout() {
        let config = InferenceConfig::parse(
            r#"{"entryScript": "x/score.py", "runtime": "python", "condaFile": "env.yml"}"#,
        )
        .unwrap();
        assert_eq!(config.entry_script.as_deref(), Some("x/score.py"));
        assert_eq!(config.notes.len(), 2, "{:?}", config.notes);
    }

    #[test]
    fn wrong_types_are_errors_naming_the_field() {
        let error = InferenceConfig::parse(r#"{"entryScript": 3}"#).unwrap_err();
        assert!(error.contains("entryScript"), "{error}");
        let error = InferenceConfig::parse(
            r#"{"environment": {"python": {"userManagedDependencies": "yes"}}}"#,
        )
        .unwrap_err();
        assert!(error.contains("userManagedDependencies"), "{error}");
        assert!(InferenceConfig::parse("[]").is_err());
    }
}
