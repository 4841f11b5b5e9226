//! tract: the pure-Rust engine. The graph is optimised once with a symbolic batch dimension,
//! and the resulting plan is shared by every worker without a lock.

use crate::signature::read_onnx_proto;
use crate::{Backend, EngineError, EngineKind, LoadedModel, Signature, Tensor, TensorData};
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::{
    DatumType, Framework, InferenceModelExt, IntoTValue, TValue, Tensor as TractTensor,
    TypedRunnableModel,
};
use tract_onnx::tract_core::model::IntoRunnable;

pub struct TractModel {
    plan: Arc<TypedRunnableModel>,
    signature: Signature,
}

impl TractModel {
    pub fn load(path: &Path) -> Result<TractModel, EngineError> {
        let load_error = |e: tract_onnx::prelude::TractError| EngineError::Load {
            path: path.to_path_buf(),
            reason: format!("tract: {e:#}"),
        };
        let proto = read_onnx_proto(path)?;
        let signature = Signature::from_onnx_proto(&proto, path)?;
        let plan = tract_onnx::onnx()
            .model_for_proto_model(&proto)
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(load_error)?;
        Ok(TractModel { plan, signature })
    }
}

impl LoadedModel for TractModel {
    fn engine(&self) -> EngineKind {
        EngineKind::Tract
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn instantiate(&self) -> Result<Box<dyn Backend>, EngineError> {
        Ok(Box::new(TractBackend {
            plan: self.plan.clone(),
            signature: self.signature.clone(),
        }))
    }
}

struct TractBackend {
    plan: Arc<TypedRunnableModel>,
    signature: Signature,
}

impl Backend for TractBackend {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, EngineError> {
        let values = inputs
            .into_iter()
            .zip(&self.signature.inputs)
            .map(|(t, spec)| {
                to_tract(t).map_err(|e| EngineError::BadInput {
                    name: spec.name.clone(),
                    reason: format!("{e:#}"),
                })
            })
            .collect::<Result<_, _>>()?;
        let outputs = self
            .plan
            .run(values)
            .map_err(|e| EngineError::Run(format!("{e:#}")))?;
        outputs
            .into_iter()
            .map(|v| from_tract(&v).map_err(|e| EngineError::Run(format!("{e:#}"))))
            .collect()
    }
}

fn to_tract(t: Tensor) -> tract_onnx::prelude::TractResult<TValue> {
    let (shape, data) = t.into_parts();
    let tensor = crate::with_tensor_data!(data, v => TractTensor::from_shape(&shape, &v)?);
    Ok(tensor.into_tvalue())
}

fn from_tract(value: &TValue) -> tract_onnx::prelude::TractResult<Tensor> {
    let shape = value.shape().to_vec();
    macro_rules! take {
        ($t:ty) => {
            TensorData::from(
                value
                    .to_plain_array_view::<$t>()?
                    .iter()
                    .copied()
                    .collect::<Vec<$t>>(),
            )
        };
    }
    let data = match value.datum_type() {
        DatumType::Bool => take!(bool),
        DatumType::U8 => take!(u8),
        DatumType::U16 => take!(u16),
        DatumType::U32 => take!(u32),
        DatumType::U64 => take!(u64),
        DatumType::I8 => take!(i8),
        DatumType::I16 => take!(i16),
        DatumType::I32 => take!(i32),
        DatumType::I64 => take!(i64),
        DatumType::F32 => take!(f32),
        DatumType::F64 => take!(f64),
        other => {
            return Err(tract_onnx::prelude::TractError::msg(format!(
                "output element type {other:?} is not served"
            )));
        }
    };
    Ok(Tensor::new(shape, data)?)
}
