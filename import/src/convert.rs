//! The conversion itself runs in the user's Python, where score.py, its pickles and the
//! converters (skl2onnx, onnxmltools) import: `python/azure_to_onnx.py`, carried in the binary.

use crate::ImportError;
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const HELPER: &str = include_str!("../python/azure_to_onnx.py");
/// The helper's exit status for "not convertible" (its report says why).
const NOT_CONVERTIBLE: i32 = 3;

/// What the helper found and did, from its JSON report.
#[derive(Debug, Clone, Deserialize)]
pub struct Conversion {
    pub python: String,
    pub status: ConversionStatus,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub sample_source: Option<String>,
    #[serde(default)]
    pub model_class: Option<String>,
    #[serde(default)]
    pub framework: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub input_form: Option<String>,
    #[serde(default)]
    pub inputs: Vec<ConvertedInput>,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub squeeze: bool,
    /// The sample request run() was called with.
    #[serde(default)]
    pub request: Option<Value>,
    /// What run() answered to it: the reply Azure sent.
    #[serde(default)]
    pub expected: Option<Value>,
    #[serde(default)]
    pub versions: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversionStatus {
    Converted,
    NotConvertible,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct ConvertedInput {
    pub name: String,
    #[serde(rename = "type")]
    pub onnx_type: String,
}

pub struct ConversionRequest<'a> {
    pub python: &'a Path,
    pub entry_script: &'a Path,
    pub source_dir: &'a Path,
    pub model_dir: &'a Path,
    pub onnx: &'a Path,
    pub samples: Option<&'a Path>,
}

/// The interpreter: `--python`, else the active virtualenv's, else `python3` on PATH.
pub fn find_python(explicit: Option<&Path>) -> PathBuf {
    if let Some(python) = explicit {
        // The helper runs in the entry script's folder: a relative path would be looked up
        // from there, a bare name on PATH.
        if python.components().count() > 1 {
            return std::path::absolute(python).unwrap_or_else(|_| python.to_path_buf());
        }
        return python.to_path_buf();
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        let python = Path::new(&venv).join("bin/python");
        if python.is_file() {
            return python;
        }
    }
    PathBuf::from("python3")
}

/// Runs the helper; what it and the user's script print (converter warnings) passes through
/// to our stderr.
pub fn convert(request: &ConversionRequest<'_>) -> Result<Conversion, ImportError> {
    let scratch = tempfile::tempdir().map_err(ImportError::Io)?;
    let helper = scratch.path().join("azure_to_onnx.py");
    let report = scratch.path().join("report.json");
    std::fs::write(&helper, HELPER).map_err(ImportError::Io)?;
    let mut command = Command::new(request.python);
    command
        .arg(&helper)
        .arg("--entry-script")
        .arg(request.entry_script)
        .arg("--source-dir")
        .arg(request.source_dir)
        .arg("--model-dir")
        .arg(request.model_dir)
        .arg("--onnx")
        .arg(request.onnx)
        .arg("--report")
        .arg(&report)
        .current_dir(request.source_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    if let Some(samples) = request.samples {
        command.arg("--samples").arg(samples);
    }
    let status = command.status().map_err(|e| ImportError::Python {
        python: request.python.display().to_string(),
        reason: format!("could not start it: {e} (name another with --python)"),
    })?;
    let code = status.code();
    if code != Some(0) && code != Some(NOT_CONVERTIBLE) {
        return Err(ImportError::Python {
            python: request.python.display().to_string(),
            reason: format!("the converter exited with {status} (its error is above)"),
        });
    }
    let text = std::fs::read(&report).map_err(ImportError::Io)?;
    let conversion: Conversion =
        serde_json::from_slice(&text).map_err(|e| ImportError::Python {
            python: request.python.display().to_string(),
            reason: format!("unreadable converter report ({e})"),
        })?;
    Ok(conversion)
}
