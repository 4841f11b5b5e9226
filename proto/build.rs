//! Compiles the protocol with protox (no `protoc` needed) into tonic's client and server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["protos/grpc_service.proto", "protos/model_config.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["protos"])?;
    tonic_prost_build::configure()
        // Raw tensor contents are large: `Bytes` avoids a copy out of the request buffer.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .compile_fds(descriptors)?;
    Ok(())
}
