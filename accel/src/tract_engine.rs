//! tract: the pure-Rust engine. The graph is optimised once with a symbolic batch dimension,
//! and the resulting plan is shared by every worker without a lock. On a CUDA device the plan
//! comes from tract's CUDA runtime (`tract-cuda`, over cudarc) and each worker keeps its own
//! run state, whose stream is the worker thread's.

use crate::signature::prepared_graph;
use crate::{
    Backend, DataType, Device, EngineError, EngineKind, LoadedModel, Signature, Tensor, TensorData,
    f16,
};
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
        let (mut proto, signature) = prepared_graph(path)?;
        if let Some(spec) = signature
            .inputs
            .iter()
            .chain(&signature.outputs)
            .find(|s| s.dtype == DataType::Bf16)
        {
            return Err(EngineError::Load {
                path: path.to_path_buf(),
                reason: format!(
                    "'{}' is BF16, which {engine} does not run (tract has no bfloat16 type); \
                     serve this model on an ONNX Runtime engine",
                    spec.name
                ),
            });
        }
        name_unnamed_dimensions(&mut proto);
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

/// Gives every dynamic input dimension without a name a symbol, which tract needs to type the
/// graph ("Source node without a determined fact" otherwise): skl2onnx's default export and
/// Triton's `-1` dimensions come this way. Dimensions at the same position share a symbol, as
/// the batch dimension of several inputs must.
fn name_unnamed_dimensions(proto: &mut tract_onnx::pb::ModelProto) {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value;
    use tract_onnx::pb::type_proto;
    let Some(graph) = proto.graph.as_mut() else {
        return;
    };
    for input in &mut graph.input {
        let Some(type_proto::Value::TensorType(tensor)) =
            input.r#type.as_mut().and_then(|t| t.value.as_mut())
        else {
            continue;
        };
        let Some(shape) = tensor.shape.as_mut() else {
            continue;
        };
        for (axis, dim) in shape.dim.iter_mut().enumerate() {
            let unnamed = match &dim.value {
                None => true,
                Some(Value::DimParam(name)) => name.is_empty(),
                Some(Value::DimValue(size)) => *size < 0,
            };
            if unnamed {
                dim.value = Some(Value::DimParam(format!("modelpod_dim{axis}")));
            }
        }
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
    macro_rules! plain {
        ($($var:ident),*) => {
            match data {
                $(TensorData::$var(v) => TractTensor::from_shape(&shape, &v)?,)*
                TensorData::Bytes(s) => {
                    tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(shape, s)?.into()
                }
                // Refused when the model loads; a BF16 input cannot reach a tract model.
                TensorData::Bf16(_) => {
                    return Err(tract_onnx::prelude::TractError::msg(
                        "BF16 tensors are not run by tract",
                    ));
                }
            }
        };
    }
    let tensor = plain!(
        Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Fp32, Fp64
    );
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
        DatumType::F16 => take!(f16),
        DatumType::F32 => take!(f32),
        DatumType::F64 => take!(f64),
        // tract types some integer results (skl2onnx's int64 class labels) as symbolic
        // dimensions; at run time they are plain numbers.
        DatumType::TDim => TensorData::Int64(
            value
                .to_plain_array_view::<tract_onnx::prelude::TDim>()?
                .iter()
                .map(|d| {
                    d.to_i64()
                        .map_err(|e| tract_onnx::prelude::TractError::msg(format!("{d}: {e}")))
                })
                .collect::<TractResult<Vec<i64>>>()?,
        ),
        DatumType::String => TensorData::Bytes(
            value
                .to_plain_array_view::<String>()?
                .iter()
                .cloned()
                .collect(),
        ),
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
    fn inputs_with_unnamed_dynamic_dimensions_load_and_run_at_any_batch() {
        use prost::Message;
        use tract_onnx::pb::type_proto;
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/mlp/1/model.onnx");
        let mut proto = crate::signature::read_onnx_proto(&fixture).unwrap();
        // As skl2onnx writes them: `[None, 4]`, the batch dimension with no name.
        let graph = proto.graph.as_mut().unwrap();
        for value in graph.input.iter_mut().chain(graph.output.iter_mut()) {
            let Some(type_proto::Value::TensorType(tensor)) =
                value.r#type.as_mut().and_then(|t| t.value.as_mut())
            else {
                panic!("a tensor input")
            };
            tensor.shape.as_mut().unwrap().dim[0].value = None;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.onnx");
        std::fs::write(&file, proto.encode_to_vec()).unwrap();
        let model = TractModel::load(&file, EngineKind::TractCpu, Device::Cpu).unwrap();
        assert_eq!(model.signature().inputs[0].dims, vec![None, Some(4)]);
        let mut backend = model.instantiate().unwrap();
        for rows in [1, 3] {
            let input = Tensor::new(vec![rows, 4], vec![0.5f32; rows * 4]).unwrap();
            let output = backend.run(vec![input]).unwrap();
            assert_eq!(output[0].shape(), &[rows, 3]);
        }
    }

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
