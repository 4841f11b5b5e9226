//! ONNX Runtime through the `ort` crate, with the library loaded at run time.
//!
//! The library is found once per process (flag, `ORT_DYLIB_PATH`, then default locations)
//! and is never touched before it has loaded: `ort` panics on first use otherwise.

use crate::{
    Backend, Device, DeviceKind, EngineError, EngineKind, EngineOptions, LoadedModel, Signature,
    Tensor, TensorData,
};
use ort::ep::{self, ExecutionProviderDispatch};
use ort::session::{Session, SessionInputValue, builder::GraphOptimizationLevel};
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime release modelpod is built against (`ort`'s `api-31`).
pub const ORT_VERSION: &str = "1.31.1";

const LIBRARY_NAME: &str = "libonnxruntime.so";

static ORT_RUNTIME: OnceLock<Result<OrtRuntime, String>> = OnceLock::new();

struct OrtRuntime {
    library: PathBuf,
    environment: ort::environment::Environment,
}

/// Where to look for `libonnxruntime.so`, in order: `explicit` (the `--ort-library` flag),
/// `ORT_DYLIB_PATH`, next to the executable, then the prefix it is installed in (`../lib` and
/// `../lib/modelpod` beside it), `.modelpod/lib` in the current directory or any parent (where
/// `scripts/setup.sh` puts it), the `onnxruntime` wheel of the active Python virtualenv, and
/// `/opt/modelpod/lib` (the image's).
pub fn ort_library_candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(path) = explicit {
        return vec![path.to_path_buf()];
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(path)];
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(LIBRARY_NAME));
        candidates.push(dir.join("../lib").join(LIBRARY_NAME));
        candidates.push(dir.join("../lib/modelpod").join(LIBRARY_NAME));
    }
    if let Ok(cwd) = std::env::current_dir() {
        candidates.extend(
            cwd.ancestors()
                .map(|d| d.join(".modelpod/lib").join(LIBRARY_NAME)),
        );
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|p| !p.is_empty()) {
        candidates.extend(wheel_libraries(Path::new(&venv)));
    }
    candidates.push(PathBuf::from("/opt/modelpod/lib").join(LIBRARY_NAME));
    candidates
}

/// The library inside a virtualenv's `onnxruntime` wheel, of the release this build expects
/// (another release's API table would not match `ort`'s).
fn wheel_libraries(venv: &Path) -> Vec<PathBuf> {
    let Ok(lib) = std::fs::read_dir(venv.join("lib")) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = lib
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| {
            e.path()
                .join("site-packages/onnxruntime/capi")
                .join(format!("{LIBRARY_NAME}.{ORT_VERSION}"))
        })
        .collect();
    found.sort();
    found
}

/// Loads ONNX Runtime once for the process. Later calls return the first outcome, whatever
/// path they name.
pub fn init_ort(explicit: Option<&Path>) -> Result<PathBuf, EngineError> {
    ORT_RUNTIME
        .get_or_init(|| {
            let candidates = ort_library_candidates(explicit);
            let library = candidates
                .iter()
                .find(|p| p.is_file())
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "{LIBRARY_NAME} not found (looked in {}); run scripts/setup.sh, pass \
                     --ort-library or set ORT_DYLIB_PATH",
                        candidates
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            let environment = ort::init_from(&library)
                .map_err(|e| format!("{}: {e}", library.display()))?
                .with_name("modelpod")
                .build()
                .map_err(|e| format!("{}: {e}", library.display()))?;
            tracing::info!(library = %library.display(), "loaded ONNX Runtime");
            Ok(OrtRuntime {
                library,
                environment,
            })
        })
        .as_ref()
        .map(|rt| rt.library.clone())
        .map_err(|e| EngineError::OrtUnavailable(e.clone()))
}

fn ort_environment() -> Result<&'static ort::environment::Environment, EngineError> {
    init_ort(None)?;
    match ORT_RUNTIME.get() {
        Some(Ok(rt)) => Ok(&rt.environment),
        _ => Err(EngineError::OrtUnavailable("not initialised".into())),
    }
}

/// Whether ONNX Runtime is usable, loading it from the default locations if nothing has yet.
pub fn ort_status() -> Result<(), EngineError> {
    init_ort(None).map(|_| ())
}

pub struct OrtModel {
    /// The file's bytes: every session is committed from memory, so the file is read once.
    bytes: Vec<u8>,
    signature: Signature,
    engine: EngineKind,
    device: Device,
    options: EngineOptions,
}

/// Why a session could not be made: the engine itself (library, provider, device) or this model.
enum SessionError {
    Engine(String),
    Model(String),
}

impl OrtModel {
    pub fn load(
        path: &Path,
        engine: EngineKind,
        device: Device,
        options: &EngineOptions,
    ) -> Result<OrtModel, EngineError> {
        init_ort(None)?;
        let (graph, signature) = crate::signature::prepared_graph(path)?;
        // The file's own bytes unless a ZipMap was lifted: re-encoding through tract's
        // protobuf types would drop fields they do not know.
        let bytes = if signature.outputs.iter().any(|o| o.map_keys.is_some()) {
            prost::Message::encode_to_vec(&graph)
        } else {
            std::fs::read(path).map_err(|e| EngineError::Load {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?
        };
        let model = OrtModel {
            bytes,
            signature,
            engine,
            device,
            options: EngineOptions {
                intra_op_threads: options.intra_op_threads.max(1),
                ..options.clone()
            },
        };
        // Build one session now so a model ONNX Runtime rejects fails at load, not at first request.
        model.session().map_err(|e| match e {
            SessionError::Engine(reason) => EngineError::Unavailable { engine, reason },
            SessionError::Model(reason) => EngineError::Load {
                path: path.to_path_buf(),
                reason: format!("ONNX Runtime ({engine}): {reason}"),
            },
        })?;
        Ok(model)
    }

    /// The execution providers of this engine on this device, every one registered with
    /// `error_on_failure`: ONNX Runtime would otherwise log the failure and quietly run the
    /// whole graph on its CPU provider, and a GPU deployment would pass on a CPU.
    fn execution_providers(&self) -> Result<Vec<ExecutionProviderDispatch>, String> {
        let ordinal = match self.device {
            Device::Cpu => None,
            Device::Cuda(n) | Device::Fpga(n) => Some(n as i32),
        };
        let cuda = |ordinal: i32| {
            ep::CUDA::default()
                .with_device_id(ordinal)
                .build()
                .error_on_failure()
        };
        match (self.engine, ordinal) {
            (EngineKind::OrtCpu, None) => Ok(Vec::new()),
            (EngineKind::OrtCuda, Some(ordinal)) => Ok(vec![cuda(ordinal)]),
            (EngineKind::OrtTensorrt, Some(ordinal)) => {
                let mut tensorrt = ep::TensorRT::default().with_device_id(ordinal);
                if let Some(cache) = &self.options.tensorrt_cache {
                    std::fs::create_dir_all(cache)
                        .map_err(|e| format!("TensorRT engine cache {}: {e}", cache.display()))?;
                    let cache = cache.display().to_string();
                    tensorrt = tensorrt
                        .with_engine_cache(true)
                        .with_engine_cache_path(&cache)
                        .with_timing_cache(true)
                        .with_timing_cache_path(&cache);
                }
                // The CUDA provider takes the nodes TensorRT does not.
                Ok(vec![tensorrt.build().error_on_failure(), cuda(ordinal)])
            }
            (EngineKind::OrtVitisai, Some(_)) => vitis_ai(),
            (engine, _) => Err(format!("{engine} does not run on {}", self.device)),
        }
    }

    fn session(&self) -> Result<Session, SessionError> {
        let environment = ort_environment().map_err(|e| SessionError::Engine(e.to_string()))?;
        let providers = self.execution_providers().map_err(SessionError::Engine)?;
        let model_error = |e: ort::Error| SessionError::Model(e.to_string());
        let mut builder = Session::builder(environment)
            .map_err(model_error)?
            .with_execution_providers(providers)
            .map_err(|e| SessionError::Engine(format!("execution provider: {e}")))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| model_error(e.into()))?
            .with_intra_threads(self.options.intra_op_threads)
            .map_err(|e| model_error(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| model_error(e.into()))?
            // Spinning threads would steal cores from the HTTP workers and other instances.
            .with_intra_op_spinning(false)
            .map_err(|e| model_error(e.into()))?;
        if self.options.strict_placement && self.engine.device_kind() != DeviceKind::Cpu {
            builder = builder
                .with_config_entry("session.disable_cpu_ep_fallback", "1")
                .map_err(|e| model_error(e.into()))?;
        }
        builder.commit_from_memory(&self.bytes).map_err(model_error)
    }
}

#[cfg(feature = "vitis-ai")]
fn vitis_ai() -> Result<Vec<ExecutionProviderDispatch>, String> {
    Ok(vec![ep::Vitis::default().build().error_on_failure()])
}

#[cfg(not(feature = "vitis-ai"))]
fn vitis_ai() -> Result<Vec<ExecutionProviderDispatch>, String> {
    Err("this build has no Vitis AI support (cargo feature `vitis-ai`)".into())
}

impl LoadedModel for OrtModel {
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
        let session = self.session().map_err(|e| match e {
            SessionError::Engine(reason) | SessionError::Model(reason) => {
                EngineError::Run(format!("ONNX Runtime session: {reason}"))
            }
        })?;
        Ok(Box::new(OrtBackend {
            session,
            signature: self.signature.clone(),
        }))
    }
}

struct OrtBackend {
    session: Session,
    signature: Signature,
}

impl Backend for OrtBackend {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, EngineError> {
        let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(inputs.len());
        for (tensor, spec) in inputs.iter().zip(&self.signature.inputs) {
            let shape: Vec<i64> = tensor.shape().iter().map(|&d| d as i64).collect();
            let bad = |e: ort::Error| EngineError::BadInput {
                name: spec.name.clone(),
                reason: e.to_string(),
            };
            let value: SessionInputValue<'_> = crate::with_numeric_data!(
                tensor.data(),
                v => TensorRef::from_array_view((shape, v.as_slice())).map_err(bad)?.into(),
                s => ort::value::Tensor::from_string_array((shape, s.as_slice()))
                    .map_err(bad)?
                    .into()
            );
            values.push((Cow::Borrowed(spec.name.as_str()), value));
        }
        let outputs = self
            .session
            .run(values)
            .map_err(|e| EngineError::Run(e.to_string()))?;
        self.signature
            .outputs
            .iter()
            .map(|spec| {
                let value = outputs
                    .get(&spec.name)
                    .ok_or_else(|| EngineError::Run(format!("output '{}' missing", spec.name)))?;
                from_ort(value)
                    .map_err(|e| EngineError::Run(format!("output '{}': {e}", spec.name)))
            })
            .collect()
    }
}

fn from_ort(value: &DynValue) -> Result<Tensor, String> {
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err("not a tensor".into());
    };
    macro_rules! take {
        ($t:ty) => {{
            let (shape, data) = value
                .try_extract_tensor::<$t>()
                .map_err(|e| e.to_string())?;
            (
                shape.iter().map(|&d| d as usize).collect::<Vec<_>>(),
                TensorData::from(data.to_vec()),
            )
        }};
    }
    let (shape, data) = match ty {
        TensorElementType::Bool => take!(bool),
        TensorElementType::Uint8 => take!(u8),
        TensorElementType::Uint16 => take!(u16),
        TensorElementType::Uint32 => take!(u32),
        TensorElementType::Uint64 => take!(u64),
        TensorElementType::Int8 => take!(i8),
        TensorElementType::Int16 => take!(i16),
        TensorElementType::Int32 => take!(i32),
        TensorElementType::Int64 => take!(i64),
        TensorElementType::Float16 => take!(crate::f16),
        TensorElementType::Bfloat16 => take!(crate::bf16),
        TensorElementType::Float32 => take!(f32),
        TensorElementType::Float64 => take!(f64),
        TensorElementType::String => {
            let (shape, strings) = value.try_extract_strings().map_err(|e| e.to_string())?;
            (
                shape.iter().map(|&d| d as usize).collect(),
                TensorData::Bytes(strings),
            )
        }
        other => return Err(format!("element type {other:?} is not served")),
    };
    Tensor::new(shape, data).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/mlp/1/model.onnx")
    }

    #[test]
    fn an_execution_provider_that_cannot_register_fails_the_load_instead_of_using_the_cpu() {
        if ort_status().is_err() || !crate::probe::cuda_devices().devices.is_empty() {
            return; // Needs the CPU build of ONNX Runtime (scripts/setup.sh) and no GPU.
        }
        for engine in [EngineKind::OrtCuda, EngineKind::OrtTensorrt] {
            let result = OrtModel::load(
                &fixture(),
                engine,
                Device::Cuda(0),
                &EngineOptions::default(),
            );
            match result {
                Err(EngineError::Unavailable { engine: e, reason }) => {
                    assert_eq!(e, engine);
                    assert!(reason.contains("execution provider"), "{reason}");
                }
                Err(other) => panic!("{engine}: expected Unavailable, got {other}"),
                Ok(_) => panic!("{engine} loaded on a machine without a GPU"),
            }
        }
        let vitis = OrtModel::load(
            &fixture(),
            EngineKind::OrtVitisai,
            Device::Fpga(0),
            &EngineOptions::default(),
        );
        assert!(matches!(vitis, Err(EngineError::Unavailable { .. })));
        // The CPU engine loads the same file.
        OrtModel::load(
            &fixture(),
            EngineKind::OrtCpu,
            Device::Cpu,
            &EngineOptions::default(),
        )
        .unwrap();
    }
}
