//! Model signatures read from the ONNX graph, independent of the engine that runs it.

use crate::{DataType, EngineError};
use serde::Serialize;
use std::collections::HashMap;
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
    /// Set where the graph ended this output in a ZipMap (scikit-learn's per-row
    /// `{label: probability}`): the engines run the graph up to the map's input, so the output
    /// is that `[batch, classes]` tensor, and the keys of each row's map are these, in column
    /// order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map_keys: Option<MapKeys>,
}

/// The keys of a ZipMap output, one per column.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MapKeys {
    Strings(Vec<String>),
    Int64(Vec<i64>),
}

impl MapKeys {
    pub fn len(&self) -> usize {
        match self {
            MapKeys::Strings(keys) => keys.len(),
            MapKeys::Int64(keys) => keys.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Key `i` as a JSON object key.
    pub fn key(&self, i: usize) -> Option<String> {
        match self {
            MapKeys::Strings(keys) => keys.get(i).cloned(),
            MapKeys::Int64(keys) => keys.get(i).map(i64::to_string),
        }
    }
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

    /// Reads the signature of an ONNX file, as the engines serve it (ZipMaps lifted).
    pub fn from_onnx_file(path: &Path) -> Result<Signature, EngineError> {
        Ok(prepared_graph(path)?.1)
    }

    fn from_onnx_proto(
        proto: &pb::ModelProto,
        path: &Path,
        map_keys: &HashMap<String, MapKeys>,
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
                    "only tensor inputs and outputs are served, and sequences of maps made by \
                     a ZipMap"
                        .into(),
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
                map_keys: map_keys.get(&info.name).cloned(),
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

/// The graph as the engines run it, and its signature: read from `path`, with every ZipMap
/// that makes a graph output lifted out (see [`lift_zipmaps`]).
pub(crate) fn prepared_graph(path: &Path) -> Result<(pb::ModelProto, Signature), EngineError> {
    let mut proto = read_onnx_proto(path)?;
    let map_keys = lift_zipmaps(&mut proto).map_err(|reason| EngineError::Load {
        path: path.to_path_buf(),
        reason,
    })?;
    let signature = Signature::from_onnx_proto(&proto, path, &map_keys)?;
    Ok((proto, signature))
}

/// Replaces each ZipMap (`ai.onnx.ml`) whose result is a graph output with an Identity of
/// its input, the `[batch, classes]` probabilities, and returns the map keys per output.
/// modelpod builds the per-row maps when it encodes the answer: the batcher and the codecs
/// then handle one dense tensor, tract (which has no ZipMap) runs the graph, and ONNX
/// Runtime does not allocate a map per row.
fn lift_zipmaps(proto: &mut pb::ModelProto) -> Result<HashMap<String, MapKeys>, String> {
    let mut lifted = HashMap::new();
    let Some(graph) = proto.graph.as_mut() else {
        return Ok(lifted);
    };
    let outputs: std::collections::HashSet<String> =
        graph.output.iter().map(|o| o.name.clone()).collect();
    for node in &mut graph.node {
        if node.op_type != "ZipMap" || node.domain != "ai.onnx.ml" {
            continue;
        }
        let Some(output) = node
            .output
            .first()
            .filter(|o| outputs.contains(*o))
            .cloned()
        else {
            continue;
        };
        let attribute = |name: &str| node.attribute.iter().find(|a| a.name == name);
        let keys = match (
            attribute("classlabels_strings"),
            attribute("classlabels_int64s"),
        ) {
            (Some(strings), None) => MapKeys::Strings(
                strings
                    .strings
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            ),
            (None, Some(ints)) => MapKeys::Int64(ints.ints.clone()),
            _ => {
                return Err(format!(
                    "ZipMap '{}' needs exactly one of classlabels_strings and classlabels_int64s",
                    node.name
                ));
            }
        };
        node.op_type = "Identity".into();
        node.domain = String::new();
        node.attribute.clear();
        lifted.insert(output, keys);
    }
    for info in &mut graph.output {
        if let Some(keys) = lifted.get(&info.name) {
            info.r#type = Some(pb::TypeProto {
                denotation: String::new(),
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(pb::TensorShapeProto {
                        dim: vec![
                            pb::tensor_shape_proto::Dimension {
                                denotation: String::new(),
                                value: Some(pb::tensor_shape_proto::dimension::Value::DimParam(
                                    "modelpod_dim0".into(),
                                )),
                            },
                            pb::tensor_shape_proto::Dimension {
                                denotation: String::new(),
                                value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(
                                    keys.len() as i64,
                                )),
                            },
                        ],
                    }),
                })),
            });
        }
    }
    // An Identity needs the default domain, which a graph of ai.onnx.ml operators alone may
    // not import.
    if !lifted.is_empty() && !proto.opset_import.iter().any(|o| o.domain.is_empty()) {
        proto.opset_import.push(pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        });
    }
    Ok(lifted)
}
