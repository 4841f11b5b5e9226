//! The conformance suite every engine runs: each fixture (and each example model, when
//! `scripts/setup.sh` has fetched them) against reference outputs from ONNX Runtime in Python,
//! within the tolerance stated in `modelpod_tests::ABS_TOLERANCE` / `REL_TOLERANCE`.
//!
//! The engines are tract and ONNX Runtime on the CPU, plus ONNX Runtime CUDA and tract CUDA on
//! cuda:0 when the probe finds a GPU. `MODELPOD_CONFORMANCE_ENGINES=ort-cuda,tract-cuda,...`
//! names the engines instead (ort-tensorrt needs TensorRT's libraries, so it runs only when
//! named); a named engine that cannot load fails the suite rather than being skipped.

use modelpod_accel::{Device, DeviceKind, EngineKind, EngineOptions, load_model, probe};
use modelpod_tests::{compare, ort_available, reference_cases, workspace_root};
use std::path::Path;

fn engines() -> Vec<EngineKind> {
    if let Ok(named) = std::env::var("MODELPOD_CONFORMANCE_ENGINES") {
        return named
            .split(',')
            .map(|name| match name.trim().parse() {
                Ok(modelpod_accel::EngineChoice::Exactly(kind)) => kind,
                _ => panic!("MODELPOD_CONFORMANCE_ENGINES: '{name}' is not an engine"),
            })
            .collect();
    }
    let mut engines = vec![EngineKind::TractCpu];
    if ort_available() {
        engines.push(EngineKind::OrtCpu);
    } else {
        eprintln!("ONNX Runtime not installed: conformance runs on tract only");
    }
    match probe::cuda_devices() {
        probe if !probe.devices.is_empty() => {
            engines.extend([EngineKind::OrtCuda, EngineKind::TractCuda]);
        }
        probe => eprintln!(
            "no CUDA device ({}): GPU engines not run",
            probe.unavailable.unwrap_or_default()
        ),
    }
    engines
}

fn device_for(engine: EngineKind) -> Device {
    match engine.device_kind() {
        DeviceKind::Cpu => Device::Cpu,
        DeviceKind::Gpu => Device::Cuda(0),
        DeviceKind::Fpga => Device::Fpga(0),
    }
}

/// Runs every reference case of every model in `repository` with `engine`.
fn check_repository(
    repository: &Path,
    references: &Path,
    engine: EngineKind,
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
            engine,
            device_for(engine),
            &EngineOptions::default(),
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

/// `skip` lists "engine:model" pairs an engine is known not to support.
fn skip_for(skip: &[&str], engine: EngineKind, model: &str) -> bool {
    skip.contains(&format!("{engine}:{model}").as_str())
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
            &["tract-cpu:minilm", "tract-cuda:minilm"],
        );
        assert!(checked >= 6, "{engine}: only {checked} cases ran");
    }
}
