//! Model signatures read from the ONNX graph, independent of the engine that runs it.

use crate::{DataType, EngineError};
use serde::Serialize;
use std::path::Path;
use tract_onnx::pb;
use tract_onnx::prelude::Framework;

/// One input or output: its name, element type and dimensions (`None` where the graph
/// leaves a dimension symbolic, such as the batch dimension).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<Option<usize>>,
}

impl TensorSpec {
    /// Dimensions as the Open Inference Protocol writes them: -1 for a dynamic one.
    pub fn dims_i64(&self) -> Vec<i64> {
        self.dims
            .iter()
            .map(|d| d.map_or(-1, |d| d as i64))
            .collect()
    }

    /// Whether a concrete shape fits these dimensions.
    pub fn accepts_shape(&self, shape: &[usize]) -> bool {
        shape.len() == self.dims.len()
            && self
                .dims
                .iter()
                .zip(shape)
                .all(|(want, got)| want.is_none_or(|w| w == *got))
    }

    /// Whether dimension 0 is symbolic, so any batch size can run.
    pub fn has_dynamic_batch(&self) -> bool {
        matches!(self.dims.first(), Some(None))
    }
}

/// Inputs and outputs of a model, in graph order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl Signature {
    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|s| s.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|s| s.name == name)
    }

    /// Reads the signature of an ONNX file.
    pub fn from_onnx_file(path: &Path) -> Result<Signature, EngineError> {
        let proto = read_onnx_proto(path)?;
        Signature::from_onnx_proto(&proto, path)
    }

    pub(crate) fn from_onnx_proto(
        proto: &pb::ModelProto,
        path: &Path,
    ) -> Result<Signature, EngineError> {
        let graph = proto.graph.as_ref().ok_or_else(|| EngineError::Load {
            path: path.to_path_buf(),
            reason: "the ONNX file has no graph".into(),
        })?;
        // Older exporters list initializers among the inputs; they are weights, not inputs.
        let initializers: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let spec = |info: &pb::ValueInfoProto| -> Result<TensorSpec, EngineError> {
            let unsupported = |what: String| EngineError::Load {
                path: path.to_path_buf(),
                reason: format!("'{}': {what}", info.name),
            };
            let Some(pb::type_proto::Value::TensorType(tensor)) =
                info.r#type.as_ref().and_then(|t| t.value.as_ref())
            else {
                return Err(unsupported(
                    "only tensor inputs and outputs are served".into(),
                ));
            };
            let dtype = DataType::from_onnx(tensor.elem_type).ok_or_else(|| {
                unsupported(format!(
                    "unsupported ONNX element type {}",
                    tensor.elem_type
                ))
            })?;
            let dims = tensor
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match d.value {
                            Some(pb::tensor_shape_proto::dimension::Value::DimValue(v))
                                if v > 0 =>
                            {
                                Some(v as usize)
                            }
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok(TensorSpec {
                name: info.name.clone(),
                dtype,
                dims,
            })
        };
        Ok(Signature {
            inputs: graph
                .input
                .iter()
                .filter(|i| !initializers.contains(i.name.as_str()))
                .map(spec)
                .collect::<Result<_, _>>()?,
            outputs: graph.output.iter().map(spec).collect::<Result<_, _>>()?,
        })
    }
}

pub(crate) fn read_onnx_proto(path: &Path) -> Result<pb::ModelProto, EngineError> {
    tract_onnx::onnx()
        .proto_model_for_path(path)
        .map_err(|e| EngineError::Load {
            path: path.to_path_buf(),
            reason: format!("not a readable ONNX model: {e}"),
        })
}
