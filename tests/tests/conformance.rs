//! The conformance suite every engine runs: each fixture (and each example model, when
//! `scripts/setup.sh` has fetched them) against reference outputs from ONNX Runtime in Python,
//! within the tolerance stated in `modelpod_tests::ABS_TOLERANCE` / `REL_TOLERANCE`.

use modelpod_accel::{EngineChoice, EngineOptions, load_model};
use modelpod_tests::{compare, ort_available, reference_cases, workspace_root};
use std::path::Path;

fn engines() -> Vec<EngineChoice> {
    let mut engines = vec![EngineChoice::Tract];
    if ort_available() {
        engines.push(EngineChoice::Ort);
    } else {
        eprintln!("ONNX Runtime not installed: conformance runs on tract only");
    }
    engines
}

/// Runs every reference case of every model in `repository` with `engine`.
fn check_repository(
    repository: &Path,
    references: &Path,
    engine: EngineChoice,
    skip: &[&str],
) -> usize {
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(references)
        .expect("reference folder")
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if skip_for(skip, engine, &name) {
            eprintln!("{name}: skipped on {engine}");
            continue;
        }
        let model = match load_model(
            &repository.join(&name).join("1/model.onnx"),
            &EngineOptions {
                choice: engine,
                intra_op_threads: 1,
            },
        ) {
            Ok(model) => model,
            Err(e) => {
                failures.push(format!("{name} on {engine}: {e}"));
                continue;
            }
        };
        let mut backend = model.instantiate().expect("session");
        for (i, case) in reference_cases(&path).into_iter().enumerate() {
            let inputs = model
                .signature()
                .inputs
                .iter()
                .map(|spec| case.inputs[&spec.name].to_tensor())
                .collect();
            let outputs = match backend.run(inputs) {
                Ok(outputs) => outputs,
                Err(e) => {
                    failures.push(format!("{name} case {i} on {engine}: {e}"));
                    continue;
                }
            };
            for (spec, actual) in model.signature().outputs.iter().zip(&outputs) {
                if let Some(expected) = case.outputs.get(&spec.name)
                    && let Err(e) = compare(&spec.name, actual, expected)
                {
                    failures.push(format!("{name} case {i} on {engine}: {e}"));
                }
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
    checked
}

fn engine_name(engine: EngineChoice) -> &'static str {
    match engine {
        EngineChoice::Tract => "tract",
        EngineChoice::Ort => "ort",
        EngineChoice::Auto => "auto",
    }
}

/// `skip` lists "engine:model" pairs an engine is known not to support.
fn skip_for(skip: &[&str], engine: EngineChoice, model: &str) -> bool {
    skip.contains(&format!("{}:{model}", engine_name(engine)).as_str())
}

#[test]
fn fixtures_match_onnx_runtime_on_every_engine() {
    let root = workspace_root().join("tests/fixtures");
    for engine in engines() {
        let checked = check_repository(&root.join("models"), &root.join("reference"), engine, &[]);
        assert!(checked >= 15, "{engine}: only {checked} cases ran");
    }
}

#[test]
fn example_models_match_onnx_runtime_on_every_engine() {
    let root = workspace_root().join("examples");
    if !root.join("reference").is_dir() {
        eprintln!("examples not fetched (scripts/setup.sh): skipped");
        return;
    }
    for engine in engines() {
        // tract 0.23 cannot infer the shapes of this exported attention graph (a broadcast
        // `Where` over [batch, 1, seq, seq]); ONNX Runtime serves it.
        let checked = check_repository(
            &root.join("models"),
            &root.join("reference"),
            engine,
            &["tract:minilm"],
        );
        assert!(checked >= 6, "{engine}: only {checked} cases ran");
    }
}
