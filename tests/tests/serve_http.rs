//! `modelpod serve` over real HTTP on port 0: both protocols, batching, admission, deadlines,
//! auth, hostile input, failure isolation and the repository API.

use modelpod_scoring::v2::INFERENCE_HEADER_CONTENT_LENGTH;
use modelpod_tests::{
    client, compare, fixtures, metric_sum, metrics_text, reference_cases, serve_args,
    slow_fixtures, slow_infer_body, start, workspace_root,
};
use reqwest::StatusCode;
use reqwest::blocking::Response;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn json_of(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")),
    )
}

/// An error reply: the status and a JSON body with the message under both protocols' keys.
fn expect_error(response: Response, status: u16, needle: &str) -> Value {
    let (got, body) = json_of(response);
    assert_eq!(got.as_u16(), status, "{body}");
    let message = body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {body}"));
    assert_eq!(body["error"], body["message"]);
    assert!(body["error_type"].is_string());
    assert!(message.contains(needle), "'{message}' lacks '{needle}'");
    body
}

#[test]
fn azure_score_health_and_request_ids() {
    let server = start(serve_args(&fixtures()));
    let http = client();
    let health = http.get(server.url("/")).send().unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().unwrap(), "Healthy");

    let response = http
        .post(server.url("/score?model=mlp&version=1"))
        .header("x-ms-client-request-id", "client-42")
        .header("x-request-id", "req-7")
        .json(&json!({"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["x-ms-client-request-id"], "client-42");
    assert_eq!(headers["x-request-id"], "req-7");
    assert!(!headers["x-ms-request-id"].is_empty());
    assert!(
        headers["x-ms-run-fn-exec-ms"]
            .to_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            >= 0.0
    );
    let labels: Vec<String> = response.json().unwrap();
    assert_eq!(labels.len(), 2);
    assert!(
        labels
            .iter()
            .all(|l| ["setosa", "versicolor", "virginica"].contains(&l.as_str()))
    );

    // Several models and no ?model=: the caller must choose.
    expect_error(
        http.post(server.url("/score"))
            .json(&json!({"data": [[1, 2, 3, 4]]}))
            .send()
            .unwrap(),
        400,
        "?model=",
    );
    expect_error(
        http.post(server.url("/score?model=nope"))
            .json(&json!({"data": []}))
            .send()
            .unwrap(),
        404,
        "nope",
    );
    expect_error(
        http.post(server.url("/score?model=mlp&version=9"))
            .json(&json!({"data": []}))
            .send()
            .unwrap(),
        404,
        "version 9",
    );
    expect_error(
        http.post(server.url("/score?model=mlp&version=x"))
            .json(&json!({"data": []}))
            .send()
            .unwrap(),
        400,
        "version",
    );
    expect_error(
        http.get(server.url("/no/such/route")).send().unwrap(),
        404,
        "no route",
    );
}

#[test]
fn azure_score_runs_the_declared_pipeline() {
    // cnn's manifest: flat rows of 64 pixels (0..255) -> reshape [1,8,8] -> scale 1/255 -> model -> top 3.
    let server = start(serve_args(&fixtures()));
    let http = client();
    for case in reference_cases(&workspace_root().join("tests/fixtures/reference/cnn.json")) {
        let image = case.inputs["image"].to_tensor();
        let rows = image.shape()[0];
        let pixels: Vec<f64> = image
            .data()
            .to_f64_vec()
            .iter()
            .map(|x| (x / 0.0039215686).round())
            .collect();
        let data: Vec<&[f64]> = pixels.chunks(64).collect();
        let (status, body) = json_of(
            http.post(server.url("/score?model=cnn"))
                .json(&json!({"data": data}))
                .send()
                .unwrap(),
        );
        assert_eq!(status, 200, "{body}");
        let scores = case.outputs["scores"].to_tensor().data().to_f64_vec();
        for (row, top) in body.as_array().unwrap().iter().enumerate() {
            let expected = &scores[row * 10..(row + 1) * 10];
            let mut order: Vec<usize> = (0..10).collect();
            order.sort_by(|&a, &b| expected[b].total_cmp(&expected[a]));
            let got: Vec<u64> = top
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["index"].as_u64().unwrap())
                .collect();
            assert_eq!(
                got,
                order[..3].iter().map(|&i| i as u64).collect::<Vec<_>>(),
                "row {row} of {rows}"
            );
            assert!((top[0]["score"].as_f64().unwrap() - expected[order[0]]).abs() < 1e-3);
        }
    }
    // A row of the wrong length names the shape the pipeline wanted.
    expect_error(
        http.post(server.url("/score?model=cnn"))
            .json(&json!({"data": [[1, 2, 3]]}))
            .send()
            .unwrap(),
        422,
        "64 values",
    );
}

#[test]
fn v2_json_inference_matches_references() {
    let server = start(serve_args(&fixtures()));
    let http = client();
    for name in [
        "mlp",
        "cnn",
        "embed",
        "two_inputs",
        "int_ops",
        "categories",
        "half_ops",
        "bf16_ops",
    ] {
        for case in
            reference_cases(&workspace_root().join(format!("tests/fixtures/reference/{name}.json")))
        {
            let inputs: Vec<Value> = case
                .inputs
                .iter()
                .map(|(n, t)| json!({"name": n, "shape": t.shape, "datatype": t.datatype, "data": t.data}))
                .collect();
            let (status, body) = json_of(
                http.post(server.url(&format!("/v2/models/{name}/infer")))
                    .json(&json!({"id": "case", "inputs": inputs}))
                    .send()
                    .unwrap(),
            );
            assert_eq!(status, 200, "{name}: {body}");
            assert_eq!(body["model_name"], name);
            assert_eq!(body["id"], "case");
            for output in body["outputs"].as_array().unwrap() {
                let out_name = output["name"].as_str().unwrap();
                let actual = modelpod_tests::RefTensor {
                    datatype: output["datatype"].as_str().unwrap().into(),
                    shape: serde_json::from_value(output["shape"].clone()).unwrap(),
                    data: output["data"].as_array().unwrap().clone(),
                };
                compare(out_name, &actual.to_tensor(), &case.outputs[out_name])
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
}

#[test]
fn v2_binary_tensors_round_trip() {
    let server = start(serve_args(&fixtures()));
    let http = client();
    let case = &reference_cases(&workspace_root().join("tests/fixtures/reference/mlp.json"))[1];
    let input = case.inputs["input"].to_tensor();
    let bytes = input.data().to_le_bytes();
    let header = json!({
        "inputs": [{"name": "input", "shape": input.shape(), "datatype": "FP32", "parameters": {"binary_data_size": bytes.len()}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": true}}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&bytes);
    let response = http
        .post(server.url("/v2/models/mlp/versions/1/infer"))
        .header(INFERENCE_HEADER_CONTENT_LENGTH, header.len())
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let json_len: usize = response.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = response.bytes().unwrap();
    let head: Value = serde_json::from_slice(&body[..json_len]).unwrap();
    let output = &head["outputs"][0];
    assert_eq!(
        output["parameters"]["binary_data_size"].as_u64().unwrap() as usize,
        body.len() - json_len
    );
    let data = modelpod_accel::TensorData::from_le_bytes(
        modelpod_accel::DataType::Fp32,
        &body[json_len..],
    )
    .unwrap();
    let shape: Vec<usize> = serde_json::from_value(output["shape"].clone()).unwrap();
    compare(
        "logits",
        &modelpod_accel::Tensor::new(shape, data).unwrap(),
        &case.outputs["logits"],
    )
    .unwrap();

    // Declared binary sizes that do not add up are refused.
    let mut short = header.clone().into_bytes();
    short.extend_from_slice(&bytes[..4]);
    let response = http
        .post(server.url("/v2/models/mlp/infer"))
        .header(INFERENCE_HEADER_CONTENT_LENGTH, header.len())
        .body(short)
        .send()
        .unwrap();
    expect_error(response, 400, "binary data");
}

/// A v2 body with binary tensor data, as tritonclient sends it: the JSON header, then each
/// input's bytes; every output asked for in binary.
fn binary_infer(
    http: &reqwest::blocking::Client,
    url: &str,
    inputs: &[(&str, modelpod_accel::Tensor)],
) -> Response {
    let inputs: Vec<(String, modelpod_accel::Tensor)> = inputs
        .iter()
        .map(|(name, tensor)| (name.to_string(), tensor.clone()))
        .collect();
    let encoded = modelpod_scoring::v2::client::encode_request(&inputs, true);
    http.post(url)
        .header(
            INFERENCE_HEADER_CONTENT_LENGTH,
            encoded.json_len.expect("binary"),
        )
        .body(encoded.body)
        .send()
        .unwrap()
}

#[test]
fn text_tensors_over_score_and_both_v2_forms() {
    let server = start(serve_args(&fixtures()));
    let http = client();
    // Azure's /score: strings in, strings and integers out (two outputs: an object by name).
    let (status, body) = json_of(
        http.post(server.url("/score?model=categories"))
            .json(&json!({"data": [["cork", "atlantis"], ["são paulo", ""]]}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"code": [[12, -1], [14, -1]], "echo": [["cork", "atlantis"], ["são paulo", ""]]})
    );
    let answer = http
        .post(server.url("/score?model=categories"))
        .json(&json!({"data": [["cork", 7]]}))
        .send()
        .unwrap();
    expect_error(answer, 422, "element 1 (7) is not a valid BYTES value");

    // v2 binary: each string a 4-byte length and its bytes, both ways.
    let city = modelpod_accel::Tensor::new(
        vec![2, 2],
        vec![
            "dublin".to_string(),
            "x".repeat(300),
            "berlin".into(),
            "amsterdam".into(),
        ],
    )
    .unwrap();
    let url = server.url("/v2/models/categories/infer");
    let response = binary_infer(&http, &url, &[("city", city.clone())]);
    assert_eq!(response.status(), 200);
    let json_len: usize = response.headers()[INFERENCE_HEADER_CONTENT_LENGTH]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let outputs =
        modelpod_scoring::v2::client::decode_response(&response.bytes().unwrap(), Some(json_len))
            .unwrap();
    assert_eq!(outputs[0].0, "code");
    assert_eq!(
        outputs[0].1.data(),
        &modelpod_accel::TensorData::Int64(vec![13, -1, 11, 10])
    );
    assert_eq!(outputs[1], ("echo".to_string(), city));

    // A length prefix that runs past the data, and bytes that are not UTF-8, are 400 (as
    // Triton answers on v2) naming the element.
    for (bytes, needle) in [
        (&b"\x03\0\0\0abc\x09\0\0\0ab"[..], "BYTES element 1"),
        (
            &b"\x01\0\0\0\xff\x01\0\0\0a"[..],
            "BYTES element 0: not UTF-8",
        ),
    ] {
        let header = json!({"inputs": [{"name": "city", "shape": [1, 2], "datatype": "BYTES", "parameters": {"binary_data_size": bytes.len()}}]}).to_string();
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(bytes);
        let answer = http
            .post(&url)
            .header(INFERENCE_HEADER_CONTENT_LENGTH, header.len())
            .body(body)
            .send()
            .unwrap();
        expect_error(answer, 400, needle);
    }
    // v2 JSON: BYTES data are strings; a number or an FP32 tensor is refused.
    for (input, needle) in [
        (
            json!({"name": "city", "shape": [1, 2], "datatype": "BYTES", "data": ["cork", 1]}),
            "not a valid BYTES value",
        ),
        (
            json!({"name": "city", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}),
            "BYTES",
        ),
    ] {
        let answer = http
            .post(&url)
            .json(&json!({"inputs": [input]}))
            .send()
            .unwrap();
        expect_error(answer, 400, needle);
    }
}

/// A repository of the iris and digits examples as `scripts/setup.sh` builds them (skl2onnx's
/// default exports), plus `iris_maps`: iris answering its ZipMap output on `/score`.
fn scikit_learn_repository() -> Option<tempfile::TempDir> {
    let examples = workspace_root().join("examples/models");
    if !examples.join("iris/1/model.onnx").is_file() {
        assert!(
            std::env::var_os("MODELPOD_TEST_REQUIRE_PYTHON").is_none(),
            "examples/models is missing: run scripts/setup.sh"
        );
        return None;
    }
    let repository = tempfile::tempdir().unwrap();
    for (name, from) in [
        ("iris", "iris"),
        ("digits", "digits"),
        ("iris_maps", "iris"),
    ] {
        let dir = repository.path().join(name);
        std::fs::create_dir_all(dir.join("1")).unwrap();
        std::fs::copy(
            examples.join(from).join("1/model.onnx"),
            dir.join("1/model.onnx"),
        )
        .unwrap();
        let manifest = std::fs::read_to_string(examples.join(from).join("model.toml")).unwrap();
        let manifest = if name == "iris_maps" {
            manifest.replace(
                "output = \"output_label\"",
                "output = \"output_probability\"",
            )
        } else {
            manifest
        };
        std::fs::write(dir.join("model.toml"), manifest).unwrap();
    }
    Some(repository)
}

#[test]
fn scikit_learn_default_exports_answer_labels_and_label_maps() {
    let Some(repository) = scikit_learn_repository() else {
        return;
    };
    let server = start(serve_args(repository.path()));
    let http = client();
    let rows = json!({"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]});
    let score = |model: &str, body: &Value| {
        json_of(
            http.post(server.url(&format!("/score?model={model}")))
                .json(body)
                .send()
                .unwrap(),
        )
    };
    // The labels, as the scikit-learn model's predict() gave them.
    assert_eq!(
        score("iris", &rows),
        (StatusCode::OK, json!(["setosa", "virginica"]))
    );
    // More rows than max_batch_size (64) run as several batches, answered in order, as
    // Azure answered a body of any length.
    let many: Vec<[f64; 4]> = (0..100)
        .map(|i| {
            if i % 2 == 0 {
                [5.1, 3.5, 1.4, 0.2]
            } else {
                [6.7, 3.0, 5.2, 2.3]
            }
        })
        .collect();
    let (status, labels) = score("iris", &json!({ "data": many }));
    assert_eq!(status, 200, "{labels}");
    let labels = labels.as_array().unwrap();
    assert_eq!(labels.len(), 100);
    for (i, label) in labels.iter().enumerate() {
        assert_eq!(
            label,
            if i % 2 == 0 { "setosa" } else { "virginica" },
            "row {i}"
        );
    }
    // The ZipMap: one {species: probability} object per row, as predict_proba's rows.
    let (status, maps) = score("iris_maps", &rows);
    assert_eq!(status, 200, "{maps}");
    let maps = maps.as_array().unwrap();
    assert_eq!(maps.len(), 2);
    for (row, likeliest) in maps.iter().zip(["setosa", "virginica"]) {
        let row = row.as_object().unwrap();
        let mut keys: Vec<&str> = row.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["setosa", "versicolor", "virginica"]);
        let total: f64 = row.values().map(|p| p.as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-5, "{row:?}");
        let best = row
            .iter()
            .max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap()))
            .unwrap();
        assert_eq!(best.0, likeliest);
    }
    // Integer class keys label topk's entries when the manifest names no labels file.
    let pixels: Vec<u32> = (0..64).map(|i| (i * 7 % 17) as u32).collect();
    let (status, top) = score("digits", &json!({"data": [pixels]}));
    assert_eq!(status, 200, "{top}");
    let top = top[0].as_array().unwrap();
    assert_eq!(top.len(), 3);
    for entry in top {
        assert_eq!(
            entry["label"].as_str().unwrap(),
            entry["index"].to_string(),
            "{entry}"
        );
    }
    // v2: the labels as BYTES, the probabilities as FP32 [rows, classes].
    let (status, body) = json_of(
        http.post(server.url("/v2/models/iris/infer"))
            .json(&json!({"inputs": [{"name": "float_input", "shape": [2, 4], "datatype": "FP32", "data": rows["data"]}]}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["outputs"][0],
        json!({"name": "output_label", "datatype": "BYTES", "shape": [2], "data": ["setosa", "virginica"]})
    );
    assert_eq!(body["outputs"][1]["datatype"], "FP32");
    assert_eq!(body["outputs"][1]["shape"], json!([2, 3]));
    let (status, metadata) = json_of(http.get(server.url("/v2/models/iris")).send().unwrap());
    assert_eq!(status, 200);
    assert_eq!(
        metadata["outputs"],
        json!([
            {"name": "output_label", "datatype": "BYTES", "shape": [-1]},
            {"name": "output_probability", "datatype": "FP32", "shape": [-1, 3]},
        ])
    );
    // swagger's ServiceOutput for the map model describes objects keyed by species.
    let (_, swagger) = json_of(http.get(server.url("/swagger.json")).send().unwrap());
    let text = swagger.to_string();
    assert!(text.contains("versicolor"), "{text}");
}

#[test]
fn concurrent_requests_are_batched_and_each_gets_its_own_rows() {
    let server = start(serve_args(&fixtures()));
    let url = server.url("/v2/models/mlp/infer");
    let request = |i: usize| {
        let rows = 1 + i % 3;
        let data: Vec<f32> = (0..rows * 4).map(|j| (i * 10 + j) as f32 * 0.01).collect();
        json!({"inputs": [{"name": "input", "shape": [rows, 4], "datatype": "FP32", "data": data}]})
    };
    // Answers one at a time first: the expected result for each request.
    let http = client();
    let expected: Vec<Value> = (0..48)
        .map(|i| {
            json_of(http.post(&url).json(&request(i)).send().unwrap()).1["outputs"][0]["data"]
                .clone()
        })
        .collect();
    let before = scrape_sum(&server, "modelpod_batch_rows_count", "mlp");
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let url = url.clone();
            let expected = expected.clone();
            std::thread::spawn(move || {
                let http = client();
                for round in 0..6 {
                    let i = t * 6 + round;
                    let (status, body) = json_of(http.post(&url).json(&request(i)).send().unwrap());
                    assert_eq!(status, 200);
                    assert_eq!(
                        body["outputs"][0]["data"], expected[i],
                        "request {i} got another caller's rows"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let runs = scrape_sum(&server, "modelpod_batch_rows_count", "mlp") - before;
    assert!(runs <= 48.0, "48 requests took {runs} engine runs");
}

fn scrape_sum(server: &modelpod_serve::RunningServer, metric: &str, model: &str) -> f64 {
    metric_sum(&metrics_text(server), metric, &[("model", model)]).unwrap_or(0.0)
}

#[test]
fn hostile_inputs_get_clear_4xx_and_the_server_stays_up() {
    let mut args = serve_args(&fixtures());
    args.max_request_bytes = Some(1024 * 1024);
    let server = start(args);
    let http = client();
    let score = server.url("/score?model=mlp");
    let infer = server.url("/v2/models/mlp/infer");
    expect_error(
        http.post(&score).body("{\"data\": [[1,2").send().unwrap(),
        400,
        "not valid JSON",
    );
    expect_error(http.post(&score).body("").send().unwrap(), 400, "empty");
    expect_error(http.post(&infer).body("").send().unwrap(), 400, "empty");
    expect_error(
        http.post(&infer).body("{]").send().unwrap(),
        400,
        "malformed",
    );
    // 8 × (2^61 + 1) elements wrap to 8 in unchecked arithmetic, matching the 8 values sent.
    expect_error(
        http.post(&infer)
            .json(
                &json!({"inputs": [{"name": "input", "shape": [8, 2305843009213693953u64],
                "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]}]}),
            )
            .send()
            .unwrap(),
        400,
        "more elements than can be addressed",
    );
    expect_error(
        http.post(&score)
            .json(&json!({"rows": [[1, 2, 3, 4]]}))
            .send()
            .unwrap(),
        400,
        "\"data\"",
    );
    expect_error(
        http.post(&score)
            .json(&json!({"data": [[1, 2, 3]]}))
            .send()
            .unwrap(),
        422,
        "[4]",
    );
    expect_error(
        http.post(&score)
            .json(&json!({"data": [["a", 2, 3, 4]]}))
            .send()
            .unwrap(),
        422,
        "FP32",
    );
    expect_error(
        http.post(&score)
            .json(&json!({"data": [[1, 2, 3, 4], [1, 2]]}))
            .send()
            .unwrap(),
        422,
        "ragged",
    );
    expect_error(
        http.post(&infer)
            .json(&json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]}))
            .send()
            .unwrap(),
        400,
        "expects FP32",
    );
    expect_error(
        http.post(&infer)
            .json(&json!({"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]}))
            .send()
            .unwrap(),
        400,
        "[-1, 4]",
    );
    expect_error(
        http.post(&infer)
            .json(&json!({"inputs": [{"name": "input", "shape": [64, 4], "datatype": "FP32", "data": vec![0.0; 256]}]}))
            .send()
            .unwrap(),
        400,
        "max_batch_size",
    );
    expect_error(
        http.post(&infer)
            .json(&json!({"inputs": [{"name": "wrong", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}))
            .send()
            .unwrap(),
        400,
        "wrong",
    );
    expect_error(
        http.post(server.url("/v2/models/nope/infer"))
            .json(&json!({"inputs": []}))
            .send()
            .unwrap(),
        404,
        "nope",
    );
    // Deep nesting: serde_json's recursion limit turns it into a 400, not a stack overflow.
    let deep = format!(
        "{{\"data\": {}1{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    expect_error(
        http.post(&score).body(deep).send().unwrap(),
        400,
        "recursion",
    );
    // Bodies over the limit: declared and streamed.
    let huge = vec![b' '; 2 * 1024 * 1024];
    expect_error(
        http.post(&score).body(huge.clone()).send().unwrap(),
        413,
        "limit",
    );
    let stream = reqwest::blocking::Body::new(std::io::Cursor::new(huge));
    expect_error(http.post(&infer).body(stream).send().unwrap(), 413, "limit");
    // A malformed query string is a JSON 400 too.
    expect_error(
        http.get(server.url("/modelpod/busy?after=soon"))
            .send()
            .unwrap(),
        400,
        "query string",
    );
    // Still serving.
    assert_eq!(http.get(server.url("/")).send().unwrap().status(), 200);
    let (status, _) = json_of(
        http.post(&score)
            .json(&json!({"data": [[1, 2, 3, 4]]}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200);
}

#[test]
fn values_that_do_not_fit_the_model_are_client_errors_never_500_or_silent() {
    let server = start(serve_args(&fixtures()));
    let http = client();
    // A number beyond FP32's range would have become infinity and been scored. Azure's
    // route answers 422, v2 answers 400 as Triton does.
    for (url, body, status) in [
        (
            server.url("/score?model=mlp"),
            json!({"data": [[1e39, 1, 1, 1]]}),
            422,
        ),
        (
            server.url("/v2/models/mlp/infer"),
            json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1e39, 1, 1, 1]}]}),
            400,
        ),
    ] {
        expect_error(
            http.post(&url).json(&body).send().unwrap(),
            status,
            "not a valid FP32 value",
        );
    }
    // Token ids past the embedding table's 50 rows: the engine's reason, as the client's
    // mistake; requests batched with it are unharmed.
    let embed = server.url("/v2/models/embed/infer");
    let ids = |values: Vec<i64>| json!({"inputs": [{"name": "ids", "shape": [1, values.len()], "datatype": "INT64", "data": values}]});
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (http, embed) = (http.clone(), embed.clone());
            let body = if i == 3 {
                ids(vec![1, 2, 1000, 3, 4])
            } else {
                ids(vec![1, 2, 3, 4, 5])
            };
            std::thread::spawn(move || http.post(&embed).json(&body).send().unwrap())
        })
        .collect();
    for (i, thread) in threads.into_iter().enumerate() {
        let answer = thread.join().unwrap();
        if i == 3 {
            let body = expect_error(answer, 400, "cannot run on this input");
            assert_eq!(body["error_type"], "BadRequest");
        } else {
            assert_eq!(answer.status(), 200, "request {i}");
        }
    }
}

#[test]
fn the_sentence_encoders_client_mistakes_are_422_with_the_engines_reason() {
    if !modelpod_tests::ort_available() {
        return;
    }
    let examples = modelpod_tests::workspace_root().join("examples/models");
    assert!(examples.join("minilm").is_dir(), "run scripts/setup.sh");
    let server = start(serve_args(&examples));
    let http = client();
    let score = server.url("/score?model=minilm");
    let tokens = |ids: Vec<i64>, mask: usize| json!({"data": {"input_ids": [ids.clone()], "attention_mask": [vec![1; mask]], "token_type_ids": [vec![0; ids.len()]]}});
    assert_eq!(
        http.post(&score)
            .json(&tokens(vec![101, 7592, 102], 3))
            .send()
            .unwrap()
            .status(),
        200
    );
    let long: Vec<i64> = std::iter::once(101)
        .chain(std::iter::repeat_n(7592, 4094))
        .chain([102])
        .collect();
    for (what, body) in [
        (
            "a token id past the vocabulary",
            tokens(vec![101, 99_999, 102], 3),
        ),
        (
            "a mask shorter than the ids",
            tokens(vec![101, 7592, 102], 2),
        ),
        ("no tokens at all", tokens(vec![], 0)),
        ("4 096 tokens, past the 512 positions", tokens(long, 4096)),
    ] {
        let answer = http.post(&score).json(&body).send().unwrap();
        let body = expect_error(answer, 422, "cannot run on this input");
        assert_eq!(body["error_type"], "InvalidInput", "{what}");
    }
}

/// Every route of the scoring server, as (method, path, body): what the key check must cover.
const SERVE_ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/", ""),
    ("GET", "/v2/health/live", ""),
    ("GET", "/v2/health/ready", ""),
    ("GET", "/swagger.json", ""),
    ("POST", "/score?model=mlp", r#"{"data": [[1, 2, 3, 4]]}"#),
    ("GET", "/metrics", ""),
    ("GET", "/v2", ""),
    ("GET", "/v2/models/mlp", ""),
    ("GET", "/v2/models/mlp/versions/1", ""),
    ("GET", "/v2/models/mlp/ready", ""),
    ("GET", "/v2/models/mlp/versions/1/ready", ""),
    ("GET", "/v2/models/mlp/config", ""),
    ("GET", "/v2/models/mlp/versions/1/config", ""),
    ("POST", "/v2/models/mlp/infer", r#"{"inputs": []}"#),
    (
        "POST",
        "/v2/models/mlp/versions/1/infer",
        r#"{"inputs": []}"#,
    ),
    ("GET", "/modelpod/busy?wait_ms=0", ""),
    ("POST", "/v2/repository/index", "{}"),
    ("POST", "/v2/repository/models/mlp/load", ""),
    ("POST", "/v2/repository/models/mlp/unload", ""),
    ("GET", "/v2/models/stats", ""),
    ("GET", "/v2/models/mlp/stats", ""),
    ("GET", "/v2/models/mlp/versions/1/stats", ""),
    ("GET", "/v2/systemsharedmemory/status", ""),
    ("GET", "/v2/systemsharedmemory/region/r/status", ""),
    (
        "POST",
        "/v2/systemsharedmemory/region/r/register",
        r#"{"key": "modelpod_keys_test", "offset": 0, "byte_size": 16}"#,
    ),
    ("POST", "/v2/systemsharedmemory/unregister", ""),
    ("POST", "/v2/systemsharedmemory/region/r/unregister", ""),
    ("GET", "/v2/cudasharedmemory/status", ""),
    ("POST", "/v2/trace/setting", "{}"),
    ("POST", "/v2/logging", "{}"),
    ("GET", "/no/such/route", ""),
];

const PUBLIC: [&str; 4] = ["/", "/v2/health/live", "/v2/health/ready", "/swagger.json"];

#[test]
fn with_keys_every_route_but_the_probes_and_swagger_needs_one() {
    let mut args = serve_args(&fixtures());
    args.api_keys = vec!["primary-key".into(), "secondary-key".into()];
    args.load_policy = Some(modelpod_serve::LoadPolicy::Lazy);
    let server = start(args);
    let http = client();
    let send = |method: &str, path: &str, body: &str, key: Option<&str>| {
        let mut request = http
            .request(method.parse().unwrap(), server.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().unwrap()
    };
    for (method, path, body) in SERVE_ROUTES {
        for key in [None, Some("nope"), Some("Primary-key")] {
            let answer = send(method, path, body, key);
            if PUBLIC.contains(path) {
                assert!(
                    answer.status().is_success(),
                    "{method} {path}: {}",
                    answer.status()
                );
            } else {
                assert_eq!(
                    answer.headers()["www-authenticate"],
                    "Bearer",
                    "{method} {path}"
                );
                expect_error(answer, 401, "Bearer");
            }
        }
    }
    assert!(
        server.registry.get("mlp", None).is_err(),
        "no unauthenticated request loads a model"
    );
    for key in ["primary-key", "secondary-key"] {
        let answer = send(
            "POST",
            "/score?model=mlp",
            r#"{"data": [[1, 2, 3, 4]]}"#,
            Some(key),
        );
        assert_eq!(answer.status(), 200);
        assert_eq!(
            answer.headers()[modelpod_scoring::SERVED_MODEL_HEADER],
            "mlp/1"
        );
        assert_eq!(send("GET", "/metrics", "", Some(key)).status(), 200);
    }
}

#[test]
fn repository_control_is_off_unless_asked_for() {
    let mut args = serve_args(&fixtures());
    args.model_control_mode = None;
    let server = start(args);
    let http = client();
    for action in ["load", "unload"] {
        let answer = http
            .post(server.url(&format!("/v2/repository/models/mlp/{action}")))
            .send()
            .unwrap();
        expect_error(answer, 403, "--model-control-mode explicit");
    }
    assert!(server.registry.get("mlp", None).is_ok(), "still loaded");
    let index = http
        .post(server.url("/v2/repository/index"))
        .send()
        .unwrap();
    assert_eq!(index.status(), 200, "reading the index is not control");
}

/// A request to the slow model that keeps its worker busy for a while (binary v2 body).
fn slow_request(http: &reqwest::blocking::Client, url: &str, rows: usize) -> Response {
    let (header_len, body) = slow_infer_body(rows);
    http.post(url)
        .header(INFERENCE_HEADER_CONTENT_LENGTH, header_len)
        .body(body)
        .send()
        .unwrap()
}

/// Rows of the slow model that take at least `at_least` on this machine and engine.
fn rows_taking(http: &reqwest::blocking::Client, url: &str, at_least: Duration) -> usize {
    // The first run pays for session warm-up; time only warm runs.
    assert_eq!(slow_request(http, url, 1).status(), 200);
    let mut rows = 64;
    loop {
        let started = Instant::now();
        assert_eq!(slow_request(http, url, rows).status(), 200);
        if started.elapsed() >= at_least || rows >= 1 << 16 {
            return rows;
        }
        rows *= 2;
    }
}

#[test]
fn admission_queue_wait_gives_503_and_scoring_timeout_gives_504() {
    let mut args = serve_args(&slow_fixtures());
    args.max_concurrent_requests = Some(1);
    args.max_queue_wait_ms = Some(50);
    args.scoring_timeout_ms = Some(20_000);
    let server = start(args);
    let url = server.url("/v2/models/slow/infer");
    let rows = rows_taking(&client(), &url, Duration::from_millis(300)) * 4;
    let busy = {
        let url = url.clone();
        std::thread::spawn(move || slow_request(&client(), &url, rows).status())
    };
    let until = Instant::now() + Duration::from_secs(30);
    while scrape_sum(&server, "modelpod_inflight_requests", "slow") < 1.0 {
        assert!(
            Instant::now() < until,
            "the busy request never started scoring"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    let body = expect_error(
        slow_request(&client(), &url, 1),
        503,
        "maxConcurrentRequestsPerContainer",
    );
    assert_eq!(body["error_type"], "Overloaded");
    assert!(
        started.elapsed() < Duration::from_millis(350),
        "503 took {:?}",
        started.elapsed()
    );
    assert_eq!(busy.join().unwrap(), 200);
    drop(server);

    let mut args = serve_args(&slow_fixtures());
    args.scoring_timeout_ms = Some(100);
    let server = start(args);
    let url = server.url("/v2/models/slow/infer");
    let started = Instant::now();
    expect_error(
        slow_request(&client(), &url, rows),
        504,
        "scoringTimeoutMs = 100",
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "504 took {:?}",
        started.elapsed()
    );
    assert_eq!(slow_request(&client(), &url, 1).status(), 200);
}

#[test]
fn a_broken_model_fails_alone_and_readiness_says_so() {
    let server = start(serve_args(&fixtures()));
    let http = client();
    let (status, index) = json_of(
        http.post(server.url("/v2/repository/index"))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200);
    let entries = index.as_array().unwrap();
    let broken = entries.iter().find(|e| e["name"] == "broken").unwrap();
    assert_eq!(broken["state"], "UNAVAILABLE");
    assert!(
        broken["reason"]
            .as_str()
            .unwrap()
            .contains("not a readable ONNX model")
    );
    assert!(
        entries
            .iter()
            .filter(|e| e["name"] != "broken")
            .all(|e| e["state"] == "READY")
    );
    let (_, ready_only) = json_of(
        http.post(server.url("/v2/repository/index"))
            .json(&json!({"ready": true}))
            .send()
            .unwrap(),
    );
    assert_eq!(ready_only.as_array().unwrap().len(), entries.len() - 1);
    expect_error(
        http.post(server.url("/score?model=broken"))
            .json(&json!({"data": [[1]]}))
            .send()
            .unwrap(),
        503,
        "not a readable ONNX model",
    );
    expect_error(
        http.get(server.url("/v2/models/broken/ready"))
            .send()
            .unwrap(),
        503,
        "not a readable",
    );
    assert_eq!(
        http.get(server.url("/v2/models/mlp/ready"))
            .send()
            .unwrap()
            .status(),
        200
    );
    // Strict readiness (the default) reports the failure; the others keep serving.
    assert_eq!(
        http.get(server.url("/v2/health/ready"))
            .send()
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        http.get(server.url("/v2/health/live"))
            .send()
            .unwrap()
            .status(),
        200
    );
    // Asking again retries and fails again, with the cause.
    expect_error(
        http.post(server.url("/v2/repository/models/broken/load"))
            .send()
            .unwrap(),
        503,
        "not a readable",
    );

    let mut args = serve_args(&fixtures());
    args.strict_readiness = Some(false);
    let lenient = start(args);
    assert_eq!(
        http.get(lenient.url("/v2/health/ready"))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn repository_unload_and_load() {
    let server = start(serve_args(&fixtures()));
    let http = client();
    let infer = server.url("/v2/models/mlp/infer");
    let body = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]});
    assert_eq!(http.post(&infer).json(&body).send().unwrap().status(), 200);
    assert_eq!(
        http.post(server.url("/v2/repository/models/mlp/unload"))
            .send()
            .unwrap()
            .status(),
        200
    );
    expect_error(
        http.post(&infer).json(&body).send().unwrap(),
        503,
        "is unloaded; load it through the repository API",
    );
    assert_eq!(
        http.post(server.url("/v2/repository/models/mlp/load"))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(http.post(&infer).json(&body).send().unwrap().status(), 200);
    expect_error(
        http.post(server.url("/v2/repository/models/nope/load"))
            .send()
            .unwrap(),
        404,
        "nope",
    );
    expect_error(
        http.post(server.url("/v2/repository/models/nope/unload"))
            .send()
            .unwrap(),
        404,
        "nope",
    );
}

#[test]
fn metadata_config_swagger_and_metrics() {
    let server = start(serve_args(&fixtures()));
    let http = client();
    let (_, server_meta) = json_of(http.get(server.url("/v2")).send().unwrap());
    assert_eq!(server_meta["name"], "modelpod");
    let (status, meta) = json_of(http.get(server.url("/v2/models/mlp")).send().unwrap());
    assert_eq!(status, 200);
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "input", "datatype": "FP32", "shape": [-1, 4]})
    );
    assert_eq!(meta["versions"], json!(["1"]));
    let (_, config) = json_of(
        http.get(server.url("/v2/models/mlp/config"))
            .send()
            .unwrap(),
    );
    assert_eq!(config["max_batch_size"], 32);
    assert_eq!(config["input"][0]["dims"], json!([4]));
    assert_eq!(config["input"][0]["data_type"], "TYPE_FP32");
    assert_eq!(config["instance_group"][0]["count"], 2);
    // Without a GPU the plan puts the model on a CPU engine, and the config says so.
    if modelpod_accel::probe::cuda_devices().devices.is_empty() {
        assert_eq!(config["instance_group"][0]["kind"], "KIND_CPU");
        assert!(
            ["ort-cpu", "tract-cpu"].contains(&config["backend"].as_str().unwrap()),
            "{config}"
        );
    }

    // Each model's swagger example is a valid /score body for it.
    let (status, swagger) = json_of(http.get(server.url("/swagger.json")).send().unwrap());
    assert_eq!(status, 200);
    assert_eq!(swagger["swagger"], "2.0");
    assert!(swagger["paths"]["/score"]["post"].is_object());
    for name in ["mlp", "cnn", "embed", "two_inputs", "int_ops"] {
        let example = &swagger["definitions"][format!("{name}Input")]["example"];
        let (status, body) = json_of(
            http.post(server.url(&format!("/score?model={name}")))
                .json(example)
                .send()
                .unwrap(),
        );
        assert_eq!(status, 200, "{name} example {example}: {body}");
    }

    let text = metrics_text(&server);
    for needle in [
        "modelpod_requests_total{",
        "modelpod_request_duration_seconds_bucket{",
        "modelpod_queue_duration_seconds_bucket{",
        "modelpod_compute_duration_seconds_bucket{",
        "modelpod_batch_rows_bucket{",
        "modelpod_model_state{",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}");
    }
    assert!(text.lines().any(|l| l.starts_with("modelpod_model_state{")
        && l.contains("model=\"broken\"")
        && l.contains("state=\"failed\"")
        && l.ends_with(" 1")));
}

#[test]
fn azure_single_model_layout_scores_without_naming_the_model() {
    let root = tempfile::tempdir().unwrap();
    let version_dir = root.path().join("azureml-models/iris_mlp/3");
    std::fs::create_dir_all(&version_dir).unwrap();
    std::fs::copy(
        fixtures().join("mlp/1/model.onnx"),
        version_dir.join("model.onnx"),
    )
    .unwrap();
    let server = start(serve_args(&version_dir));
    let http = client();
    let (status, body) = json_of(
        http.post(server.url("/score"))
            .json(&json!({"data": [[1, 2, 3, 4]]}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap()[0].as_array().unwrap().len(), 3);
    let (status, _) = json_of(
        http.get(server.url("/v2/models/iris_mlp/versions/3"))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200);
}

/// `AML_CORS_ORIGINS`' behaviour: a listed origin's preflight and calls get CORS headers,
/// other origins none; a bare `OPTIONS /score` is 200 as on Azure, key or not.
#[test]
fn listed_origins_may_call_cross_origin_and_others_may_not() {
    let mut args = serve_args(&fixtures());
    args.cors_origins = Some("https://app.example, https://other.example".into());
    args.api_keys = vec!["k".into()];
    let server = start(args);
    let http = client();
    let preflight = |origin: &str| modelpod_tests::cors_preflight(&server.url("/score"), origin);
    let allowed = preflight("https://app.example");
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let methods = allowed.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(methods.contains("POST"), "{methods}");
    let refused = preflight("https://evil.example");
    assert!(
        !refused
            .headers()
            .contains_key("access-control-allow-origin"),
        "{:?}",
        refused.headers()
    );
    // The call itself still needs the key; with it, the origin is allowed.
    let call = http
        .post(server.url("/score?model=mlp"))
        .header("Origin", "https://app.example")
        .bearer_auth("k")
        .json(&json!({"data": [[1, 2, 3, 4]]}))
        .send()
        .unwrap();
    assert_eq!(call.status(), 200);
    assert_eq!(
        call.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let bare = http
        .request(reqwest::Method::OPTIONS, server.url("/score"))
        .send()
        .unwrap();
    assert_eq!(bare.status(), 200);

    // Without origins, no CORS headers at all.
    let plain = start(serve_args(&fixtures()));
    let response = http
        .post(plain.url("/score?model=mlp"))
        .header("Origin", "https://app.example")
        .json(&json!({"data": [[1, 2, 3, 4]]}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );
}

/// `--health-port`: the probes answer there without a key; nothing else does, not even with
/// the key, so the port can be opened to the kubelet alone.
#[test]
fn the_health_port_answers_the_probes_and_nothing_else() {
    let mut args = serve_args(&fixtures());
    args.health_port = Some(0);
    args.api_keys = vec!["k".into()];
    args.strict_readiness = Some(false);
    let server = start(args);
    let port = server.probe_port().expect("a probes listener");
    assert_ne!(port, server.address.port());
    let probe = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let http = client();
    let health = http.get(probe("/")).send().unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().unwrap(), "Healthy");
    assert_eq!(
        http.get(probe("/v2/health/live")).send().unwrap().status(),
        200
    );
    assert_eq!(
        http.get(probe("/v2/health/ready")).send().unwrap().status(),
        200
    );
    for (method, path) in [
        (reqwest::Method::POST, "/score?model=mlp"),
        (reqwest::Method::GET, "/metrics"),
        (reqwest::Method::GET, "/swagger.json"),
        (reqwest::Method::GET, "/v2/models/mlp"),
    ] {
        let (status, body) = json_of(
            http.request(method.clone(), probe(path))
                .bearer_auth("k")
                .json(&json!({"data": [[1, 2, 3, 4]]}))
                .send()
                .unwrap(),
        );
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("health port"));
    }
    // The main port is unchanged.
    let scored = http
        .post(server.url("/score?model=mlp"))
        .bearer_auth("k")
        .json(&json!({"data": [[1, 2, 3, 4]]}))
        .send()
        .unwrap();
    assert_eq!(scored.status(), 200);
}

/// A user's client generator on the served swagger.json: validated in both versions, and a
/// generated client scores with the key and is refused without it.
#[test]
fn a_client_generated_from_swagger_scores() {
    let repository = modelpod_tests::single_model_repository();
    let mut args = serve_args(repository.path());
    args.api_keys = vec!["generated-client-key".into()];
    let server = start(args);
    modelpod_tests::check_generated_client(
        &server.url(""),
        Some("generated-client-key"),
        &json!({"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}),
    );
}

/// What Azure's server answers for swagger versions: 2 by default, 3 on request, 404 else;
/// each model's input and output are described, and the 200 reply is not "object" for a
/// model that answers a list.
#[test]
fn swagger_versions_and_schemas_are_azures() {
    let server = start(serve_args(&fixtures()));
    let http = client();
    let fetch = |query: &str| {
        json_of(
            http.get(server.url(&format!("/swagger.json{query}")))
                .send()
                .unwrap(),
        )
    };
    let (status, v2) = fetch("");
    assert_eq!(status, 200);
    assert_eq!(v2["swagger"], "2.0");
    assert!(
        v2.get("host").is_none(),
        "the replica does not know its callers' address"
    );
    assert_eq!(
        v2["paths"]["/score"]["post"]["security"],
        json!([{"Bearer": []}])
    );
    assert_eq!(v2["definitions"]["mlpOutput"]["type"], "array");
    assert_eq!(v2["definitions"]["mlpOutput"]["items"]["type"], "string");
    let (status, v3) = fetch("?version=3");
    assert_eq!(status, 200);
    assert_eq!(v3["openapi"], "3.0.3");
    let one_of = v3["components"]["schemas"]["ServiceInput"]["oneOf"]
        .as_array()
        .unwrap();
    assert!(
        one_of.contains(&json!({"$ref": "#/components/schemas/mlpInput"})),
        "{one_of:?}"
    );
    let (status, refused) = fetch("?version=4");
    assert_eq!(status, 404);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("Supported versions")
    );
}

/// A pod whose repository is empty, or holds nothing that loads, must not take traffic: it is
/// not ready, and says why.
#[test]
fn a_repository_with_nothing_to_serve_is_not_ready_and_says_why() {
    let empty = tempfile::tempdir().unwrap();
    let server = start(serve_args(empty.path()));
    let (status, body) = json_of(client().get(server.url("/v2/health/ready")).send().unwrap());
    assert_eq!(status, 503);
    assert!(
        body["reason"].as_str().unwrap().contains("holds no model"),
        "{body}"
    );

    let broken = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(broken.path().join("bad/1")).unwrap();
    std::fs::write(broken.path().join("bad/1/model.onnx"), b"not a model").unwrap();
    let mut args = serve_args(broken.path());
    args.strict_readiness = Some(false);
    let server = start(args);
    let (status, body) = json_of(client().get(server.url("/v2/health/ready")).send().unwrap());
    assert_eq!(status, 503);
    assert!(body["reason"].as_str().unwrap().contains("bad/1"), "{body}");
}
