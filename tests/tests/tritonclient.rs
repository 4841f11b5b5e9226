//! The official `tritonclient` Python package, unmodified, as an Open Inference Protocol v2
//! client of `modelpod serve` (JSON and binary tensors, metadata, config, repository API).

use modelpod_tests::{fixtures, serve_args, start, workspace_root};
use std::process::Command;

#[test]
fn tritonclient_speaks_to_modelpod() {
    let python = workspace_root().join(".venv/bin/python");
    if !python.exists() {
        assert!(
            std::env::var_os("MODELPOD_TEST_REQUIRE_PYTHON").is_none_or(|v| v != "1"),
            "MODELPOD_TEST_REQUIRE_PYTHON=1 but .venv is missing: run scripts/setup.sh"
        );
        eprintln!("no .venv (scripts/setup.sh): skipped");
        return;
    }
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
