//! `modelpod sku` as a user runs it, and `--require-accelerator` at start-up.

use std::process::Command;

fn modelpod() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_modelpod"));
    // The machine's own settings must not leak into what is tested.
    for var in [
        "MODELPOD_NODE_SKU",
        "MODELPOD_NODE_INSTANCE_TYPE",
        "MODELPOD_NODE_LABELS_FILE",
        "MODELPOD_IMDS",
    ] {
        command.env_remove(var);
    }
    command
}

#[test]
fn sku_reports_the_table_the_probes_and_the_plan_as_json() {
    let output = modelpod()
        .args(["sku", "--json", "--node-sku", "Standard_NP20s"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["node"]["vm_size"], "Standard_NP20s");
    assert_eq!(report["node"]["source"], "flag");
    assert_eq!(report["expected"]["accelerator"], "xilinx_fpga");
    assert_eq!(report["expected"]["device_count"], 2);
    assert!(report["cpus"].as_u64().unwrap() >= 1);
    let candidates = report["plan"]["candidates"].as_array().unwrap();
    let cpu = candidates
        .iter()
        .find(|c| c["engine"] == "ort-cpu")
        .expect("the CPU is always planned");
    assert_eq!(cpu["devices"], serde_json::json!(["cpu"]));
    // No Xilinx card here: the plan says so.
    if report["xilinx"]["devices"].as_array().unwrap().is_empty() {
        assert!(
            report["plan"]["mismatch"]
                .as_str()
                .unwrap()
                .contains("Xilinx")
        );
    }
}

#[test]
fn sku_text_names_an_unknown_size_plainly() {
    let output = modelpod().args(["sku"]).output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("VM size:   unknown"), "{text}");
    assert!(text.contains("engines:"), "{text}");
}

#[test]
fn a_gpu_size_without_a_gpu_refuses_to_start_when_an_accelerator_is_required() {
    let no_gpu = modelpod_accel::probe::cuda_devices().devices.is_empty();
    if !no_gpu {
        return; // On a GPU machine the promise holds; nothing to refuse.
    }
    let repository = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/models");
    let output = modelpod()
        .args([
            "serve",
            "--model-repository",
            repository,
            "--port",
            "0",
            "--host",
            "127.0.0.1",
        ])
        .args(["--node-sku", "Standard_NC6s_v3", "--require-accelerator"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--require-accelerator: the VM size promises NVIDIA GPUs"),
        "{stderr}"
    );
}

#[test]
fn a_reader_that_went_away_is_not_a_crash() {
    // `modelpod sku --json | head -0`: the pipe's read end is closed before anything is written.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = modelpod()
        .args(["sku", "--json", "--node-sku", "Standard_NP20s"])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `modelpod sku --json` with `extra` flags.
fn sku_json(command: &mut Command, extra: &[&std::ffi::OsStr]) -> serde_json::Value {
    let output = command
        .args(["sku", "--json"])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn planned_engines(report: &serde_json::Value) -> Vec<String> {
    report["plan"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["engine"].as_str().unwrap().to_string())
        .collect()
}

/// Run from outside the checkout, with nothing pointing at ONNX Runtime: the plan leaves its
/// engines out and says where it looked; with the checkout's virtualenv active, its
/// `onnxruntime` wheel is found.
#[test]
fn onnx_runtime_is_found_from_anywhere_or_left_out_of_the_plan_with_the_places_tried() {
    let elsewhere = tempfile::tempdir().unwrap();
    let mut bare = modelpod();
    bare.current_dir(elsewhere.path())
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("VIRTUAL_ENV");
    let report = sku_json(&mut bare, &[]);
    let notes = report["plan"]["notes"].to_string();
    assert!(
        !planned_engines(&report)
            .iter()
            .any(|e| e.starts_with("ort-")),
        "{report}"
    );
    assert!(
        notes.contains("ONNX Runtime engines left out") && notes.contains("/opt/modelpod/lib"),
        "{notes}"
    );

    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv");
    if !venv.join("lib").is_dir() {
        assert!(
            std::env::var_os("MODELPOD_TEST_REQUIRE_ORT").is_none(),
            "no virtualenv at {}: run scripts/setup.sh",
            venv.display()
        );
        return;
    }
    let mut in_venv = modelpod();
    in_venv
        .current_dir(elsewhere.path())
        .env_remove("ORT_DYLIB_PATH")
        .env("VIRTUAL_ENV", &venv);
    let report = sku_json(&mut in_venv, &[]);
    assert!(
        planned_engines(&report).contains(&"ort-cpu".to_string()),
        "{report}"
    );
}

/// A library that is there but does not load is named with its error, and only tract is planned.
#[test]
fn a_library_that_does_not_load_is_named_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let library = dir.path().join("libonnxruntime.so");
    std::fs::write(&library, b"not a shared object").unwrap();
    let report = sku_json(
        &mut modelpod(),
        &["--ort-library".as_ref(), library.as_ref()],
    );
    assert_eq!(planned_engines(&report), ["tract-cpu"], "{report}");
    let notes = report["plan"]["notes"].to_string();
    assert!(notes.contains(&library.display().to_string()), "{notes}");
}
