# modelpod for Azure entry scripts: the CPU image plus CPython with what Azure's images gave a
# score.py (azureml-inference-server-http, which brings inference-schema and the
# AMLRequest/AMLResponse helpers), and the user's own dependencies baked in at build time.
#
# Built by images/build.sh (`bash images/build.sh python`) FROM localhost/modelpod:cpu. The
# build context holds wheels/: requirements.txt (the user's pip dependencies, pinned, plus
# Azure's server; images/build.sh writes a default one with scikit-learn, joblib, numpy and
# pandas) and every wheel it resolves to, downloaded on the build host, so the image build
# itself needs no package index (nor the host's proxy certificates).
# To bake a deployment's own environment in, replace it (conda users: `pip freeze` of the
# environment, or the pip section of its conda file):
#
#   MODELPOD_PYTHON_REQUIREMENTS=my-service/requirements.txt bash images/build.sh python
#   docker run -p 5001:5001 -v $PWD/my-service:/var/azureml-app modelpod:python
#
# The service folder (score.py, inferenceconfig.json, the model files) is mounted at
# /var/azureml-app, Azure's app root, and served with --inference-config.
ARG BASE=localhost/modelpod:cpu
FROM ${BASE}

USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/modelpod/python
COPY wheels /tmp/wheels
RUN /opt/modelpod/python/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels \
        -r /tmp/wheels/requirements.txt \
    && cp /tmp/wheels/requirements.txt /opt/modelpod/requirements.txt \
    && rm -rf /tmp/wheels

ENV MODELPOD_PYTHON=/opt/modelpod/python/bin/python \
    MODELPOD_INFERENCE_CONFIG=/var/azureml-app/inferenceconfig.json \
    AZUREML_MODEL_DIR=/var/azureml-app
USER modelpod
WORKDIR /var/azureml-app
