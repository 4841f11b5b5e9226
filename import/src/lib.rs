//! `modelpod import DIR`: an Azure ML (SDK v1) deployment folder (inferenceconfig.json,
//! deploymentconfig.json, score.py, the pickled model) made a modelpod service. The model is
//! converted to ONNX in the user's Python, declared with the steps that reproduce what run()
//! answered, and checked through modelpod's own scoring path before the service is kept.

mod check;
mod convert;
mod folder;
mod service;

pub use check::{Comparison, compare};
pub use folder::AzureFolder;

use convert::{ConversionRequest, ConversionStatus};
use modelpod_accel::EngineChoice;
use serde_json::json;
use service::ServiceLayout;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The Azure deployment folder: inferenceconfig.json (else score.py), the model files,
    /// deploymentconfig.json if any.
    pub dir: PathBuf,
    /// Where to write the service: models/, deploymentconfig.json, check.json and
    /// import-report.json.
    #[arg(long, short)]
    pub output: PathBuf,
    /// The model's name in the service (default: its azureml-models name, else the folder's).
    #[arg(long)]
    pub name: Option<String>,
    /// A scoring request ({"data": ...}) to check with, instead of the entry script's
    /// input_schema sample.
    #[arg(long)]
    pub samples: Option<PathBuf>,
    /// Largest accepted difference between the served and the original answers, scaled by
    /// max(1, |original|).
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f64,
    /// The Python the entry script runs in, with skl2onnx (and onnxmltools for XGBoost or
    /// LightGBM) installed (default: $VIRTUAL_ENV's, else python3).
    #[arg(long, env = "MODELPOD_IMPORT_PYTHON")]
    pub python: Option<PathBuf>,
    /// AZUREML_MODEL_DIR while init() runs (default: the model file's folder).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Engine the check scores on, as `serve --backend`.
    #[arg(long, default_value = "auto")]
    pub backend: EngineChoice,
    /// Path of libonnxruntime.so, as `serve --ort-library`.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_library: Option<PathBuf>,
    /// Replace what the output folder holds.
    #[arg(long)]
    pub replace: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {reason}")]
    Folder { path: PathBuf, reason: String },
    #[error("{0} already holds files; choose another --output or pass --replace")]
    OutputExists(PathBuf),
    #[error("Python {python}: {reason}")]
    Python { python: String, reason: String },
    #[error("checking the converted model: {0}")]
    Check(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// How an import ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    /// Converted and within tolerance: the service is written.
    Served,
    /// Converted, but the answers differ beyond tolerance (or in shape): nothing is kept.
    Refused,
    /// No converter takes it: left to the entry-script backend.
    NotConvertible,
}

impl ImportOutcome {
    pub fn exit_code(self) -> i32 {
        match self {
            ImportOutcome::Served => 0,
            ImportOutcome::Refused => 2,
            ImportOutcome::NotConvertible => 3,
        }
    }
}

/// Runs an import, saying what it finds and does on stderr; the report (also written to
/// `import-report.json`) is returned for stdout.
pub async fn run(args: &ImportArgs) -> Result<(ImportOutcome, serde_json::Value), ImportError> {
    let found = AzureFolder::inspect(&args.dir, args.model_dir.as_deref())?;
    let shown = |p: &std::path::Path| {
        p.strip_prefix(&found.root)
            .map(|r| r.display().to_string())
            .unwrap_or_else(|_| p.display().to_string())
    };
    eprintln!("{}:", found.root.display());
    eprintln!("  entry script       {}", shown(&found.entry_script));
    let models: Vec<String> = found.pickles.iter().map(|p| shown(p)).collect();
    eprintln!(
        "  pickled models     {}",
        if models.is_empty() {
            "none".into()
        } else {
            models.join(", ")
        }
    );
    if !found.onnx_files.is_empty() {
        let onnx: Vec<String> = found.onnx_files.iter().map(|p| shown(p)).collect();
        eprintln!(
            "  ONNX files         {} (not converted: serve them with a model.toml of your own)",
            onnx.join(", ")
        );
    }
    eprintln!("  AZUREML_MODEL_DIR  {}", found.model_dir.display());
    eprintln!(
        "  deploymentconfig   {}",
        found
            .deployment_config
            .as_deref()
            .map(shown)
            .unwrap_or_else(|| "none (serve's defaults apply)".into())
    );
    let layout = ServiceLayout {
        root: args.output.clone(),
        model: args
            .name
            .as_deref()
            .map(folder::model_name_from)
            .unwrap_or_else(|| found.model_name()),
    };
    layout.prepare(args.replace)?;
    let python = convert::find_python(args.python.as_deref());
    let conversion = convert::convert(&ConversionRequest {
        python: &python,
        entry_script: &found.entry_script,
        source_dir: &found.source_dir,
        model_dir: &found.model_dir,
        onnx: &layout.onnx(),
        samples: args.samples.as_deref(),
    });
    let conversion = match conversion {
        Ok(conversion) => conversion,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&layout.root);
            return Err(e);
        }
    };
    let mut report = json!({
        "folder": found.root,
        "entry_script": found.entry_script,
        "model": layout.model,
        "python": conversion.python,
        "model_class": conversion.model_class,
        "framework": conversion.framework,
        "method": conversion.method,
        "sample": conversion.sample_source,
        "versions": conversion.versions,
    });
    if conversion.status == ConversionStatus::NotConvertible {
        let reason = conversion.reason.clone().unwrap_or_default();
        eprintln!("not converted: {reason}");
        eprintln!(
            "  nothing was written; serve the entry script as it is: modelpod serve \
             --inference-config {}/inferenceconfig.json --python {}",
            args.dir.display(),
            args.python
                .as_deref()
                .unwrap_or(std::path::Path::new("python3"))
                .display()
        );
        let _ = std::fs::remove_dir_all(&layout.root);
        report["outcome"] = json!("not_convertible");
        report["reason"] = json!(reason);
        return Ok((ImportOutcome::NotConvertible, report));
    }
    eprintln!(
        "converted {} {}() ({}) to ONNX: inputs {}, output \"{}\"{}",
        conversion.model_class.as_deref().unwrap_or("?"),
        conversion.method.as_deref().unwrap_or("?"),
        conversion.framework.as_deref().unwrap_or("?"),
        conversion
            .inputs
            .iter()
            .map(|i| format!("{} {}", i.name, i.onnx_type))
            .collect::<Vec<_>>()
            .join(", "),
        conversion.output.as_deref().unwrap_or("?"),
        if conversion.squeeze { ", squeezed" } else { "" }
    );
    std::fs::write(
        layout
            .model_dir()
            .join(modelpod_scoring::manifest::MANIFEST_FILE),
        service::manifest_text(&conversion, &found.entry_script),
    )?;
    if let Some(config) = &found.deployment_config {
        std::fs::copy(config, layout.deployment_config())?;
    }
    let request = conversion.request.clone().unwrap_or(json!({}));
    let expected = conversion
        .expected
        .clone()
        .unwrap_or(serde_json::Value::Null);
    let checked = check::score_in_process(
        &layout.repository(),
        &layout.model,
        args.backend,
        args.ort_library.clone(),
        &request,
    )
    .await;
    let (answer, engine) = match checked {
        Ok(answered) => answered,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&layout.root);
            return Err(e);
        }
    };
    let comparison = compare(&expected, &answer);
    report["inputs"] = json!(conversion.inputs);
    report["input_form"] = json!(conversion.input_form);
    report["output"] = json!(conversion.output);
    report["squeeze"] = json!(conversion.squeeze);
    report["engine"] = json!(engine);
    report["tolerance"] = json!(args.tolerance);
    report["comparison"] = json!(comparison);
    let rows = request["data"].as_array().map_or(1, Vec::len);
    if !comparison.within(args.tolerance) {
        let why = comparison.mismatch.clone().unwrap_or_else(|| {
            format!(
                "the largest difference, {:.3e} ({:.3e} scaled) at {}, is above the tolerance {:e}",
                comparison.largest_difference,
                comparison.largest_scaled_difference,
                comparison.at,
                args.tolerance
            )
        });
        eprintln!(
            "refused: served on {engine}, the answer to the sample ({rows} rows) differs from run()'s: {why}"
        );
        eprintln!(
            "  nothing was kept; the entry-script backend can serve this deployment as it is"
        );
        let _ = std::fs::remove_dir_all(&layout.root);
        report["outcome"] = json!("refused");
        report["reason"] = json!(why);
        return Ok((ImportOutcome::Refused, report));
    }
    eprintln!(
        "checked on {engine} against run() on the sample ({rows} rows, {}): {} numbers, largest difference {:.3e} ({:.3e} scaled, tolerance {:e}); {} texts equal",
        conversion.sample_source.as_deref().unwrap_or("?"),
        comparison.numbers,
        comparison.largest_difference,
        comparison.largest_scaled_difference,
        args.tolerance,
        comparison.exact
    );
    report["outcome"] = json!("served");
    std::fs::write(
        layout.check_file(),
        serde_json::to_vec_pretty(&json!({"request": request, "expected": expected}))
            .expect("JSON values serialise"),
    )?;
    std::fs::write(
        layout.report(),
        serde_json::to_vec_pretty(&report).expect("JSON values serialise"),
    )?;
    let config = if found.deployment_config.is_some() {
        format!(
            " --deployment-config {}",
            layout.deployment_config().display()
        )
    } else {
        String::new()
    };
    eprintln!(
        "wrote {}; serve it with:\n  modelpod serve --model-repository {}{config}",
        layout.root.display(),
        layout.repository().display()
    );
    Ok((ImportOutcome::Served, report))
}
