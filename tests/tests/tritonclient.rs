//! The official `tritonclient` Python package, unmodified, as an Open Inference Protocol v2
//! client of `modelpod serve`.

use modelpod_tests::{fixtures, serve_args, start, workspace_root};
use std::process::Command;

/// Runs a check script from tests/python with `args`; it must report `N passed, 0 failed`.
fn run_check(script: &str, args: &[String]) {
    let Some(python) = modelpod_tests::venv_program("python") else {
        return;
    };
    let output = Command::new(python)
        .arg(workspace_root().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

/// JSON and binary tensors, metadata, config, the repository API (tritonclient.http).
#[test]
fn tritonclient_speaks_to_modelpod() {
    let server = start(serve_args(&fixtures()));
    run_check("tritonclient_check.py", &[server.address.to_string()]);
}

/// gRPC, shared memory, statistics, classification, streaming, model control, compression
/// and the refusals, through `tritonclient.grpc`, `tritonclient.http` and
/// `tritonclient.utils.shared_memory`.
#[test]
fn tritonclient_grpc_and_extensions_work_against_modelpod() {
    let server = start(serve_args(&fixtures()));
    let grpc = server.grpc_address.expect("gRPC is on");
    run_check(
        "triton_protocol_check.py",
        &[server.address.to_string(), grpc.to_string()],
    );
}
