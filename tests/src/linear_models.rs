//! Many distinct real models for density tests, written as ONNX with no Python: each is
//! `y = x · W + b` (x: [batch, 4] FP32, y: [batch, 3]) with its own weights, so an answer from
//! the wrong model, or from a stale copy, is caught.

use prost::Message;
use std::path::Path;
use tract_onnx::pb::{
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto, tensor_proto, tensor_shape_proto, type_proto,
};

pub const INPUTS: usize = 4;
pub const OUTPUTS: usize = 3;

/// The weights of model number `index`, and its answer for one row.
#[derive(Debug, Clone)]
pub struct LinearModel {
    pub name: String,
    pub weights: [[f32; OUTPUTS]; INPUTS],
    pub bias: [f32; OUTPUTS],
}

impl LinearModel {
    pub fn new(index: usize) -> LinearModel {
        let i = index as f32;
        let mut weights = [[0.0; OUTPUTS]; INPUTS];
        for (r, row) in weights.iter_mut().enumerate() {
            for (c, w) in row.iter_mut().enumerate() {
                *w = ((r * OUTPUTS + c) as f32 + 1.0) * 0.01 * (1.0 + i * 0.001);
            }
        }
        LinearModel {
            name: format!("linear_{index:05}"),
            weights,
            bias: [i, -i, i * 0.5],
        }
    }

    pub fn predict(&self, x: &[f32; INPUTS]) -> [f32; OUTPUTS] {
        let mut y = self.bias;
        for (c, out) in y.iter_mut().enumerate() {
            for (r, xr) in x.iter().enumerate() {
                *out += xr * self.weights[r][c];
            }
        }
        y
    }

    pub fn onnx_bytes(&self) -> Vec<u8> {
        let float = tensor_proto::DataType::Float as i32;
        let initializer = |name: &str, dims: Vec<i64>, data: Vec<f32>| TensorProto {
            name: name.into(),
            dims,
            data_type: float,
            float_data: data,
            ..Default::default()
        };
        let value = |name: &str, width: i64| ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: float,
                    shape: Some(TensorShapeProto {
                        dim: vec![
                            dim(tensor_shape_proto::dimension::Value::DimParam(
                                "batch".into(),
                            )),
                            dim(tensor_shape_proto::dimension::Value::DimValue(width)),
                        ],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let graph = GraphProto {
            name: self.name.clone(),
            node: vec![
                NodeProto {
                    op_type: "MatMul".into(),
                    input: vec!["x".into(), "W".into()],
                    output: vec!["xw".into()],
                    ..Default::default()
                },
                NodeProto {
                    op_type: "Add".into(),
                    input: vec!["xw".into(), "b".into()],
                    output: vec!["y".into()],
                    ..Default::default()
                },
            ],
            initializer: vec![
                initializer(
                    "W",
                    vec![INPUTS as i64, OUTPUTS as i64],
                    self.weights.iter().flatten().copied().collect(),
                ),
                initializer("b", vec![OUTPUTS as i64], self.bias.to_vec()),
            ],
            input: vec![value("x", INPUTS as i64)],
            output: vec![value("y", OUTPUTS as i64)],
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            producer_name: "modelpod-tests".into(),
            graph: Some(graph),
            ..Default::default()
        }
        .encode_to_vec()
    }
}

fn dim(value: tensor_shape_proto::dimension::Value) -> tensor_shape_proto::Dimension {
    tensor_shape_proto::Dimension {
        value: Some(value),
        ..Default::default()
    }
}

/// Writes `count` distinct models as `<root>/linear_NNNNN/1/model.onnx`.
pub fn write_repository(root: &Path, count: usize) -> Vec<LinearModel> {
    (0..count)
        .map(|index| {
            let model = LinearModel::new(index);
            let dir = root.join(&model.name).join("1");
            std::fs::create_dir_all(&dir).expect("creating a model folder");
            std::fs::write(dir.join("model.onnx"), model.onnx_bytes()).expect("writing a model");
            model
        })
        .collect()
}
