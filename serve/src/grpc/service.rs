//! `inference.GRPCInferenceService` over the same scoring API as the HTTP routes: one
//! request path for inference ([`crate::inference::infer_v2`]), the same registry, shared
//! memory regions and statistics.

use super::codec;
use crate::AppState;
use crate::config::ModelControl;
use modelpod_accel::TensorSpec;
use modelpod_proto::GrpcInferenceService;
use modelpod_proto::inference::*;
use modelpod_scoring::{ModelState, Registry};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

pub struct InferenceService {
    pub state: Arc<AppState>,
}

pub use modelpod_http::grpc::status;

fn version(text: &str) -> Result<Option<u64>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<u64>().map(Some).map_err(|_| {
        Status::invalid_argument(format!("model version '{text}' is not a positive integer"))
    })
}

fn duration(d: modelpod_scoring::statistics::StatisticDuration) -> Option<StatisticDuration> {
    Some(StatisticDuration {
        count: d.count,
        ns: d.ns,
    })
}

type InferStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>>;

impl InferenceService {
    fn registry(&self) -> &Arc<Registry> {
        self.state.registry()
    }

    fn require_control(&self) -> Result<(), Status> {
        if self.state.config.model_control != ModelControl::Explicit {
            return Err(Status::unavailable(
                "repository control is off: this server's models are what its repository holds (start it with --model-control-mode explicit to load and unload through this API)",
            ));
        }
        Ok(())
    }

    async fn infer(
        state: Arc<AppState>,
        message: ModelInferRequest,
    ) -> Result<ModelInferResponse, Status> {
        let arrival = Instant::now();
        let requested = version(&message.model_version)?;
        let model = state
            .scorer
            .model(&message.model_name, requested, arrival)
            .await
            .map_err(status)?;
        let prepare = async {
            state.scorer.shed_if_hopeless()?;
            let slot = state.scorer.admit().await?;
            let started = Instant::now();
            let request = codec::decode_request(message, &state.shared_memory)?;
            Ok(crate::inference::Prepared {
                slot,
                request,
                decode_time: started.elapsed(),
            })
        };
        let answered = crate::inference::infer_v2(&state, &model, arrival, "grpc", prepare)
            .await
            .map_err(status)?;
        Ok(codec::encode_response(
            &model.name,
            model.version,
            answered.id,
            answered.outputs,
        ))
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.state.scorer.unready_reason().is_none(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let ready = self
            .registry()
            .get(&request.name, version(&request.version)?)
            .is_ok();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "modelpod".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: crate::extensions::EXTENSIONS
                .iter()
                .map(|e| e.to_string())
                .collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let model = self
            .state
            .scorer
            .model(&request.name, version(&request.version)?, Instant::now())
            .await
            .map_err(status)?;
        let tensors = |specs: &[TensorSpec]| {
            specs
                .iter()
                .map(|s| model_metadata_response::TensorMetadata {
                    name: s.name.clone(),
                    datatype: s.dtype.as_str().into(),
                    shape: s.dims_i64(),
                })
                .collect()
        };
        let versions = self
            .registry()
            .index()
            .into_iter()
            .filter(|e| e.name == model.name)
            .map(|e| e.version)
            .collect();
        Ok(Response::new(ModelMetadataResponse {
            name: model.name.clone(),
            versions,
            platform: model.engine.triton_platform().into(),
            inputs: tensors(&model.signature.inputs),
            outputs: tensors(&model.signature.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        Self::infer(self.state.clone(), request.into_inner())
            .await
            .map(Response::new)
    }

    type ModelStreamInferStream = InferStream;

    /// Answers each request of the stream in turn; a failed request is an error message in
    /// the stream (as Triton sends it), not the end of the stream.
    async fn model_stream_infer(
        &self,
        request: Request<tonic::Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let mut incoming = request.into_inner();
        let state = self.state.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let message = match incoming.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = sender.send(Err(e)).await;
                        return;
                    }
                };
                let answer = match Self::infer(state.clone(), message).await {
                    Ok(response) => ModelStreamInferResponse {
                        error_message: String::new(),
                        infer_response: Some(response),
                    },
                    Err(e) => ModelStreamInferResponse {
                        error_message: e.message().to_string(),
                        infer_response: None,
                    },
                };
                if sender.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        let request = request.into_inner();
        let model = self
            .state
            .scorer
            .model(&request.name, version(&request.version)?, Instant::now())
            .await
            .map_err(status)?;
        Ok(Response::new(ModelConfigResponse {
            config: Some(crate::model_config::model_config(&model)),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let request = request.into_inner();
        let stats = crate::extensions::model_statistics(
            &self.state,
            &request.name,
            version(&request.version)?,
        )
        .map_err(status)?;
        let model_stats = stats
            .into_iter()
            .map(|(name, version, s)| {
                let i = &s.inference_stats;
                ModelStatistics {
                    name,
                    version: version.to_string(),
                    last_inference: s.last_inference,
                    inference_count: s.inference_count,
                    execution_count: s.execution_count,
                    inference_stats: Some(InferStatistics {
                        success: duration(i.success),
                        fail: duration(i.fail),
                        queue: duration(i.queue),
                        compute_input: duration(i.compute_input),
                        compute_infer: duration(i.compute_infer),
                        compute_output: duration(i.compute_output),
                        cache_hit: duration(i.cache_hit),
                        cache_miss: duration(i.cache_miss),
                    }),
                    batch_stats: s
                        .batch_stats
                        .iter()
                        .map(|b| InferBatchStatistics {
                            batch_size: b.batch_size,
                            compute_input: duration(b.compute_input),
                            compute_infer: duration(b.compute_infer),
                            compute_output: duration(b.compute_output),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let ready_only = request.into_inner().ready;
        let models = self
            .registry()
            .index()
            .into_iter()
            .filter(|e| !ready_only || e.state == ModelState::Ready)
            .map(|e| repository_index_response::ModelIndex {
                name: e.name,
                version: e.version,
                state: e.state.as_str().into(),
                reason: e.reason.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        self.require_control()?;
        let request = request.into_inner();
        crate::routes::refuse_load_parameters(request.parameters.keys().map(String::as_str))
            .map_err(status)?;
        let registry = self.registry().clone();
        tokio::task::spawn_blocking(move || registry.load(&request.model_name))
            .await
            .map_err(|e| Status::internal(format!("loading: {e}")))?
            .map_err(status)?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        self.require_control()?;
        let request = request.into_inner();
        let unknown: Vec<&str> = request
            .parameters
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "unload_dependents")
            .collect();
        modelpod_scoring::v2::check_parameters(unknown, &[], "unload").map_err(status)?;
        let registry = self.registry().clone();
        tokio::task::spawn_blocking(move || registry.unload(&request.model_name))
            .await
            .map_err(|e| Status::internal(format!("unloading: {e}")))?
            .map_err(status)?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        request: Request<SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<SystemSharedMemoryStatusResponse>, Status> {
        let regions = self
            .state
            .shared_memory
            .status(&request.into_inner().name)
            .map_err(status)?
            .into_iter()
            .map(|r| {
                (
                    r.name.clone(),
                    system_shared_memory_status_response::RegionStatus {
                        name: r.name,
                        key: r.key,
                        offset: r.offset,
                        byte_size: r.byte_size,
                    },
                )
            })
            .collect::<HashMap<_, _>>();
        Ok(Response::new(SystemSharedMemoryStatusResponse { regions }))
    }

    async fn system_shared_memory_register(
        &self,
        request: Request<SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<SystemSharedMemoryRegisterResponse>, Status> {
        let r = request.into_inner();
        self.state
            .shared_memory
            .register(&r.name, &r.key, r.offset, r.byte_size)
            .map_err(status)?;
        Ok(Response::new(SystemSharedMemoryRegisterResponse {}))
    }

    async fn system_shared_memory_unregister(
        &self,
        request: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<SystemSharedMemoryUnregisterResponse>, Status> {
        self.state
            .shared_memory
            .unregister(&request.into_inner().name)
            .map_err(status)?;
        Ok(Response::new(SystemSharedMemoryUnregisterResponse {}))
    }

    /// No CUDA region can be registered: the status of all is empty, that of one an error.
    async fn cuda_shared_memory_status(
        &self,
        request: Request<CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<CudaSharedMemoryStatusResponse>, Status> {
        if request.get_ref().name.is_empty() {
            return Ok(Response::new(CudaSharedMemoryStatusResponse::default()));
        }
        Err(Status::invalid_argument(
            crate::extensions::NO_CUDA_SHARED_MEMORY,
        ))
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<CudaSharedMemoryRegisterResponse>, Status> {
        Err(Status::invalid_argument(
            crate::extensions::NO_CUDA_SHARED_MEMORY,
        ))
    }

    /// Nothing to unregister: clients (perf_analyzer) unregister every kind on their way out.
    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<CudaSharedMemoryUnregisterResponse>, Status> {
        Ok(Response::new(CudaSharedMemoryUnregisterResponse::default()))
    }

    async fn trace_setting(
        &self,
        _: Request<TraceSettingRequest>,
    ) -> Result<Response<TraceSettingResponse>, Status> {
        Err(Status::invalid_argument(crate::extensions::NO_TRACE))
    }

    async fn log_settings(
        &self,
        _: Request<LogSettingsRequest>,
    ) -> Result<Response<LogSettingsResponse>, Status> {
        Err(Status::invalid_argument(crate::extensions::NO_LOG_SETTINGS))
    }
}
