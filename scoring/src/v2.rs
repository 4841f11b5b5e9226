//! Open Inference Protocol v2 inference bodies: JSON tensors and the binary tensor data
//! extension (a JSON header of `Inference-Header-Content-Length` bytes followed by raw
//! little-endian tensor data), as KServe, Triton and their clients speak them.

use crate::error::ScoringError;
use crate::json;
use crate::sequence::{CorrelationId, SequenceFlags};
use crate::shared_memory::SystemSharedMemory;
use modelpod_accel::{DataType, Signature, Tensor, TensorData};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The binary tensor data extension's header: the length of the JSON part of a body.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// A decoded inference request, whichever transport carried it.
#[derive(Debug)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<(String, Tensor)>,
    /// Outputs asked for; empty means all.
    pub outputs: Vec<RequestedOutput>,
    /// Request-level `binary_data_output`: every output in binary unless it says otherwise.
    pub binary_output: bool,
    /// A stateful model's request: its sequence and place in it.
    pub sequence: Option<SequenceFlags>,
}

#[derive(Debug, Clone, Default)]
pub struct RequestedOutput {
    pub name: String,
    pub binary: Option<bool>,
    /// The classification extension: the top `k` classes instead of the tensor.
    pub classification: Option<usize>,
    /// Where in a registered shared memory region the output goes.
    pub shared_memory: Option<SharedMemoryRef>,
}

/// A place in a registered system shared memory region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedMemoryRef {
    pub region: String,
    pub offset: usize,
    pub byte_size: usize,
}

/// The parameters each object of a request may carry; any other is refused by name, since a
/// parameter modelpod would ignore (a timeout, a priority) changes what the client expects.
pub const REQUEST_PARAMETERS: &[&str] = &[
    "binary_data_output",
    "sequence_id",
    "sequence_start",
    "sequence_end",
    // Asks a decoupled model for an empty final response; modelpod's models answer once,
    // and that answer is final, so there is nothing to change (perf_analyzer sends it on gRPC).
    "triton_enable_empty_final_response",
];
pub const INPUT_PARAMETERS: &[&str] = &[
    "binary_data_size",
    "shared_memory_region",
    "shared_memory_byte_size",
    "shared_memory_offset",
];
pub const OUTPUT_PARAMETERS: &[&str] = &[
    "binary_data",
    "classification",
    "shared_memory_region",
    "shared_memory_byte_size",
    "shared_memory_offset",
];

/// Refuses parameters outside `allowed`, naming them and what carried them.
pub fn check_parameters<'a>(
    names: impl IntoIterator<Item = &'a str>,
    allowed: &[&str],
    what: &str,
) -> Result<(), ScoringError> {
    let unknown: Vec<&str> = names.into_iter().filter(|n| !allowed.contains(n)).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(ScoringError::BadRequest(format!(
        "{what}: parameter{} {} not supported by modelpod (supported: {})",
        if unknown.len() > 1 { "s" } else { "" },
        unknown
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", "),
        allowed.join(", ")
    )))
}

/// A value of a parameter map, as JSON or gRPC carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Parameter<'a> {
    Bool(bool),
    Int(i64),
    Text(&'a str),
    Other,
}

impl<'a> From<&'a Value> for Parameter<'a> {
    fn from(value: &'a Value) -> Self {
        match value {
            Value::Bool(b) => Parameter::Bool(*b),
            Value::String(s) => Parameter::Text(s),
            Value::Number(n) => n.as_i64().map_or(Parameter::Other, Parameter::Int),
            _ => Parameter::Other,
        }
    }
}

/// Reads a request's sequence parameters: `sequence_id` (a number, or text; 0 and "" mean
/// none, as Triton reads them), `sequence_start` and `sequence_end`.
pub fn sequence_flags<'a>(
    get: impl Fn(&str) -> Option<Parameter<'a>>,
) -> Result<Option<SequenceFlags>, ScoringError> {
    let flag = |key: &str| match get(key) {
        None => Ok(false),
        Some(Parameter::Bool(b)) => Ok(b),
        Some(_) => Err(ScoringError::BadRequest(format!("{key} must be a boolean"))),
    };
    let (start, end) = (flag("sequence_start")?, flag("sequence_end")?);
    let id = match get("sequence_id") {
        None | Some(Parameter::Int(0)) => None,
        Some(Parameter::Text("")) => None,
        Some(Parameter::Int(n)) if n > 0 => Some(CorrelationId::Number(n as u64)),
        Some(Parameter::Text(text)) => Some(CorrelationId::Text(text.to_string())),
        Some(_) => {
            return Err(ScoringError::BadRequest(
                "sequence_id must be a positive integer or a non-empty string".into(),
            ));
        }
    };
    match id {
        Some(id) => Ok(Some(SequenceFlags { id, start, end })),
        None if start || end => Err(ScoringError::BadRequest(
            "sequence_start and sequence_end need a sequence_id".into(),
        )),
        None => Ok(None),
    }
}

/// Reads the shared memory parameters of an input or output, if it names a region.
pub fn shared_memory_ref<'a>(
    get: impl Fn(&str) -> Option<Parameter<'a>>,
    what: &str,
) -> Result<Option<SharedMemoryRef>, ScoringError> {
    let Some(region) = get("shared_memory_region") else {
        return Ok(None);
    };
    let Parameter::Text(region) = region else {
        return Err(ScoringError::BadRequest(format!(
            "{what}: shared_memory_region must be a string"
        )));
    };
    let number = |key: &str, required: bool| -> Result<usize, ScoringError> {
        match get(key) {
            Some(Parameter::Int(n)) if n >= 0 => Ok(n as usize),
            None if !required => Ok(0),
            None => Err(ScoringError::BadRequest(format!(
                "{what}: shared_memory_region needs shared_memory_byte_size"
            ))),
            Some(_) => Err(ScoringError::BadRequest(format!(
                "{what}: {key} must be a non-negative integer"
            ))),
        }
    };
    Ok(Some(SharedMemoryRef {
        region: region.to_string(),
        byte_size: number("shared_memory_byte_size", true)?,
        offset: number("shared_memory_offset", false)?,
    }))
}

/// Reads an output's `classification` parameter: how many classes to return.
pub fn classification_count(
    value: Option<Parameter<'_>>,
    what: &str,
) -> Result<Option<usize>, ScoringError> {
    match value {
        None => Ok(None),
        Some(Parameter::Int(k)) if k > 0 => Ok(Some(k as usize)),
        Some(_) => Err(ScoringError::BadRequest(format!(
            "{what}: classification must be a positive integer"
        ))),
    }
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

/// The deepest nesting of arrays and objects a request may have. Tensor data of up to 98
/// dimensions fits; anything deeper is a bad request rather than a deep recursion.
pub const MAX_JSON_DEPTH: usize = 100;

/// Decodes a request body. `json_len` is the `Inference-Header-Content-Length` header: the
/// length of the JSON part when binary tensor data follows it.
pub fn decode_request(body: &[u8], json_len: Option<usize>) -> Result<InferRequest, ScoringError> {
    decode_request_with(body, json_len, None)
}

/// [`decode_request`], with inputs that name a region read from `shared_memory`.
pub fn decode_request_with(
    body: &[u8],
    json_len: Option<usize>,
    shared_memory: Option<&SystemSharedMemory>,
) -> Result<InferRequest, ScoringError> {
    let (header, binary) = split_body(body, json_len)?;
    check_depth(header, MAX_JSON_DEPTH)?;
    let raw: RawRequest = serde_json::from_slice(header)
        .map_err(|e| ScoringError::BadRequest(format!("malformed inference request: {e}")))?;
    check_parameters(
        raw.parameters.keys().map(String::as_str),
        REQUEST_PARAMETERS,
        "the request",
    )?;
    let inputs = decode_tensors(raw.inputs, binary, "input", shared_memory)?;
    let flag = |params: &Map<String, Value>, key: &str| params.get(key).and_then(Value::as_bool);
    let mut outputs = Vec::with_capacity(raw.outputs.len());
    for o in raw.outputs {
        let what = format!("output '{}'", o.name);
        check_parameters(
            o.parameters.keys().map(String::as_str),
            OUTPUT_PARAMETERS,
            &what,
        )?;
        outputs.push(RequestedOutput {
            binary: flag(&o.parameters, "binary_data"),
            classification: classification_count(
                o.parameters.get("classification").map(Parameter::from),
                &what,
            )?,
            shared_memory: shared_memory_ref(|k| o.parameters.get(k).map(Parameter::from), &what)?,
            name: o.name,
        });
    }
    check_unique(inputs.iter().map(|(n, _)| n.as_str()), "input")?;
    check_unique(outputs.iter().map(|o| o.name.as_str()), "output")?;
    Ok(InferRequest {
        id: raw.id,
        binary_output: flag(&raw.parameters, "binary_data_output").unwrap_or(false),
        sequence: sequence_flags(|k| raw.parameters.get(k).map(Parameter::from))?,
        outputs,
        inputs,
    })
}

/// The binary tensor data extension's raw request (`Inference-Header-Content-Length: 0`):
/// the body is the data of the model's single input, all outputs are returned in binary.
/// A BYTES input gets the body as its one element; a numeric input's shape is the model's,
/// its batch dimension (if it batches) from the body's length.
pub fn raw_binary_request(
    body: &[u8],
    signature: &Signature,
    batched: bool,
) -> Result<InferRequest, ScoringError> {
    let [input] = signature.inputs.as_slice() else {
        return Err(ScoringError::BadRequest(format!(
            "a raw binary request (Inference-Header-Content-Length: 0) needs a model with one input; this one has {}",
            signature.inputs.len()
        )));
    };
    let (shape, data) = match input.dtype.size_of() {
        None => {
            let text = String::from_utf8(body.to_vec()).map_err(|_| {
                ScoringError::InvalidInput(format!(
                    "input '{}': a raw binary BYTES element must be UTF-8 text",
                    input.name
                ))
            })?;
            let shape = if batched { vec![1, 1] } else { vec![1] };
            (shape, TensorData::Bytes(vec![text]))
        }
        Some(size) => {
            let fixed = input.dims.iter().skip(usize::from(batched));
            let row: Option<Vec<usize>> = fixed.clone().copied().collect();
            let row = row.ok_or_else(|| {
                ScoringError::BadRequest(format!(
                    "a raw binary request needs input '{}' to have a fixed shape; it is {:?}",
                    input.name, input.dims
                ))
            })?;
            let row_bytes = row.iter().product::<usize>() * size;
            if row_bytes == 0
                || !body.len().is_multiple_of(row_bytes)
                || (!batched && body.len() != row_bytes)
            {
                return Err(ScoringError::InvalidInput(format!(
                    "input '{}': a raw binary request of {} bytes is not a whole number of {row_bytes}-byte rows of shape {row:?}",
                    input.name,
                    body.len()
                )));
            }
            let mut shape = row;
            if batched {
                shape.insert(0, body.len() / row_bytes);
            }
            let data = TensorData::from_le_bytes(input.dtype, body)
                .map_err(|e| ScoringError::InvalidInput(format!("input '{}': {e}", input.name)))?;
            (shape, data)
        }
    };
    Ok(InferRequest {
        id: None,
        inputs: vec![(input.name.clone(), Tensor::new(shape, data)?)],
        outputs: Vec::new(),
        binary_output: true,
        sequence: None,
    })
}

/// Refuses a request that names the same input or output twice.
pub fn check_unique<'a>(
    names: impl Iterator<Item = &'a str>,
    role: &str,
) -> Result<(), ScoringError> {
    let mut seen = std::collections::HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(ScoringError::BadRequest(format!(
                "{role} '{name}' is named more than once in the request"
            )));
        }
    }
    Ok(())
}

/// Refuses JSON nested deeper than `limit`, counted over the raw bytes (strings skipped).
fn check_depth(json: &[u8], limit: usize) -> Result<(), ScoringError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(ScoringError::BadRequest(format!(
                        "malformed inference request: JSON nested deeper than {limit} levels"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
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
    shared_memory: Option<&SystemSharedMemory>,
) -> Result<Vec<(String, Tensor)>, ScoringError> {
    let mut inputs = Vec::with_capacity(described.len());
    for input in described {
        let what = format!("{role} '{}'", input.name);
        if role == "input" {
            check_parameters(
                input.parameters.keys().map(String::as_str),
                INPUT_PARAMETERS,
                &what,
            )?;
        }
        let in_shared_memory =
            shared_memory_ref(|k| input.parameters.get(k).map(Parameter::from), &what)?;
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
        let data = match (in_shared_memory, input.parameters.get("binary_data_size")) {
            (Some(place), _) => read_shared_memory(shared_memory, &place, dtype, &what)?,
            (None, Some(size)) => {
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
            (None, None) => {
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

/// An input's bytes from a registered region.
pub fn read_shared_memory(
    shared_memory: Option<&SystemSharedMemory>,
    place: &SharedMemoryRef,
    dtype: DataType,
    what: &str,
) -> Result<TensorData, ScoringError> {
    let shared_memory = shared_memory.ok_or_else(|| {
        ScoringError::BadRequest(format!("{what}: this server has no shared memory regions"))
    })?;
    let bytes = shared_memory.read(&place.region, place.offset, place.byte_size)?;
    TensorData::from_le_bytes(dtype, &bytes)
        .map_err(|e| ScoringError::InvalidInput(format!("{what}: {e}")))
}

/// An output to return: which of the model's, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectedOutput {
    pub index: usize,
    pub binary: bool,
    pub classification: Option<usize>,
    pub shared_memory: Option<SharedMemoryRef>,
}

impl InferRequest {
    /// The outputs to return (in signature order when none is named), refusing unknown
    /// names before anything runs.
    pub fn selected_outputs(
        &self,
        signature: &Signature,
    ) -> Result<Vec<SelectedOutput>, ScoringError> {
        if self.outputs.is_empty() {
            return Ok((0..signature.outputs.len())
                .map(|index| SelectedOutput {
                    index,
                    binary: self.binary_output,
                    classification: None,
                    shared_memory: None,
                })
                .collect());
        }
        self.outputs
            .iter()
            .map(|o| {
                let index = signature
                    .outputs
                    .iter()
                    .position(|s| s.name == o.name)
                    .ok_or_else(|| {
                        ScoringError::BadRequest(format!(
                            "unexpected inference output '{}' for model (outputs: {})",
                            o.name,
                            signature
                                .outputs
                                .iter()
                                .map(|s| s.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?;
                Ok(SelectedOutput {
                    index,
                    binary: o.binary.unwrap_or(self.binary_output),
                    classification: o.classification,
                    shared_memory: o.shared_memory.clone(),
                })
            })
            .collect()
    }
}

/// How a finished output travels back.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    Json,
    Binary,
    /// Written into a region; `byte_size` bytes of it hold the output.
    SharedMemory {
        region: String,
        byte_size: usize,
    },
}

/// An output ready to encode: classified if asked, already written if in shared memory.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedOutput {
    pub name: String,
    pub tensor: Tensor,
    pub placement: Placement,
}

/// Applies classification and shared memory placement to the selected outputs.
/// `labels(i)` are output `i`'s class labels; `batched` says whether dimension 0 is the
/// batch, whose rows are classified apart.
pub fn finish_outputs<'l>(
    selected: &[SelectedOutput],
    signature: &Signature,
    mut outputs: Vec<Tensor>,
    batched: bool,
    labels: impl Fn(usize) -> Option<&'l [String]>,
    shared_memory: Option<&SystemSharedMemory>,
) -> Result<Vec<FinishedOutput>, ScoringError> {
    let mut finished = Vec::with_capacity(selected.len());
    for choice in selected {
        let Some(slot) = outputs.get_mut(choice.index) else {
            continue;
        };
        let name = signature.outputs[choice.index].name.clone();
        let mut tensor = std::mem::replace(slot, Tensor::new(vec![0], Vec::<f32>::new())?);
        if let Some(k) = choice.classification {
            tensor = classify(&tensor, k, batched, labels(choice.index), &name)?;
        }
        let placement = match &choice.shared_memory {
            Some(place) => {
                let bytes = tensor.data().to_le_bytes();
                if bytes.len() > place.byte_size {
                    return Err(ScoringError::BadRequest(format!(
                        "shared memory size specified with the request for output '{name}' ({} bytes) should be at least {} bytes to hold the results",
                        place.byte_size,
                        bytes.len()
                    )));
                }
                let shared_memory = shared_memory.ok_or_else(|| {
                    ScoringError::BadRequest("this server has no shared memory regions".into())
                })?;
                shared_memory
                    .get(&place.region)?
                    .write(place.offset, &bytes)?;
                Placement::SharedMemory {
                    region: place.region.clone(),
                    byte_size: bytes.len(),
                }
            }
            None if choice.binary => Placement::Binary,
            None => Placement::Json,
        };
        finished.push(FinishedOutput {
            name,
            tensor,
            placement,
        });
    }
    Ok(finished)
}

/// Triton's classification extension: per row, the `k` largest values as
/// `"value:index"` or `"value:index:label"` strings, largest first.
pub fn classify(
    tensor: &Tensor,
    k: usize,
    batched: bool,
    labels: Option<&[String]>,
    name: &str,
) -> Result<Tensor, ScoringError> {
    if tensor.dtype() == DataType::Bytes {
        return Err(ScoringError::BadRequest(format!(
            "output '{name}': classification needs a numeric output, this one is BYTES"
        )));
    }
    let values = tensor.data().to_f64_vec();
    let rows = if batched { tensor.rows().max(1) } else { 1 };
    let per_row = values.len().checked_div(rows).unwrap_or(0);
    let k = k.min(per_row);
    let mut classes = Vec::with_capacity(rows * k);
    for row in values.chunks(per_row.max(1)).take(rows) {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &i in order.iter().take(k) {
            classes.push(match labels.and_then(|l| l.get(i)) {
                Some(label) => format!("{:.6}:{i}:{label}", row[i]),
                None => format!("{:.6}:{i}", row[i]),
            });
        }
    }
    let shape = if batched { vec![rows, k] } else { vec![k] };
    Ok(Tensor::new(shape, classes)?)
}

/// An encoded body, and the JSON header's length when binary data follows it.
pub struct EncodedBody {
    pub body: Vec<u8>,
    pub json_len: Option<usize>,
}

/// Encodes finished outputs as the JSON header plus any binary data after it.
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    id: Option<&str>,
    outputs: &[FinishedOutput],
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
    let encoded: Vec<Output> = outputs
        .iter()
        .map(|finished| {
            let tensor = &finished.tensor;
            let mut out = Output {
                name: &finished.name,
                datatype: tensor.dtype().as_str(),
                shape: tensor.shape(),
                parameters: None,
                data: None,
            };
            match &finished.placement {
                Placement::Binary => {
                    let bytes = tensor.data().to_le_bytes();
                    out.parameters = Some(Parameters {
                        binary_data_size: bytes.len(),
                    });
                    binary.extend_from_slice(&bytes);
                }
                Placement::Json => out.data = Some(json::FlatData(tensor.data())),
                // As Triton: neither data nor parameters. Triton's C++ client (perf_analyzer)
                // reads any output with parameters as binary data of `binary_data_size`.
                Placement::SharedMemory { .. } => {}
            }
            out
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
        decode_tensors(raw.outputs, binary, "output", None)
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
            let outputs = vec![x.clone(), x.clone()];
            let finished =
                finish_outputs(&selected, &signature(), outputs, true, |_| None, None).unwrap();
            let answer = encode_response("m", "1", None, &finished);
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
        assert_eq!(selected.len(), 1);
        assert_eq!((selected[0].index, selected[0].binary), (0, true));
        let y = Tensor::new(vec![1, 2], vec![3f32, 4.0]).unwrap();
        let z = y.clone();
        let finished =
            finish_outputs(&selected, &signature(), vec![y, z], true, |_| None, None).unwrap();
        let resp = encode_response("m", "1", req.id.as_deref(), &finished);
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
            "BadRequest"
        );
    }

    #[test]
    fn what_modelpod_would_ignore_is_refused_by_name() {
        let refused = |body: &str| {
            decode_request(body.as_bytes(), None)
                .unwrap_err()
                .to_string()
        };
        let input = r#"{"name":"x","shape":[1],"datatype":"FP32","data":[1]}"#;
        let e = refused(&format!(
            r#"{{"parameters":{{"timeout":5}},"inputs":[{input}]}}"#
        ));
        assert!(e.contains("'timeout'") && e.contains("the request"), "{e}");
        let e = refused(
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"parameters":{"colour":1}}]}"#,
        );
        assert!(e.contains("'colour'") && e.contains("input 'x'"), "{e}");
        let e = refused(&format!(
            r#"{{"inputs":[{input}],"outputs":[{{"name":"y"}},{{"name":"y"}}]}}"#
        ));
        assert!(e.contains("output 'y' is named more than once"), "{e}");
        let e = refused(&format!(r#"{{"inputs":[{input},{input}]}}"#));
        assert!(e.contains("input 'x' is named more than once"), "{e}");
        let e = refused(&format!(
            r#"{{"inputs":[{input}],"outputs":[{{"name":"y","parameters":{{"classification":0}}}}]}}"#
        ));
        assert!(
            e.contains("classification must be a positive integer"),
            "{e}"
        );
    }

    #[test]
    fn a_raw_binary_request_is_the_single_inputs_data() {
        let sig = Signature {
            inputs: vec![TensorSpec {
                name: "x".into(),
                dtype: DataType::Fp32,
                dims: vec![None, Some(2)],
                map_keys: None,
            }],
            outputs: vec![],
        };
        let body: Vec<u8> = [1f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let request = raw_binary_request(&body, &sig, true).unwrap();
        assert_eq!(request.inputs[0].1.shape(), &[2, 2]);
        assert!(request.binary_output);
        assert!(raw_binary_request(&body[..6], &sig, true).is_err());
        let two = Signature {
            inputs: vec![sig.inputs[0].clone(), sig.inputs[0].clone()],
            outputs: vec![],
        };
        assert!(
            raw_binary_request(&body, &two, true)
                .unwrap_err()
                .to_string()
                .contains("one input")
        );
    }

    #[test]
    fn json_deeper_than_the_limit_is_a_bad_request() {
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let body = |depth: usize| {
            format!(
                r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":{}}}]}}"#,
                nested(depth)
            )
        };
        // The body adds three levels (the object, `inputs`, the input).
        let e = decode_request(body(120).as_bytes(), None).unwrap_err();
        assert!(e.to_string().contains("deeper than 100"), "{e}");
        assert_eq!(e.kind(), "BadRequest");
        if let Err(e) = decode_request(body(97).as_bytes(), None) {
            assert!(!e.to_string().contains("deeper"), "{e}");
        }
        // Brackets inside strings do not count.
        let quoted = format!(r#"{{"id":"{}","inputs":[]}}"#, "[".repeat(200));
        assert!(decode_request(quoted.as_bytes(), None).is_ok());
    }

    #[test]
    fn classification_gives_the_top_classes_per_row_with_labels() {
        let t = Tensor::new(vec![2, 3], vec![0.1f32, 0.7, 0.2, 0.5, 0.25, 0.25]).unwrap();
        let labels = ["cat".to_string(), "dog".into(), "eel".into()];
        let classes = classify(&t, 2, true, Some(&labels), "y").unwrap();
        assert_eq!(classes.shape(), &[2, 2]);
        assert_eq!(
            classes.data(),
            &TensorData::Bytes(vec![
                "0.700000:1:dog".into(),
                "0.200000:2:eel".into(),
                "0.500000:0:cat".into(),
                "0.250000:1:dog".into(),
            ])
        );
        let one = classify(&t, 9, false, None, "y").unwrap();
        assert_eq!(one.shape(), &[6], "k is capped at the classes there are");
        let text = Tensor::new(vec![1], vec!["a".to_string()]).unwrap();
        assert!(classify(&text, 1, false, None, "y").is_err());
    }
}
