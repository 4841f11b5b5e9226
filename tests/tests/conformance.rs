//! The conformance suite every engine runs: each fixture and each example model against
//! reference outputs from ONNX Runtime in Python, within the tolerance stated in
//! `modelpod_tests::ABS_TOLERANCE` / `REL_TOLERANCE`.
//!
//! One test per engine and model, named `ENGINE::SUITE_MODEL`, so
//! `cargo test -p modelpod-tests --test conformance ort_cpu::` runs one engine and `... minilm`
//! one model everywhere. Each engine's known gaps are declared beside it; a gap's test passes
//! while the gap holds and fails once the engine handles the model, so the list cannot go stale.
//!
//! tract and ONNX Runtime on the CPU always run (ONNX Runtime's library must be installed when
//! `MODELPOD_TEST_REQUIRE_ORT=1`). ONNX Runtime CUDA and tract CUDA run on cuda:0 when the
//! probe finds a GPU; `MODELPOD_CONFORMANCE_ENGINES=ort-cuda,tract-cuda,...` demands engines
//! instead (ort-tensorrt needs TensorRT's libraries, so it runs only when named), and a
//! demanded engine that cannot load fails rather than being skipped.

use modelpod_accel::{
    Device, DeviceKind, EngineChoice, EngineKind, EngineOptions, load_model, probe,
};
use modelpod_tests::{compare, ort_available, reference_cases, workspace_root};

#[derive(Clone, Copy)]
enum Suite {
    /// `tests/fixtures`: tiny generated models, committed.
    Fixtures,
    /// `examples`: the real models `scripts/setup.sh` fetches.
    Examples,
}

/// The engines demanded by `MODELPOD_CONFORMANCE_ENGINES`, if it is set.
fn demanded() -> Option<Vec<EngineKind>> {
    let named = std::env::var("MODELPOD_CONFORMANCE_ENGINES").ok()?;
    Some(
        named
            .split(',')
            .map(|name| match name.trim().parse() {
                Ok(EngineChoice::Exactly(kind)) => kind,
                _ => panic!("MODELPOD_CONFORMANCE_ENGINES: '{name}' is not an engine"),
            })
            .collect(),
    )
}

/// Whether `engine` runs here: demanded, or found (CPU engines always; ONNX Runtime when its
/// library loads; GPU engines when a CUDA device is found).
fn runs_here(engine: EngineKind) -> Result<(), String> {
    if let Some(demanded) = demanded() {
        return if demanded.contains(&engine) {
            Ok(())
        } else {
            Err("not named in MODELPOD_CONFORMANCE_ENGINES".into())
        };
    }
    match engine {
        EngineKind::TractCpu => Ok(()),
        EngineKind::OrtCpu if ort_available() => Ok(()),
        EngineKind::OrtCpu => Err("ONNX Runtime is not installed".into()),
        EngineKind::OrtCuda | EngineKind::TractCuda => {
            let probe = probe::cuda_devices();
            if probe.devices.is_empty() {
                Err(format!(
                    "no CUDA device ({})",
                    probe.unavailable.unwrap_or_default()
                ))
            } else {
                Ok(())
            }
        }
        other => Err(format!("{other} runs only when named")),
    }
}

fn device_for(engine: EngineKind) -> Device {
    match engine.device_kind() {
        DeviceKind::Cpu => Device::Cpu,
        DeviceKind::Gpu => Device::Cuda(0),
        DeviceKind::Fpga => Device::Fpga(0),
    }
}

/// Every reference case of `model` on `engine`; the failures, described.
fn failures(engine: EngineKind, suite: Suite, model_name: &str) -> Result<Vec<String>, String> {
    let root = match suite {
        Suite::Fixtures => workspace_root().join("tests/fixtures"),
        Suite::Examples => workspace_root().join("examples"),
    };
    let references = root.join("reference").join(format!("{model_name}.json"));
    if !references.is_file() {
        return Err(format!(
            "{} is missing: run scripts/setup.sh",
            references.display()
        ));
    }
    let model = match load_model(
        &root.join("models").join(model_name).join("1/model.onnx"),
        engine,
        device_for(engine),
        &EngineOptions::default(),
    ) {
        Ok(model) => model,
        Err(e) => return Ok(vec![format!("load: {e}")]),
    };
    let mut backend = model.instantiate().expect("session");
    let mut failures = Vec::new();
    let cases = reference_cases(&references);
    assert!(!cases.is_empty(), "{} has no cases", references.display());
    for (i, case) in cases.into_iter().enumerate() {
        let inputs = model
            .signature()
            .inputs
            .iter()
            .map(|spec| case.inputs[&spec.name].to_tensor())
            .collect();
        let outputs = match backend.run(inputs) {
            Ok(outputs) => outputs,
            Err(e) => {
                failures.push(format!("case {i}: {e}"));
                continue;
            }
        };
        for (spec, actual) in model.signature().outputs.iter().zip(&outputs) {
            if let Some(expected) = case.outputs.get(&spec.name)
                && let Err(e) = compare(&spec.name, actual, expected)
            {
                failures.push(format!("case {i}: {e}"));
            }
        }
    }
    Ok(failures)
}

/// One conformance test: the model matches its references on the engine, or, for a declared
/// gap, still does not.
fn check(engine: EngineKind, gaps: &[&str], suite: Suite, model: &str) {
    if let Err(why) = runs_here(engine) {
        eprintln!("{engine} does not run here ({why}): {model} not checked");
        return;
    }
    let failures = match failures(engine, suite, model) {
        Ok(failures) => failures,
        Err(missing) if std::env::var_os("MODELPOD_TEST_REQUIRE_ORT").is_some() => {
            panic!("{missing}")
        }
        Err(missing) => {
            eprintln!("{missing}: {model} not checked");
            return;
        }
    };
    if gaps.contains(&model) {
        assert!(
            !failures.is_empty(),
            "{model} is declared a gap of {engine} but now matches its references: remove it from the gaps"
        );
    } else {
        assert!(
            failures.is_empty(),
            "{model} on {engine}:\n{}",
            failures.join("\n")
        );
    }
}

/// One module per engine, with one test per model; `gaps` are the models the engine is known
/// not to run, each with its reason beside it.
macro_rules! engine_suite {
    ($module:ident, $engine:expr, gaps = [$($gap:literal),* $(,)?]) => {
        mod $module {
            use super::*;

            const ENGINE: EngineKind = $engine;
            const GAPS: &[&str] = &[$($gap),*];

            #[test]
            fn fixture_mlp() { check(ENGINE, GAPS, Suite::Fixtures, "mlp") }
            #[test]
            fn fixture_cnn() { check(ENGINE, GAPS, Suite::Fixtures, "cnn") }
            #[test]
            fn fixture_embed() { check(ENGINE, GAPS, Suite::Fixtures, "embed") }
            #[test]
            fn fixture_two_inputs() { check(ENGINE, GAPS, Suite::Fixtures, "two_inputs") }
            #[test]
            fn fixture_int_ops() { check(ENGINE, GAPS, Suite::Fixtures, "int_ops") }
            #[test]
            fn fixture_categories() { check(ENGINE, GAPS, Suite::Fixtures, "categories") }
            #[test]
            fn fixture_half_ops() { check(ENGINE, GAPS, Suite::Fixtures, "half_ops") }
            #[test]
            fn fixture_bf16_ops() { check(ENGINE, GAPS, Suite::Fixtures, "bf16_ops") }
            #[test]
            fn fixture_accumulator() { check(ENGINE, GAPS, Suite::Fixtures, "accumulator") }
            #[test]
            fn example_iris() { check(ENGINE, GAPS, Suite::Examples, "iris") }
            #[test]
            fn example_digits() { check(ENGINE, GAPS, Suite::Examples, "digits") }
            #[test]
            fn example_image_cnn() { check(ENGINE, GAPS, Suite::Examples, "image_cnn") }
            #[test]
            fn example_minilm() { check(ENGINE, GAPS, Suite::Examples, "minilm") }
        }
    };
}

// tract 0.23 mis-infers the exported attention mask (a broadcast `Where` over
// [batch, 1, seq, seq] comes out [batch, 1, 1, seq]); ONNX Runtime serves it. tract has no
// bfloat16 type, and refuses a model with BF16 inputs or outputs when it loads.
engine_suite!(
    tract_cpu,
    EngineKind::TractCpu,
    gaps = ["minilm", "bf16_ops"]
);
engine_suite!(ort_cpu, EngineKind::OrtCpu, gaps = []);
engine_suite!(ort_cuda, EngineKind::OrtCuda, gaps = []);
// The same graphs as tract on the CPU: the attention mask's `Where`, and bfloat16.
engine_suite!(
    tract_cuda,
    EngineKind::TractCuda,
    gaps = ["minilm", "bf16_ops"]
);
engine_suite!(ort_tensorrt, EngineKind::OrtTensorrt, gaps = []);
