//! The official `tritonclient` Python package, unmodified, as an Open Inference Protocol v2
//! client of `modelpod serve` (JSON and binary tensors, metadata, config, repository API).

use modelpod_tests::{fixtures, serve_args, start, workspace_root};
use std::process::Command;

#[test]
fn tritonclient_speaks_to_modelpod() {
    let Some(python) = modelpod_tests::venv_program("python") else {
        return;
    };
    let server = start(serve_args(&fixtures()));
    let output = Command::new(python)
        .arg(workspace_root().join("tests/python/tritonclient_check.py"))
        .arg(server.address.to_string())
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tritonclient checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

/// gRPC, shared memory, statistics, classification, streaming, model control and the
/// refusals, through `tritonclient.grpc`, `tritonclient.http` and
/// `tritonclient.utils.shared_memory` (tests/python/triton_protocol_check.py).
#[test]
fn tritonclient_grpc_and_extensions_work_against_modelpod() {
    let Some(python) = modelpod_tests::venv_program("python") else {
        return;
    };
    let server = start(serve_args(&fixtures()));
    let output = Command::new(python)
        .arg(workspace_root().join("tests/python/triton_protocol_check.py"))
        .arg(server.address.to_string())
        .arg(server.grpc_address.expect("gRPC is on").to_string())
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "triton protocol checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
