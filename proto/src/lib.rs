//! The v2 inference protocol's gRPC messages and service, as `inference.GRPCInferenceService`
//! (KServe's service with Triton's extension RPCs), generated from `protos/`.

#![allow(clippy::large_enum_variant, clippy::enum_variant_names)]

pub mod inference {
    tonic::include_proto!("inference");
}

pub use inference::grpc_inference_service_client::GrpcInferenceServiceClient;
pub use inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
