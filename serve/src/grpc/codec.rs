//! Tensors to and from the gRPC messages: typed `InferTensorContents` or `raw_*_contents`
//! in, raw contents out (as Triton answers, which every client reads), and parameter maps
//! checked as strictly as the JSON ones.

use modelpod_accel::{DataType, Tensor, TensorData};
use modelpod_proto::inference::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse,
    infer_parameter::ParameterChoice, model_infer_request::InferInputTensor,
    model_infer_response::InferOutputTensor,
};
use modelpod_scoring::ScoringError;
use modelpod_scoring::shared_memory::SystemSharedMemory;
use modelpod_scoring::v2::{
    self, FinishedOutput, InferRequest, Parameter, Placement, RequestedOutput,
};
use std::collections::HashMap;

fn parameter(p: &InferParameter) -> Parameter<'_> {
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Parameter::Bool(*b),
        Some(ParameterChoice::Int64Param(n)) => Parameter::Int(*n),
        Some(ParameterChoice::Uint64Param(n)) => {
            i64::try_from(*n).map_or(Parameter::Other, Parameter::Int)
        }
        Some(ParameterChoice::StringParam(s)) => Parameter::Text(s),
        Some(ParameterChoice::DoubleParam(_)) | None => Parameter::Other,
    }
}

fn lookup<'a>(map: &'a HashMap<String, InferParameter>) -> impl Fn(&str) -> Option<Parameter<'a>> {
    |key| map.get(key).map(parameter)
}

/// Decodes a ModelInfer request into the protocol-neutral request.
pub fn decode_request(
    mut message: ModelInferRequest,
    shared_memory: &SystemSharedMemory,
) -> Result<InferRequest, ScoringError> {
    v2::check_parameters(
        message.parameters.keys().map(String::as_str),
        v2::REQUEST_PARAMETERS,
        "the request",
    )?;
    // One raw entry per input that has neither typed contents nor a shared memory region,
    // in order (clients leave those out of raw_input_contents).
    let raw = std::mem::take(&mut message.raw_input_contents);
    let mut raw_entries = raw.iter();
    let mut inputs = Vec::with_capacity(message.inputs.len());
    for input in message.inputs {
        let what = format!("input '{}'", input.name);
        v2::check_parameters(
            input.parameters.keys().map(String::as_str),
            &v2::INPUT_PARAMETERS[1..],
            &what,
        )?;
        let takes_raw = !raw.is_empty()
            && input.contents.is_none()
            && !input.parameters.contains_key("shared_memory_region");
        let entry = if takes_raw {
            Some(raw_entries.next().ok_or_else(|| {
                ScoringError::BadRequest(format!(
                    "{what}: raw_input_contents has fewer entries than the inputs that need one"
                ))
            })?)
        } else {
            None
        };
        let tensor = decode_input(&input, entry.map(|b| b.as_ref()), shared_memory, &what)?;
        inputs.push((input.name, tensor));
    }
    if raw_entries.next().is_some() {
        return Err(ScoringError::BadRequest(format!(
            "raw_input_contents has {} entries, more than the inputs that take one",
            raw.len()
        )));
    }
    let mut outputs = Vec::with_capacity(message.outputs.len());
    for output in message.outputs {
        let what = format!("output '{}'", output.name);
        v2::check_parameters(
            output.parameters.keys().map(String::as_str),
            &v2::OUTPUT_PARAMETERS[1..],
            &what,
        )?;
        outputs.push(RequestedOutput {
            binary: None,
            classification: v2::classification_count(
                output.parameters.get("classification").map(parameter),
                &what,
            )?,
            shared_memory: v2::shared_memory_ref(lookup(&output.parameters), &what)?,
            name: output.name,
        });
    }
    v2::check_unique(inputs.iter().map(|(n, _)| n.as_str()), "input")?;
    v2::check_unique(outputs.iter().map(|o| o.name.as_str()), "output")?;
    Ok(InferRequest {
        id: Some(message.id).filter(|id| !id.is_empty()),
        sequence: v2::sequence_flags(lookup(&message.parameters))?,
        inputs,
        outputs,
        binary_output: true,
    })
}

fn decode_input(
    input: &InferInputTensor,
    raw: Option<&[u8]>,
    shared_memory: &SystemSharedMemory,
    what: &str,
) -> Result<Tensor, ScoringError> {
    let dtype: DataType = input.datatype.parse().map_err(|_| {
        ScoringError::BadRequest(format!("{what}: unsupported datatype '{}'", input.datatype))
    })?;
    let shape = input
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| {
            ScoringError::BadRequest(format!(
                "{what}: shape {:?} has a negative dimension",
                input.shape
            ))
        })?;
    let count = modelpod_accel::element_count(&shape).ok_or_else(|| {
        ScoringError::BadRequest(format!(
            "{what}: shape {shape:?} holds more elements than can be addressed"
        ))
    })?;
    let in_shared_memory = v2::shared_memory_ref(lookup(&input.parameters), what)?;
    let data = match (in_shared_memory, raw, &input.contents) {
        (Some(place), None, None) => {
            v2::read_shared_memory(Some(shared_memory), &place, dtype, what)?
        }
        (None, Some(bytes), None) => TensorData::from_le_bytes(dtype, bytes)
            .map_err(|e| ScoringError::BadRequest(format!("{what}: {e}")))?,
        (None, None, Some(contents)) => typed_contents(dtype, contents, what)?,
        (None, None, None) => {
            return Err(ScoringError::BadRequest(format!(
                "{what} has no data: give contents, raw_input_contents or a shared memory region"
            )));
        }
        _ => {
            return Err(ScoringError::BadRequest(format!(
                "{what}: give its data one way only (contents, raw_input_contents or shared memory)"
            )));
        }
    };
    if data.len() != count {
        return Err(ScoringError::BadRequest(format!(
            "{what} has shape {shape:?} ({count} elements) but {} elements of data",
            data.len()
        )));
    }
    Ok(Tensor::new(shape, data)?)
}

/// The typed field the protocol gives `dtype`, each element checked to fit the type.
fn typed_contents(
    dtype: DataType,
    contents: &InferTensorContents,
    what: &str,
) -> Result<TensorData, ScoringError> {
    fn narrow<W: Copy + std::fmt::Display, N: TryFrom<W>>(
        wide: &[W],
        dtype: DataType,
        what: &str,
    ) -> Result<Vec<N>, ScoringError> {
        wide.iter()
            .map(|&w| {
                N::try_from(w).map_err(|_| {
                    ScoringError::BadRequest(format!("{what}: {w} does not fit {dtype}"))
                })
            })
            .collect()
    }
    Ok(match dtype {
        DataType::Bool => TensorData::Bool(contents.bool_contents.clone()),
        DataType::Int8 => TensorData::Int8(narrow(&contents.int_contents, dtype, what)?),
        DataType::Int16 => TensorData::Int16(narrow(&contents.int_contents, dtype, what)?),
        DataType::Int32 => TensorData::Int32(contents.int_contents.clone()),
        DataType::Int64 => TensorData::Int64(contents.int64_contents.clone()),
        DataType::Uint8 => TensorData::Uint8(narrow(&contents.uint_contents, dtype, what)?),
        DataType::Uint16 => TensorData::Uint16(narrow(&contents.uint_contents, dtype, what)?),
        DataType::Uint32 => TensorData::Uint32(contents.uint_contents.clone()),
        DataType::Uint64 => TensorData::Uint64(contents.uint64_contents.clone()),
        DataType::Fp32 => TensorData::Fp32(contents.fp32_contents.clone()),
        DataType::Fp64 => TensorData::Fp64(contents.fp64_contents.clone()),
        // As in Triton: the protocol has no typed field for half precision.
        DataType::Fp16 | DataType::Bf16 => {
            return Err(ScoringError::BadRequest(format!(
                "{what}: {dtype} has no typed contents field in the protocol; send it in \
                 raw_input_contents"
            )));
        }
        DataType::Bytes => TensorData::Bytes(
            contents
                .bytes_contents
                .iter()
                .map(|b| {
                    String::from_utf8(b.to_vec()).map_err(|_| {
                        ScoringError::BadRequest(format!(
                            "{what}: a BYTES element is not UTF-8 text"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// The answer: every output's data raw, in order (an empty entry for one written to shared
/// memory, so indices still line up, and no parameters on it, as Triton answers).
pub fn encode_response(
    model_name: &str,
    model_version: u64,
    id: Option<String>,
    finished: Vec<FinishedOutput>,
) -> ModelInferResponse {
    let mut outputs = Vec::with_capacity(finished.len());
    let mut raw = Vec::with_capacity(finished.len());
    for output in finished {
        match &output.placement {
            Placement::SharedMemory { .. } => raw.push(bytes::Bytes::new()),
            Placement::Json | Placement::Binary => {
                raw.push(bytes::Bytes::from(output.tensor.data().to_le_bytes()));
            }
        }
        outputs.push(InferOutputTensor {
            name: output.name,
            datatype: output.tensor.dtype().as_str().to_string(),
            shape: output.tensor.shape().iter().map(|&d| d as i64).collect(),
            parameters: HashMap::new(),
            contents: None,
        });
    }
    ModelInferResponse {
        model_name: model_name.to_string(),
        model_version: model_version.to_string(),
        id: id.unwrap_or_default(),
        parameters: HashMap::new(),
        outputs,
        raw_output_contents: raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(value: usize) -> InferParameter {
        InferParameter {
            parameter_choice: Some(ParameterChoice::Int64Param(value as i64)),
        }
    }
    use proptest::prelude::*;
    use prost::Message;

    fn input(name: &str, datatype: &str, shape: Vec<i64>) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            parameters: HashMap::new(),
            contents: None,
        }
    }

    #[test]
    fn typed_and_raw_contents_decode_alike() {
        let shm = SystemSharedMemory::default();
        let mut typed = input("x", "INT16", vec![1, 2]);
        typed.contents = Some(InferTensorContents {
            int_contents: vec![-3, 7],
            ..Default::default()
        });
        let request = ModelInferRequest {
            inputs: vec![typed],
            ..Default::default()
        };
        let a = decode_request(request, &shm).unwrap();
        let raw = ModelInferRequest {
            inputs: vec![input("x", "INT16", vec![1, 2])],
            raw_input_contents: vec![[(-3i16).to_le_bytes(), 7i16.to_le_bytes()].concat().into()],
            ..Default::default()
        };
        let b = decode_request(raw, &shm).unwrap();
        assert_eq!(a.inputs, b.inputs);
        assert_eq!(a.inputs[0].1.data(), &TensorData::Int16(vec![-3, 7]));
    }

    #[test]
    fn out_of_range_values_duplicates_and_unknown_parameters_are_refused() {
        let shm = SystemSharedMemory::default();
        let mut x = input("x", "INT8", vec![1]);
        x.contents = Some(InferTensorContents {
            int_contents: vec![300],
            ..Default::default()
        });
        let e = decode_request(
            ModelInferRequest {
                inputs: vec![x.clone()],
                ..Default::default()
            },
            &shm,
        )
        .unwrap_err();
        assert!(e.to_string().contains("300 does not fit INT8"), "{e}");
        let mut ok = x.clone();
        ok.contents = Some(InferTensorContents {
            int_contents: vec![3],
            ..Default::default()
        });
        let twice = ModelInferRequest {
            inputs: vec![ok.clone(), ok.clone()],
            ..Default::default()
        };
        assert!(
            decode_request(twice, &shm)
                .unwrap_err()
                .to_string()
                .contains("more than once")
        );
        let mut request = ModelInferRequest {
            inputs: vec![ok],
            ..Default::default()
        };
        request.parameters.insert("priority".into(), int(1));
        assert!(
            decode_request(request, &shm)
                .unwrap_err()
                .to_string()
                .contains("'priority'")
        );
    }

    proptest! {
        /// Whatever bytes arrive, decoding answers a message or a clear error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let shm = SystemSharedMemory::default();
            if let Ok(message) = ModelInferRequest::decode(bytes.as_slice()) {
                let _ = decode_request(message, &shm);
            }
        }

        /// Well-formed messages with arbitrary shapes, types and data lengths.
        #[test]
        fn malformed_tensors_get_a_bad_request(
            shape in proptest::collection::vec(-2i64..(1 << 40), 0..4),
            datatype in prop::sample::select(vec!["FP32", "INT8", "UINT64", "BYTES", "BOOL", "FP16", "nonsense"]),
            raw in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let shm = SystemSharedMemory::default();
            let request = ModelInferRequest {
                inputs: vec![input("x", datatype, shape)],
                raw_input_contents: vec![raw.into()],
                ..Default::default()
            };
            if let Err(e) = decode_request(request, &shm) {
                prop_assert!(matches!(e, ScoringError::BadRequest(_) | ScoringError::InvalidInput(_)), "{e:?}");
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
