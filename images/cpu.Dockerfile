# modelpod for CPU nodes: `modelpod serve` on Azure's conventional model path and port.
#
# Built by images/build.sh, whose context holds exactly two files: the release binary
# (`modelpod`) and the ONNX Runtime library from the pinned PyPI wheel (`libonnxruntime.so`).
#
#   docker run -p 5001:5001 -v $PWD/examples/models:/var/azureml-app/azureml-models modelpod:cpu
ARG BASE=debian:bookworm-slim
FROM ${BASE}

# ca-certificates: the router and bench speak HTTPS to other services.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/azureml-app modelpod \
    && mkdir -p /var/azureml-app/azureml-models \
    && chown -R modelpod /var/azureml-app

COPY modelpod /usr/local/bin/modelpod
# One of the places modelpod looks for ONNX Runtime on its own.
COPY libonnxruntime.so /opt/modelpod/lib/libonnxruntime.so

ENV AZUREML_MODEL_DIR=/var/azureml-app/azureml-models \
    MODELPOD_HOST=0.0.0.0 \
    MODELPOD_PORT=5001 \
    MODELPOD_LOG_FORMAT=json
USER modelpod
WORKDIR /var/azureml-app
EXPOSE 5001
ENTRYPOINT ["/usr/local/bin/modelpod", "serve"]
