//! Open Inference Protocol v2 inference bodies: JSON tensors and the binary tensor data
//! extension (a JSON header of `Inference-Header-Content-Length` bytes followed by raw
//! little-endian tensor data), as KServe, Triton and their clients speak them.

use crate::error::ScoringError;
use crate::json;
use modelpod_accel::{DataType, Signature, Tensor, TensorData};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The binary tensor data extension's header: the length of the JSON part of a body.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// A decoded inference request.
#[derive(Debug)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<(String, Tensor)>,
    /// Outputs asked for; empty means all.
    pub outputs: Vec<RequestedOutput>,
    /// Request-level `binary_data_output`: every output in binary unless it says otherwise.
    pub binary_output: bool,
}

#[derive(Debug, Clone)]
pub struct RequestedOutput {
    pub name: String,
    pub binary: Option<bool>,
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(borrow)]
    inputs: Vec<RawInput<'a>>,
    #[serde(default)]
    outputs: Vec<RawOutput>,
}

/// A described tensor; its `data` is kept as text and parsed once the datatype is known
/// (it may come before the datatype), straight into the typed buffer.
#[derive(Deserialize)]
struct RawInput<'a> {
    name: String,
    shape: Vec<usize>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// Decodes a request body. `json_len` is the `Inference-Header-Content-Length` header: the
/// length of the JSON part when binary tensor data follows it.
pub fn decode_request(body: &[u8], json_len: Option<usize>) -> Result<InferRequest, ScoringError> {
    let (header, binary) = split_body(body, json_len)?;
    let raw: RawRequest = serde_json::from_slice(header)
        .map_err(|e| ScoringError::BadRequest(format!("malformed inference request: {e}")))?;
    let inputs = decode_tensors(raw.inputs, binary, "input")?;
    let flag = |params: &Map<String, Value>, key: &str| params.get(key).and_then(Value::as_bool);
    Ok(InferRequest {
        id: raw.id,
        binary_output: flag(&raw.parameters, "binary_data_output").unwrap_or(false),
        outputs: raw
            .outputs
            .into_iter()
            .map(|o| RequestedOutput {
                binary: flag(&o.parameters, "binary_data"),
                name: o.name,
            })
            .collect(),
        inputs,
    })
}

/// A body's JSON header and the binary data after it.
fn split_body(body: &[u8], json_len: Option<usize>) -> Result<(&[u8], &[u8]), ScoringError> {
    let json_len = json_len.unwrap_or(body.len());
    if json_len > body.len() {
        return Err(ScoringError::BadRequest(format!(
            "Inference-Header-Content-Length is {json_len} but the body has only {} bytes",
            body.len()
        )));
    }
    let (header, binary) = body.split_at(json_len);
    if header.iter().all(u8::is_ascii_whitespace) {
        return Err(ScoringError::BadRequest("the request body is empty".into()));
    }
    Ok((header, binary))
}

/// Tensors described in a header, their data inline or taken in order from `binary`, which
/// they must use up exactly. `role` ("input", "output") names them in errors.
fn decode_tensors(
    described: Vec<RawInput<'_>>,
    mut binary: &[u8],
    role: &str,
) -> Result<Vec<(String, Tensor)>, ScoringError> {
    let mut inputs = Vec::with_capacity(described.len());
    for input in described {
        let dtype: DataType = input.datatype.parse().map_err(|_| {
            ScoringError::InvalidInput(format!(
                "{role} '{}': unsupported datatype '{}'",
                input.name, input.datatype
            ))
        })?;
        let count = modelpod_accel::element_count(&input.shape).ok_or_else(|| {
            ScoringError::BadRequest(format!(
                "{role} '{}': shape {:?} holds more elements than can be addressed",
                input.name, input.shape
            ))
        })?;
        let data = match input.parameters.get("binary_data_size") {
            Some(size) => {
                let size = size.as_u64().ok_or_else(|| {
                    ScoringError::BadRequest(format!(
                        "{role} '{}': binary_data_size must be an integer",
                        input.name
                    ))
                })? as usize;
                if size > binary.len() {
                    return Err(ScoringError::BadRequest(format!(
                        "{role} '{}' declares {size} bytes of binary data but only {} remain",
                        input.name,
                        binary.len()
                    )));
                }
                let (bytes, rest) = binary.split_at(size);
                binary = rest;
                TensorData::from_le_bytes(dtype, bytes).map_err(|e| {
                    ScoringError::InvalidInput(format!("{role} '{}': {e}", input.name))
                })?
            }
            None => {
                let text = input.data.ok_or_else(|| {
                    ScoringError::BadRequest(format!(
                        "{role} '{}' has neither data nor binary_data_size",
                        input.name
                    ))
                })?;
                json::flatten_slice(text.get().as_bytes(), dtype)
                    .map_err(|e| match e {
                        json::FlattenError::Syntax(e) => ScoringError::BadRequest(format!(
                            "malformed inference request: {role} '{}': {e}",
                            input.name
                        )),
                        json::FlattenError::Content(e) => {
                            ScoringError::InvalidInput(format!("{role} '{}': {e}", input.name))
                        }
                    })?
                    .1
            }
        };
        if data.len() != count {
            return Err(ScoringError::InvalidInput(format!(
                "{role} '{}' has shape {:?} ({count} elements) but {} elements of data",
                input.name,
                input.shape,
                data.len()
            )));
        }
        inputs.push((input.name, Tensor::new(input.shape, data)?));
    }
    if !binary.is_empty() {
        return Err(ScoringError::BadRequest(format!(
            "{} bytes of binary data follow the {role}s that no {role} claims",
            binary.len()
        )));
    }
    Ok(inputs)
}

impl InferRequest {
    /// Indices (in signature order) of the outputs to return, refusing unknown names before
    /// anything runs.
    pub fn selected_outputs(
        &self,
        signature: &Signature,
    ) -> Result<Vec<(usize, bool)>, ScoringError> {
        if self.outputs.is_empty() {
            return Ok((0..signature.outputs.len())
                .map(|i| (i, self.binary_output))
                .collect());
        }
        self.outputs
            .iter()
            .map(|o| {
                let i = signature
                    .outputs
                    .iter()
                    .position(|s| s.name == o.name)
                    .ok_or_else(|| {
                        ScoringError::InvalidInput(format!(
                            "requested output '{}' is not an output of the model",
                            o.name
                        ))
                    })?;
                Ok((i, o.binary.unwrap_or(self.binary_output)))
            })
            .collect()
    }
}

/// An encoded body, and the JSON header's length when binary data follows it.
pub struct EncodedBody {
    pub body: Vec<u8>,
    pub json_len: Option<usize>,
}

/// Encodes the outputs chosen by [`InferRequest::selected_outputs`].
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    id: Option<&str>,
    signature: &Signature,
    outputs: &[Tensor],
    selected: &[(usize, bool)],
) -> EncodedBody {
    #[derive(serde::Serialize)]
    struct Parameters {
        binary_data_size: usize,
    }
    #[derive(serde::Serialize)]
    struct Output<'a> {
        name: &'a str,
        datatype: &'a str,
        shape: &'a [usize],
        #[serde(skip_serializing_if = "Option::is_none")]
        parameters: Option<Parameters>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<json::FlatData<'a>>,
    }
    #[derive(serde::Serialize)]
    struct Header<'a> {
        model_name: &'a str,
        model_version: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        outputs: Vec<Output<'a>>,
    }
    let mut binary = Vec::new();
    let encoded: Vec<Output> = selected
        .iter()
        .filter_map(|&(i, as_binary)| {
            let tensor = outputs.get(i)?;
            let mut out = Output {
                name: &signature.outputs[i].name,
                datatype: tensor.dtype().as_str(),
                shape: tensor.shape(),
                parameters: None,
                data: None,
            };
            if as_binary {
                let bytes = tensor.data().to_le_bytes();
                out.parameters = Some(Parameters {
                    binary_data_size: bytes.len(),
                });
                binary.extend_from_slice(&bytes);
            } else {
                out.data = Some(json::FlatData(tensor.data()));
            }
            Some(out)
        })
        .collect();
    let header = Header {
        model_name,
        model_version,
        id: id.filter(|id| !id.is_empty()),
        outputs: encoded,
    };
    let mut body = serde_json::to_vec(&header).expect("plain structs serialise");
    if binary.is_empty() {
        return EncodedBody {
            body,
            json_len: None,
        };
    }
    let json_len = body.len();
    body.extend_from_slice(&binary);
    EncodedBody {
        body,
        json_len: Some(json_len),
    }
}

/// The client's side of the protocol, for modelpod's load generator and tests: the request a
/// v2 client sends and the outputs it reads back.
pub mod client {
    use super::{EncodedBody, RawInput, decode_tensors, split_body};
    use crate::{ScoringError, json};
    use modelpod_accel::Tensor;
    use serde::Deserialize;
    use serde_json::{Value, json};

    /// An infer request body: tensor data inline as JSON, or (`binary`) each input's
    /// little-endian bytes after the JSON header, with binary outputs asked for too.
    /// `json_len` is the `Inference-Header-Content-Length` to send with it.
    pub fn encode_request(inputs: &[(String, Tensor)], binary: bool) -> EncodedBody {
        let mut raw = Vec::new();
        let described: Vec<Value> = inputs
            .iter()
            .map(|(name, t)| {
                let mut input =
                    json!({ "name": name, "shape": t.shape(), "datatype": t.dtype().as_str() });
                if binary {
                    let bytes = t.data().to_le_bytes();
                    input["parameters"] = json!({ "binary_data_size": bytes.len() });
                    raw.extend_from_slice(&bytes);
                } else {
                    input["data"] = json::to_flat_json(t.data());
                }
                input
            })
            .collect();
        let mut header = json!({ "inputs": described });
        if binary {
            header["parameters"] = json!({ "binary_data_output": true });
        }
        let mut body = serde_json::to_vec(&header).expect("a JSON value serialises");
        if !binary {
            return EncodedBody {
                body,
                json_len: None,
            };
        }
        let json_len = body.len();
        body.extend_from_slice(&raw);
        EncodedBody {
            body,
            json_len: Some(json_len),
        }
    }

    #[derive(Deserialize)]
    struct RawResponse<'a> {
        #[serde(borrow)]
        outputs: Vec<RawInput<'a>>,
    }

    /// The outputs of an infer response, JSON or binary, by name in the order they came.
    pub fn decode_response(
        body: &[u8],
        json_len: Option<usize>,
    ) -> Result<Vec<(String, Tensor)>, ScoringError> {
        let (header, binary) = split_body(body, json_len)?;
        let raw: RawResponse = serde_json::from_slice(header)
            .map_err(|e| ScoringError::BadRequest(format!("malformed inference response: {e}")))?;
        decode_tensors(raw.outputs, binary, "output")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelpod_accel::TensorSpec;
    use serde_json::json;

    fn signature() -> Signature {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            dtype: DataType::Fp32,
            dims: vec![None, Some(2)],
            map_keys: None,
        };
        Signature {
            inputs: vec![spec("x")],
            outputs: vec![spec("y"), spec("z")],
        }
    }

    #[test]
    fn the_client_codec_round_trips_through_the_server_codec() {
        let x = Tensor::new(vec![2, 2], vec![1.0f32, -2.0, 3.5, 0.25]).unwrap();
        for binary in [false, true] {
            let sent = client::encode_request(&[("x".into(), x.clone())], binary);
            let request = decode_request(&sent.body, sent.json_len).unwrap();
            assert_eq!(request.inputs, vec![("x".to_string(), x.clone())]);
            assert_eq!(request.binary_output, binary);
            let selected = request.selected_outputs(&signature()).unwrap();
            let outputs = [x.clone(), x.clone()];
            let answer = encode_response("m", "1", None, &signature(), &outputs, &selected);
            let decoded = client::decode_response(&answer.body, answer.json_len).unwrap();
            assert_eq!(decoded.len(), 2);
            assert_eq!(decoded[0].1, x, "binary {binary}");
        }
    }

    #[test]
    fn a_shape_whose_element_count_overflows_is_a_bad_request() {
        let body = br#"{"inputs":[{"name":"x","shape":[8,2305843009213693953],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}]}"#;
        let error = decode_request(body, None).err().unwrap();
        assert!(matches!(error, ScoringError::BadRequest(_)), "{error:?}");
        assert!(
            error
                .to_string()
                .contains("more elements than can be addressed"),
            "{error}"
        );
    }

    #[test]
    fn json_request_with_flat_or_nested_data() {
        for data in [json!([1, 2, 3, 4]), json!([[1, 2], [3, 4]])] {
            let body = json!({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": data}]});
            let req = decode_request(body.to_string().as_bytes(), None).unwrap();
            assert_eq!(req.inputs[0].1.shape(), &[2, 2]);
            assert_eq!(
                req.inputs[0].1.data(),
                &TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0])
            );
        }
    }

    #[test]
    fn binary_request_as_perf_analyzer_sends_it() {
        let header = br#"{"id":"","inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"parameters":{"binary_data_size":8}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&1.5f32.to_le_bytes());
        body.extend_from_slice(&(-2f32).to_le_bytes());
        let req = decode_request(&body, Some(header.len())).unwrap();
        assert_eq!(req.inputs[0].1.data(), &TensorData::Fp32(vec![1.5, -2.0]));
        let selected = req.selected_outputs(&signature()).unwrap();
        assert_eq!(selected, vec![(0, true)]);
        let y = Tensor::new(vec![1, 2], vec![3f32, 4.0]).unwrap();
        let z = y.clone();
        let resp = encode_response(
            "m",
            "1",
            req.id.as_deref(),
            &signature(),
            &[y, z],
            &selected,
        );
        let json_len = resp.json_len.unwrap();
        let head: Value = serde_json::from_slice(&resp.body[..json_len]).unwrap();
        assert_eq!(
            head["outputs"][0]["parameters"]["binary_data_size"],
            json!(8)
        );
        assert!(head.get("id").is_none());
        assert_eq!(&resp.body[json_len..json_len + 4], &3f32.to_le_bytes());
    }

    #[test]
    fn bad_requests_are_refused_with_the_right_kind() {
        let kind = |body: &str, len: Option<usize>| {
            decode_request(body.as_bytes(), len).unwrap_err().kind()
        };
        assert_eq!(kind("", None), "BadRequest");
        assert_eq!(kind("{", None), "BadRequest");
        assert_eq!(kind(r#"{"inputs": 3}"#, None), "BadRequest");
        assert_eq!(
            kind(
                r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#,
                None
            ),
            "BadRequest"
        );
        assert_eq!(
            kind(
                r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1]}]}"#,
                None
            ),
            "InvalidInput"
        );
        assert_eq!(
            kind(
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":[1]}]}"#,
                None
            ),
            "InvalidInput"
        );
        assert_eq!(
            kind(
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#,
                None
            ),
            "BadRequest"
        );
        assert_eq!(
            kind(
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"STRING","data":["a"]}]}"#,
                None
            ),
            "InvalidInput"
        );
        assert_eq!(kind(r#"{"inputs":[]}"#, Some(99)), "BadRequest");
        let body = r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        assert_eq!(kind(&format!("{body}abcd"), Some(body.len())), "BadRequest");
        let body = r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
        assert_eq!(
            kind(&format!("{body}abcdefgh"), Some(body.len())),
            "BadRequest"
        );
        let req = decode_request(br#"{"inputs":[],"outputs":[{"name":"nope"}]}"#, None).unwrap();
        assert_eq!(
            req.selected_outputs(&signature()).unwrap_err().kind(),
            "InvalidInput"
        );
    }
}
