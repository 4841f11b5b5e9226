//! The gRPC inference every gRPC test sends: one row of the `mlp` fixture, as raw contents,
//! and the logits its ONNX reference run gives.

use modelpod_proto::inference::model_infer_request::InferInputTensor;
use modelpod_proto::inference::{ModelInferRequest, ModelInferResponse};

/// The mlp fixture's answer to [`mlp_request`], from its ONNX reference run.
pub const MLP_LOGITS: [f32; 3] = [0.6457274, 0.7104346, 1.4959935];

/// How far an engine's logits may be from [`MLP_LOGITS`].
pub const MLP_TOLERANCE: f32 = 1e-4;

pub fn mlp_request() -> ModelInferRequest {
    let values = [-0.849f32, -0.299, 0.024, -1.215];
    ModelInferRequest {
        model_name: "mlp".into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 4],
            ..Default::default()
        }],
        raw_input_contents: vec![values.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    }
}

/// The first output's raw contents as FP32.
pub fn logits(answer: &ModelInferResponse) -> Vec<f32> {
    answer.raw_output_contents[0]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The answer is the mlp fixture's, within [`MLP_TOLERANCE`].
pub fn assert_mlp_logits(answer: &ModelInferResponse) {
    let logits = logits(answer);
    assert_eq!(logits.len(), MLP_LOGITS.len(), "{logits:?}");
    for (got, want) in logits.iter().zip(MLP_LOGITS) {
        assert!(
            (got - want).abs() < MLP_TOLERANCE,
            "{logits:?} vs {MLP_LOGITS:?}"
        );
    }
}
