//! `modelpod import` on Azure ML deployment folders as users bring them (score.py with
//! inference_schema, a joblib pickle, inferenceconfig.json, deploymentconfig.json), written by
//! tests/python/make_azure_deployments.py: each converted model is served and every answer
//! compared with what the pickled model answered through run().

use modelpod_tests::process::{ServeBuilder, http};
use modelpod_tests::{venv_program, workspace_root};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// Served answers against the pickled model's: texts equal, numbers within 1e-4 scaled by
/// max(1, |expected|) (FP32 against scikit-learn's float64).
const TOLERANCE: f64 = 1e-4;

fn deployments() -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    let python = venv_program("python")?;
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new(&python)
        .arg(workspace_root().join("tests/python/make_azure_deployments.py"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(made.success(), "make_azure_deployments.py failed");
    Some((dir, python))
}

fn import(folder: &Path, output: &Path, python: &Path, extra: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_modelpod"))
        .arg("import")
        .arg(folder)
        .arg("--output")
        .arg(output)
        .arg("--python")
        .arg(python)
        .args(extra)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}):\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

fn assert_close(expected: &Value, actual: &Value, case: &str) {
    let comparison = modelpod_import::compare(expected, actual);
    assert!(
        comparison.within(TOLERANCE),
        "{case}: {comparison:?}\nexpected {expected}\nserved {actual}"
    );
}

#[test]
fn imported_scikit_learn_xgboost_and_lightgbm_models_answer_as_the_pickles_did() {
    let Some((dir, python)) = deployments() else {
        return;
    };
    let cases = [
        ("iris_forest", "scikit-learn", "predict"),
        ("diabetes_boosting", "scikit-learn", "predict"),
        ("churn_pipeline", "scikit-learn", "predict_proba"),
        ("iris_xgboost", "xgboost", "predict_proba"),
        ("diabetes_lightgbm", "lightgbm", "predict"),
    ];
    for (case, framework, method) in cases {
        let folder = dir.path().join(case);
        let service = dir.path().join(format!("{case}-service"));
        // Checked at import on the entry script's own input_schema sample.
        let (code, report) = import(&folder, &service, &python, &[]);
        assert_eq!(code, 0, "{case}: {report:#}");
        assert_eq!(report["outcome"], "served", "{case}");
        assert_eq!(report["framework"], framework, "{case}");
        assert_eq!(report["method"], method, "{case}");
        assert_eq!(report["model"], case);
        assert!(service.join("deploymentconfig.json").is_file());
        assert!(service.join("check.json").is_file());
        let server = ServeBuilder::new(env!("CARGO_BIN_EXE_modelpod"), &service.join("models"))
            .args([
                "--deployment-config".as_ref(),
                service.join("deploymentconfig.json").as_os_str(),
            ])
            .start();
        let requests: Value =
            serde_json::from_str(&std::fs::read_to_string(folder.join("requests.json")).unwrap())
                .unwrap();
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(folder.join("expected.json")).unwrap())
                .unwrap();
        // Every row's answer, in one request as Azure clients send it.
        let reply = http()
            .post(server.url("/score"))
            .json(&requests)
            .send()
            .unwrap();
        assert_eq!(reply.status(), 200, "{case}");
        let answer: Value = reply.json().unwrap();
        assert_close(&expected, &answer, case);
        // And row by row.
        for (i, row) in requests["data"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .step_by(7)
        {
            let reply = http()
                .post(server.url("/score"))
                .json(&serde_json::json!({ "data": [row] }))
                .send()
                .unwrap();
            assert_eq!(reply.status(), 200, "{case} row {i}");
            let answer: Value = reply.json().unwrap();
            assert_close(&Value::Array(vec![expected[i].clone()]), &answer, case);
        }
    }
}

#[test]
fn imports_that_cannot_be_kept_say_why_and_write_nothing() {
    let Some((dir, python)) = deployments() else {
        return;
    };
    // A model class of the user's own: left to the entry-script backend.
    let service = dir.path().join("custom-service");
    let samples = dir.path().join("custom_doubler/requests.json");
    let (code, report) = import(
        &dir.path().join("custom_doubler"),
        &service,
        &python,
        &["--samples", samples.to_str().unwrap()],
    );
    assert_eq!(code, 3, "{report:#}");
    assert_eq!(report["outcome"], "not_convertible");
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("doubler.Doubler is not a scikit-learn"),
        "{report:#}"
    );
    assert!(!service.exists());
    // An entry script whose run() post-processes the prediction: the converted graph cannot
    // answer what it did, so the check refuses it.
    let folder = dir.path().join("diabetes_boosting");
    let script = std::fs::read_to_string(folder.join("score.py")).unwrap();
    std::fs::write(
        folder.join("score.py"),
        script.replace(
            "model.predict(data).tolist()",
            "(model.predict(data) * 2).tolist()",
        ),
    )
    .unwrap();
    let service = dir.path().join("doubled-service");
    let (code, report) = import(&folder, &service, &python, &[]);
    assert_eq!(code, 2, "{report:#}");
    assert_eq!(report["outcome"], "refused");
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("above the tolerance"),
        "{report:#}"
    );
    assert!(!service.exists());
    // An output folder that holds files is not overwritten without --replace.
    std::fs::create_dir_all(&service).unwrap();
    std::fs::write(service.join("keep.txt"), "mine").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_modelpod"))
        .args([
            "import".as_ref(),
            folder.as_os_str(),
            "--output".as_ref(),
            service.as_os_str(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds files"));
    assert_eq!(
        std::fs::read_to_string(service.join("keep.txt")).unwrap(),
        "mine"
    );
}
