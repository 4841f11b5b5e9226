//! tract: the pure-Rust engine. The graph is optimised once with a symbolic batch dimension,
//! and the resulting plan is shared by every worker without a lock. On a CUDA device the plan
//! comes from tract's CUDA runtime (`tract-cuda`, over cudarc) and each worker keeps its own
//! run state, whose stream is the worker thread's.

use crate::signature::read_onnx_proto;
use crate::{Backend, Device, EngineError, EngineKind, LoadedModel, Signature, Tensor, TensorData};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::{
    DatumType, Framework, InferenceModelExt, IntoTValue, TValue, TVec, Tensor as TractTensor,
    TractResult, TypedRunnableModel,
};
use tract_onnx::tract_core::model::IntoRunnable;
use tract_onnx::tract_core::runtime::{Runnable, State, runtime_for_name};

enum Plan {
    Cpu(Arc<TypedRunnableModel>),
    Cuda(Arc<dyn Runnable>),
}

pub struct TractModel {
    plan: Plan,
    engine: EngineKind,
    device: Device,
    signature: Signature,
}

impl TractModel {
    pub fn load(
        path: &Path,
        engine: EngineKind,
        device: Device,
    ) -> Result<TractModel, EngineError> {
        let load_error = |e: tract_onnx::prelude::TractError| EngineError::Load {
            path: path.to_path_buf(),
            reason: format!("tract: {e:#}"),
        };
        let proto = read_onnx_proto(path)?;
        let signature = Signature::from_onnx_proto(&proto, path)?;
        let model = tract_onnx::onnx()
            .model_for_proto_model(&proto)
            .map_err(load_error)?;
        let plan = match engine {
            EngineKind::TractCpu => Plan::Cpu(
                model
                    .into_optimized()
                    .and_then(|m| m.into_runnable())
                    .map_err(load_error)?,
            ),
            EngineKind::TractCuda => {
                let runtime = cuda_runtime(device)?;
                let typed = model
                    .into_typed()
                    .and_then(|m| m.into_decluttered())
                    .map_err(load_error)?;
                // tract-cuda reports some device failures by panicking; they must fail this
                // load, not the loading thread.
                let prepared = catch_unwind(AssertUnwindSafe(|| runtime.prepare(typed)))
                    .map_err(|_| EngineError::Unavailable {
                        engine,
                        reason: "tract's CUDA runtime panicked while preparing the model".into(),
                    })?
                    .map_err(load_error)?;
                Plan::Cuda(Arc::from(prepared))
            }
            other => {
                return Err(EngineError::Unavailable {
                    engine: other,
                    reason: "not a tract engine".into(),
                });
            }
        };
        Ok(TractModel {
            plan,
            engine,
            device,
            signature,
        })
    }
}

/// tract's CUDA runtime, after checking what would make it panic: it drives the process's
/// default device (ordinal 0) and creates its context on first use.
fn cuda_runtime(
    device: Device,
) -> Result<&'static dyn tract_onnx::tract_core::runtime::Runtime, EngineError> {
    let unavailable = |reason: String| EngineError::Unavailable {
        engine: EngineKind::TractCuda,
        reason,
    };
    // Links tract-cuda, whose runtime registers itself by name.
    let _ = tract_cuda::CudaTransform;
    if device != Device::Cuda(0) {
        return Err(unavailable(format!(
            "tract's CUDA runtime drives cuda:0 only, not {device}; select the device with \
             CUDA_VISIBLE_DEVICES"
        )));
    }
    let probe = crate::probe::cuda_devices();
    if probe.devices.is_empty() {
        return Err(unavailable(
            probe.unavailable.unwrap_or_else(|| "no CUDA device".into()),
        ));
    }
    match runtime_for_name("cuda") {
        Ok(Some(runtime)) => Ok(runtime),
        Ok(None) => Err(unavailable("tract's CUDA runtime is not linked".into())),
        Err(e) => Err(unavailable(format!("{e:#}"))),
    }
}

impl LoadedModel for TractModel {
    fn engine(&self) -> EngineKind {
        self.engine
    }

    fn device(&self) -> Device {
        self.device
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn instantiate(&self) -> Result<Box<dyn Backend>, EngineError> {
        let runner = match &self.plan {
            Plan::Cpu(plan) => Runner::Shared(plan.clone()),
            Plan::Cuda(plan) => Runner::Owned(
                plan.spawn()
                    .map_err(|e| EngineError::Run(format!("tract CUDA state: {e:#}")))?,
            ),
        };
        Ok(Box::new(TractBackend {
            runner,
            signature: self.signature.clone(),
        }))
    }
}

enum Runner {
    /// The CPU plan is run through a fresh state per call, shared by every worker.
    Shared(Arc<TypedRunnableModel>),
    /// A device state, owned by this worker: it holds the thread's stream and device buffers.
    Owned(Box<dyn State>),
}

impl Runner {
    fn run(&mut self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        match self {
            Runner::Shared(plan) => plan.run(inputs),
            Runner::Owned(state) => state.run(inputs),
        }
    }
}

struct TractBackend {
    runner: Runner,
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
            .runner
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tract_cuda_without_a_gpu_is_unavailable_not_a_panic() {
        if !crate::probe::cuda_devices().devices.is_empty() {
            return;
        }
        let file =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/mlp/1/model.onnx");
        for device in [Device::Cuda(0), Device::Cuda(1)] {
            match TractModel::load(&file, EngineKind::TractCuda, device) {
                Err(EngineError::Unavailable { engine, .. }) => {
                    assert_eq!(engine, EngineKind::TractCuda)
                }
                Err(other) => panic!("expected Unavailable, got {other}"),
                Ok(_) => panic!("tract-cuda loaded without a GPU"),
            }
        }
        // A device of the wrong kind is refused before anything is tried.
        assert!(matches!(
            crate::load_model(
                &file,
                EngineKind::TractCuda,
                Device::Cpu,
                &Default::default()
            ),
            Err(EngineError::Unavailable { .. })
        ));
    }
}
