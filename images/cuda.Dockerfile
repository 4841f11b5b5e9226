# modelpod for NVIDIA GPU nodes: `modelpod serve` on Azure's conventional model path and port,
# with the GPU build of ONNX Runtime and the CUDA 13 user-space libraries its CUDA provider and
# a cudarc-based engine load. The driver (libcuda.so.1) is not in the image: the NVIDIA
# container runtime mounts the host's. Without a GPU the same image serves on the CPU engines.
#
# Built by images/build.sh, which pins every library version. Its context holds the release
# binary (`modelpod`) and `lib/`: only the shared libraries taken from the pinned PyPI wheels
# (onnxruntime-gpu, nvidia-cuda-runtime, nvidia-cuda-nvrtc, nvidia-cublas, nvidia-curand,
# nvidia-cudnn-cu13), plus unversioned links (libcudart.so -> libcudart.so.13, ...) for the
# libraries that are opened by name at run time.
#
#   docker run --gpus all -p 5001:5001 \
#     -v $PWD/examples/models:/var/azureml-app/azureml-models modelpod:cuda
ARG BASE=debian:bookworm-slim
FROM ${BASE}

# ca-certificates: the router and bench speak HTTPS to other services.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/azureml-app modelpod \
    && mkdir -p /var/azureml-app/azureml-models \
    && chown -R modelpod /var/azureml-app

# ONNX Runtime and its providers must share a directory: ONNX Runtime loads
# libonnxruntime_providers_*.so from beside itself. /opt/modelpod/lib/libonnxruntime.so is one
# of the places modelpod looks for ONNX Runtime on its own.
COPY lib/ /opt/modelpod/lib/
COPY modelpod /usr/local/bin/modelpod

# LD_LIBRARY_PATH: the CUDA libraries are found by DT_NEEDED and by dlopen of their names
# (ONNX Runtime opens cuDNN lazily; cudarc opens libcudart, libnvrtc, libcublas, libcudnn).
# MODELPOD_TENSORRT_CACHE: where TensorRT engines are kept; mount a volume there to keep them.
# NVIDIA_*: what the NVIDIA container runtime reads to mount the driver, as CUDA base images set.
ENV AZUREML_MODEL_DIR=/var/azureml-app/azureml-models \
    MODELPOD_HOST=0.0.0.0 \
    MODELPOD_PORT=5001 \
    MODELPOD_LOG_FORMAT=json \
    MODELPOD_TENSORRT_CACHE=/var/azureml-app/tensorrt-cache \
    LD_LIBRARY_PATH=/opt/modelpod/lib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER modelpod
WORKDIR /var/azureml-app
EXPOSE 5001
ENTRYPOINT ["/usr/local/bin/modelpod", "serve"]
