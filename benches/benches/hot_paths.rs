//! Micro-benchmarks of the per-request hot paths: Azure and v2 JSON and binary tensor decoding,
//! response encoding, batch assembly and splitting, and the batcher's queue selection.
//!
//!     cargo bench -p modelpod-benches --bench hot_paths

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use modelpod_accel::{DataType, Tensor};
use modelpod_scoring::batcher::{BatchPolicy, BatchState, Pending, Selection};
use modelpod_scoring::v2;
use serde_json::json;
use std::hint::black_box;
use std::time::{Duration, Instant};

fn image(rows: usize) -> Tensor {
    let values: Vec<f32> = (0..rows * 3 * 224 * 224)
        .map(|i| (i % 255) as f32 / 255.0)
        .collect();
    Tensor::new(vec![rows, 3, 224, 224], values).unwrap()
}

/// An Azure body for one image of `shape`, its values printed as a Python client prints
/// float32 pixels normalised to [0, 1) (`json.dumps(array.tolist())` after rounding to 6 digits).
fn azure_image_body(shape: &[usize]) -> String {
    let count: usize = shape.iter().product();
    let values: Vec<f64> = (0..count)
        .map(|i| ((i * 7919) % 1_000_003) as f64 / 1_000_003.0)
        .map(|x| (x * 1e6).round() / 1e6)
        .collect();
    let tensor = Tensor::new(shape.to_vec(), values).unwrap();
    json!({ "data": modelpod_scoring::json::to_nested_json(&tensor) }).to_string()
}

/// Decoding Azure JSON images: one pass into the typed buffer against building a JSON tree
/// first (what the server did before), at the text-direction classifier's input
/// (1×3×48×192, about 200 KB) and the example CNN's (1×3×224×224).
fn json_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("azure json decode");
    for shape in [[1usize, 3, 48, 192], [1, 3, 224, 224]] {
        let body = azure_image_body(&shape);
        let data = {
            let start = body.find('[').unwrap();
            &body[start..body.len() - 1]
        };
        let label = format!(
            "{}x{}x{}x{} ({} KB)",
            shape[0],
            shape[1],
            shape[2],
            shape[3],
            body.len() / 1000
        );
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(BenchmarkId::new("one pass", &label), |b| {
            b.iter(|| {
                modelpod_scoring::json::flatten_slice(black_box(data.as_bytes()), DataType::Fp32)
                    .unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("tree then flatten", &label), |b| {
            b.iter(|| {
                let value: serde_json::Value =
                    serde_json::from_slice(black_box(body.as_bytes())).unwrap();
                modelpod_scoring::json::flatten(&value["data"], DataType::Fp32).unwrap()
            })
        });
    }
    group.finish();
}

fn codecs(c: &mut Criterion) {
    let mut group = c.benchmark_group("v2 decode");
    let tensor = image(1);
    let request =
        modelpod_scoring::v2::client::encode_request(&[("x".into(), tensor.clone())], true);
    let (binary, header_len) = (request.body, request.json_len.expect("a binary body"));
    group.throughput(Throughput::Bytes(binary.len() as u64));
    group.bench_function("binary 3x224x224 FP32", |b| {
        b.iter(|| v2::decode_request(black_box(&binary), Some(header_len)).unwrap())
    });
    let small = json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}).to_string();
    group.throughput(Throughput::Bytes(small.len() as u64));
    group.bench_function("json 1x4 FP32", |b| {
        b.iter(|| v2::decode_request(black_box(small.as_bytes()), None).unwrap())
    });
    let values: Vec<f32> = (0..64 * 64).map(|i| i as f32 * 0.25).collect();
    let medium =
        json!({"inputs": [{"name": "x", "shape": [64, 64], "datatype": "FP32", "data": values}]})
            .to_string();
    group.throughput(Throughput::Bytes(medium.len() as u64));
    group.bench_function("json 64x64 FP32", |b| {
        b.iter(|| v2::decode_request(black_box(medium.as_bytes()), None).unwrap())
    });
    group.finish();

    let mut group = c.benchmark_group("v2 encode");
    let output = Tensor::new(vec![1, 1000], vec![0.001f32; 1000]).unwrap();
    for binary in [false, true] {
        let finished = [v2::FinishedOutput {
            name: "y".into(),
            tensor: output.clone(),
            placement: if binary {
                v2::Placement::Binary
            } else {
                v2::Placement::Json
            },
        }];
        group.bench_function(
            BenchmarkId::new("1x1000 FP32", if binary { "binary" } else { "json" }),
            |b| b.iter(|| v2::encode_response("m", "1", None, black_box(&finished))),
        );
    }
    group.finish();
}

fn batch_assembly(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch assembly");
    for rows in [4usize, 32] {
        let parts: Vec<Tensor> = (0..rows).map(|_| image(1)).collect();
        let refs: Vec<&Tensor> = parts.iter().collect();
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_with_input(
            BenchmarkId::new("concat 3x224x224 rows", rows),
            &refs,
            |b, refs| b.iter(|| Tensor::concat_rows(black_box(refs)).unwrap()),
        );
        let joined = Tensor::concat_rows(&refs).unwrap();
        group.bench_with_input(
            BenchmarkId::new("split 3x224x224 rows", rows),
            &joined,
            |b, joined| {
                b.iter(|| {
                    (0..rows)
                        .map(|i| joined.slice_rows(i, 1).unwrap())
                        .collect::<Vec<_>>()
                })
            },
        );
    }
    group.finish();
}

fn queue_selection(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue selection");
    for queued in [8usize, 256] {
        group.bench_with_input(
            BenchmarkId::new("push+select, max batch 32, two shapes", queued),
            &queued,
            |b, &queued| {
                let t0 = Instant::now();
                b.iter(|| {
                    let mut state = BatchState::new(BatchPolicy {
                        max_batch_size: 32,
                        max_queue_delay: Duration::ZERO,
                        preferred_batch_sizes: vec![],
                    });
                    for i in 0..queued {
                        state.push(Pending {
                            key: vec![vec![i % 2]],
                            rows: 1,
                            enqueued_at: t0,
                            deadline: None,
                            item: i,
                        });
                    }
                    let mut batches = 0;
                    while let Selection::Run(batch) = state.select(t0) {
                        batches += batch.len();
                    }
                    black_box(batches)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(
    benches,
    json_decode,
    codecs,
    batch_assembly,
    queue_selection
);
criterion_main!(benches);
