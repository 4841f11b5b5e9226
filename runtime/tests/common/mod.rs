//! Helpers shared by the router's integration tests.
// Each test binary includes this module and uses part of it.
#![allow(dead_code)]

use serde_json::json;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A v2 binary-tensor request for the slow fixture model (`rows` rows of 256 values, binary
/// output asked for): the `Inference-Header-Content-Length` value and the body.
pub fn slow_infer_body(rows: usize) -> (usize, Vec<u8>) {
    let bytes: Vec<u8> = vec![0.5f32; rows * 256]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let header = json!({"inputs": [{"name": "x", "shape": [rows, 256], "datatype": "FP32",
        "parameters": {"binary_data_size": bytes.len()}}], "parameters": {"binary_data_output": true}})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&bytes);
    (header.len(), body)
}

/// POSTs `body` as JSON; returns the status and the JSON answer (null when not JSON).
pub fn post_json(
    http: &reqwest::blocking::Client,
    url: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = http.post(url).json(body).send().unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(serde_json::Value::Null))
}

/// Every record model data collection wrote under `partition` (a directory of date-partitioned
/// `data.jsonl` files), in file order.
pub fn collected_records(partition: &std::path::Path) -> Vec<serde_json::Value> {
    let mut records = Vec::new();
    for file in files_under(partition) {
        for line in std::fs::read_to_string(&file).unwrap().lines() {
            records.push(serde_json::from_str(line).unwrap());
        }
    }
    records
}

/// Every file under `dir`, depth first, in name order.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}
