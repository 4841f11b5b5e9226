//! The request a benchmark sends, built once from the target's own description of the model
//! (v2 metadata and config, or the Azure swagger example) or read from a file.

use super::{BenchArgs, BenchError, Protocol};
use bytes::Bytes;
use modelpod_accel::{DataType, Tensor, TensorData};
use modelpod_scoring::v2::INFERENCE_HEADER_CONTENT_LENGTH;
use serde_json::{Value, json};

/// One prepared request, sent unchanged for the whole run (to one model, or to each model of
/// `--cycle-models` in turn).
#[derive(Debug, Clone)]
pub struct Workload {
    pub base_url: String,
    pub infer_url: String,
    /// Infer URLs taken in turn, one per request, when cycling through models.
    cycle: std::sync::Arc<[String]>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub body: Bytes,
    pub content_type: &'static str,
    /// `Inference-Header-Content-Length` for binary v2 bodies.
    pub inference_header: Option<usize>,
    pub authorization: Option<String>,
    pub model: String,
    pub protocol: Protocol,
    pub rows: usize,
}

impl Workload {
    pub async fn prepare(
        client: &reqwest::Client,
        args: &BenchArgs,
    ) -> Result<Workload, BenchError> {
        let base_url = args.url.trim_end_matches('/').to_string();
        let authorization = args.api_key.as_ref().map(|k| format!("Bearer {k}"));
        let model = args.model.clone();
        let cycle: std::sync::Arc<[String]> = match &args.cycle_models {
            None => std::sync::Arc::new([]),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))?;
                let names: Vec<&str> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect();
                if names.is_empty() {
                    return Err(BenchError::Setup(format!(
                        "{} names no models",
                        path.display()
                    )));
                }
                names
                    .iter()
                    .map(|name| infer_url_for(&base_url, args.protocol, name))
                    .collect()
            }
        };
        let mut workload = Workload {
            infer_url: infer_url_for(&base_url, args.protocol, &args.model),
            base_url,
            cycle,
            next: Default::default(),
            body: Bytes::new(),
            content_type: "application/json",
            inference_header: None,
            authorization,
            model,
            protocol: args.protocol,
            rows: args.batch[0],
        };
        if let Some(path) = &args.input {
            let body = std::fs::read(path)
                .map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))?;
            if args.protocol == Protocol::V2Binary {
                return Err(BenchError::Setup("--input with --protocol v2-binary is not supported: give a JSON body and --protocol v2".into()));
            }
            workload.body = Bytes::from(body);
            return Ok(workload);
        }
        match args.protocol {
            Protocol::Azure => {
                workload.body = Bytes::from(azure_body(client, &workload, args.batch[0]).await?)
            }
            Protocol::V2 | Protocol::V2Binary => {
                let inputs = v2_inputs(client, &workload, args).await?;
                if let Some(path) = &args.save_inputs {
                    let data = perf_analyzer_input_data(&inputs)?;
                    std::fs::write(path, serde_json::to_vec(&data).expect("serialisable"))
                        .map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))?;
                }
                let encoded = modelpod_scoring::v2::client::encode_request(
                    &inputs,
                    args.protocol == Protocol::V2Binary,
                );
                workload.body = Bytes::from(encoded.body);
                if let Some(len) = encoded.json_len {
                    workload.inference_header = Some(len);
                    workload.content_type = "application/octet-stream";
                }
            }
        }
        Ok(workload)
    }

    pub fn describe(&self) -> String {
        format!(
            "{} {:?}: {} rows per request, {} byte body",
            self.infer_url,
            self.protocol,
            self.rows,
            self.body.len()
        )
    }

    /// Whether requests go to many models in turn.
    pub fn cycles(&self) -> bool {
        !self.cycle.is_empty()
    }

    pub fn request(&self, client: &reqwest::Client) -> reqwest::RequestBuilder {
        let url = if self.cycle.is_empty() {
            &self.infer_url
        } else {
            let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            &self.cycle[i % self.cycle.len()]
        };
        let mut request = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, self.content_type)
            .body(self.body.clone());
        if let Some(len) = self.inference_header {
            request = request.header(INFERENCE_HEADER_CONTENT_LENGTH, len);
        }
        if let Some(auth) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, auth);
        }
        request
    }
}

fn infer_url_for(base_url: &str, protocol: Protocol, model: &str) -> String {
    match protocol {
        Protocol::Azure => format!("{base_url}/score?model={model}"),
        Protocol::V2 | Protocol::V2Binary => format!("{base_url}/v2/models/{model}/infer"),
    }
}

async fn get_json(
    client: &reqwest::Client,
    workload: &Workload,
    path: &str,
) -> Result<Option<Value>, BenchError> {
    let mut request = client.get(format!("{}{path}", workload.base_url));
    if let Some(auth) = &workload.authorization {
        request = request.header(reqwest::header::AUTHORIZATION, auth);
    }
    let response = request.send().await?;
    if !response.status().is_success() {
        return Ok(None);
    }
    Ok(Some(response.json().await?))
}

/// The server's own swagger example for the model, its rows repeated to `rows`.
async fn azure_body(
    client: &reqwest::Client,
    workload: &Workload,
    rows: usize,
) -> Result<Vec<u8>, BenchError> {
    let swagger = get_json(client, workload, "/swagger.json")
        .await?
        .ok_or_else(|| {
            BenchError::Setup("the target has no /swagger.json; pass --input FILE".into())
        })?;
    let example = swagger["definitions"][format!("{}Input", workload.model)]["example"].clone();
    let Some(first_row) = example["data"]
        .as_array()
        .and_then(|rows| rows.first())
        .cloned()
    else {
        return Err(BenchError::Setup(format!(
            "swagger.json has no list-of-rows example for '{}'; pass --input FILE",
            workload.model
        )));
    };
    Ok(serde_json::to_vec(&json!({ "data": vec![first_row; rows] })).expect("serialisable"))
}

/// Random inputs shaped from the model's v2 metadata (see [`shaped_inputs`]).
async fn v2_inputs(
    client: &reqwest::Client,
    workload: &Workload,
    args: &BenchArgs,
) -> Result<Vec<(String, Tensor)>, BenchError> {
    let metadata = get_json(client, workload, &format!("/v2/models/{}", workload.model))
        .await?
        .ok_or_else(|| {
            BenchError::Setup(format!(
                "{} has no v2 metadata for model '{}'",
                workload.base_url, workload.model
            ))
        })?;
    let batched = get_json(
        client,
        workload,
        &format!("/v2/models/{}/config", workload.model),
    )
    .await?
    .and_then(|c| c["max_batch_size"].as_u64())
    .is_none_or(|max| max > 0);
    let inputs = metadata["inputs"]
        .as_array()
        .ok_or_else(|| BenchError::Setup("v2 metadata lists no inputs".into()))?;
    let specs = inputs
        .iter()
        .map(|input| {
            let name = input["name"].as_str().unwrap_or_default().to_string();
            let dtype: DataType = input["datatype"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .map_err(|e| BenchError::Setup(format!("input '{name}': {e}")))?;
            let dims: Vec<i64> = serde_json::from_value(input["shape"].clone())
                .map_err(|e| BenchError::Setup(format!("input '{name}' shape: {e}")))?;
            Ok(TensorShape { name, dtype, dims })
        })
        .collect::<Result<Vec<_>, BenchError>>()?;
    shaped_inputs(&specs, batched.then_some(args.batch[0]), &args.shapes)
}

/// An input as the model declares it: `-1` for a dynamic dimension.
pub(super) struct TensorShape {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<i64>,
}

/// Random inputs of the declared shapes: the batch dimension (the first, when the model
/// batches) gets `batch` rows, every other dynamic dimension the size `--shape` gives it. A
/// dynamic dimension with no size given is refused, as perf_analyzer refuses it: a guess would
/// measure some other workload without a word.
pub(super) fn shaped_inputs(
    specs: &[TensorShape],
    batch: Option<usize>,
    shapes: &[String],
) -> Result<Vec<(String, Tensor)>, BenchError> {
    let mut seed = INPUT_SEED;
    specs
        .iter()
        .map(|spec| {
            let mut given = shape_override(shapes, &spec.name)?.into_iter();
            let shape = spec
                .dims
                .iter()
                .enumerate()
                .map(|(i, &d)| match (i, batch) {
                    (0, Some(rows)) => Ok(rows),
                    _ if d >= 0 => Ok(d as usize),
                    _ => given.next().ok_or_else(|| {
                        BenchError::Setup(format!(
                            "input '{}' has a dynamic dimension {i} (shape {:?}) and --shape gives it no size: pass --shape {}:D1,D2,... with the sizes of its dynamic dimensions, the batch's excluded",
                            spec.name, spec.dims, spec.name
                        ))
                    }),
                })
                .collect::<Result<Vec<usize>, BenchError>>()?;
            Ok((spec.name.clone(), random_tensor(spec.dtype, shape, &mut seed)))
        })
        .collect()
}

/// Seed of [`random_tensor`]: the same inputs every run, so runs compare.
pub(super) const INPUT_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// A benchmark input: floats in [-1, 1), integers 0 or 1 (valid as token ids, masks and class
/// indices), booleans true. Xorshift: inputs need variety, not statistical quality.
pub(super) fn random_tensor(dtype: DataType, shape: Vec<usize>, seed: &mut u64) -> Tensor {
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let count = shape.iter().product();
    let data = match dtype {
        DataType::Bool => TensorData::Bool(vec![true; count]),
        d if d.is_float() => {
            TensorData::Fp64((0..count).map(|_| next() * 2.0 - 1.0).collect()).cast(d)
        }
        d => TensorData::Fp64((0..count).map(|_| (next() * 2.0).floor()).collect()).cast(d),
    };
    Tensor::new(shape, data).expect("count matches shape")
}

/// `NAME:d1,d2` applies to one input, a bare `d1,d2` to every input.
pub(super) fn shape_override(shapes: &[String], input: &str) -> Result<Vec<usize>, BenchError> {
    let parse = |dims: &str| -> Result<Vec<usize>, BenchError> {
        dims.split(',')
            .map(|d| {
                d.trim().parse::<usize>().map_err(|_| {
                    BenchError::Setup(format!("--shape '{dims}': not a list of sizes"))
                })
            })
            .collect()
    };
    for shape in shapes {
        match shape.split_once(':') {
            Some((name, dims)) if name == input => return parse(dims),
            Some(_) => continue,
            None => return parse(shape),
        }
    }
    Ok(Vec::new())
}

/// perf_analyzer's `--input-data` format for one request: each input's bytes in base64 and its
/// shape without the batch dimension (perf_analyzer adds that from its own `-b`).
fn perf_analyzer_input_data(inputs: &[(String, Tensor)]) -> Result<Value, BenchError> {
    use base64::Engine as _;
    let mut request = serde_json::Map::new();
    for (name, tensor) in inputs {
        if tensor.shape().first() != Some(&1) {
            return Err(BenchError::Setup(
                "--save-inputs writes one row per request: use --batch 1".into(),
            ));
        }
        let bytes = tensor.data().to_le_bytes();
        request.insert(
            name.clone(),
            json!({
                "content": { "b64": base64::engine::general_purpose::STANDARD.encode(bytes) },
                "shape": &tensor.shape()[1..],
            }),
        );
    }
    Ok(json!({ "data": [request] }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_dimension_without_a_size_is_refused_by_name() {
        let cnn = [TensorShape {
            name: "x".into(),
            dtype: DataType::Fp32,
            dims: vec![-1, 3, -1, -1],
        }];
        let refused = shaped_inputs(&cnn, Some(1), &[]).unwrap_err().to_string();
        assert!(
            refused.contains("input 'x' has a dynamic dimension 2")
                && refused.contains("--shape x:"),
            "{refused}"
        );
        let inputs = shaped_inputs(&cnn, Some(4), &["x:48,192".into()]).unwrap();
        assert_eq!(inputs[0].1.shape(), &[4, 3, 48, 192]);
        // A model that does not batch has no batch dimension to fill.
        let refused = shaped_inputs(&cnn, None, &["x:48,192".into()]).unwrap_err();
        assert!(refused.to_string().contains("dimension 3"), "{refused}");
    }

    #[test]
    fn shape_overrides_by_name_or_for_all() {
        let shapes = vec!["ids:16".to_string(), "4,4".to_string()];
        assert_eq!(shape_override(&shapes, "ids").unwrap(), vec![16]);
        assert_eq!(shape_override(&shapes, "mask").unwrap(), vec![4, 4]);
        assert!(shape_override(&["x:a".into()], "x").is_err());
    }

    #[test]
    fn perf_analyzer_data_carries_the_same_bytes_without_the_batch_dimension() {
        use base64::Engine as _;
        let t = Tensor::new(vec![1, 2], vec![1.0f32, -2.0]).unwrap();
        let data = perf_analyzer_input_data(&[("x".into(), t)]).unwrap();
        let x = &data["data"][0]["x"];
        assert_eq!(x["shape"], json!([2]));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(x["content"]["b64"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat()
        );

        let two_rows = Tensor::new(vec![2, 1], vec![1.0f32, 2.0]).unwrap();
        assert!(perf_analyzer_input_data(&[("x".into(), two_rows)]).is_err());
    }
}
