#!/usr/bin/env python3
"""Writes small Azure entry scripts that exercise the server around run(), for the comparison
of modelpod's entry-script backend with azureml-inference-server-http:

    .venv/bin/python tests/python/make_entry_script_cases.py OUT

Each OUT/<case>/ holds score.py and inferenceconfig.json. The model-carrying deployments
(joblib scikit-learn models with numpy and pandas schemas) come from
make_azure_deployments.py; these add the script shapes Azure users have: no decorators,
@rawhttp on image bytes, run() raising, init() failing, run() sleeping past the timeout,
run() killing its process, run() returning what JSON cannot encode, and request_headers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CASES = {
    # The light script of the throughput comparison, too.
    "plain_echo": """\
import json


def init():
    global scale
    scale = 2


def run(raw_data):
    data = json.loads(raw_data)["data"]
    return {"result": [value * scale for value in data]}
""",
    "image_rawhttp": """\
import io
import json

from PIL import Image
from azureml.contrib.services.aml_request import AMLRequest, rawhttp
from azureml.contrib.services.aml_response import AMLResponse


def init():
    pass


@rawhttp
def run(request):
    if request.method == "GET":
        return AMLResponse("POST an image to /score", 405)
    if request.method != "POST":
        return AMLResponse("unsupported", 500)
    image = Image.open(io.BytesIO(request.get_data(cache=False)))
    body = {"size": list(image.size), "mode": image.mode, "query": request.args.get("tag", "")}
    return AMLResponse(json.dumps(body), 200, {"Content-Type": "application/json", "X-Image-Mode": image.mode})
""",
    "run_raises": """\
def init():
    pass


def run(raw_data):
    raise ValueError("this script always fails")
""",
    "init_fails": """\
import os


def init():
    open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "no-such-model.pkl"), "rb")


def run(raw_data):
    return raw_data
""",
    "sleeps": """\
import time


def init():
    pass


def run(raw_data):
    time.sleep(3)
    return "slept"
""",
    "exits": """\
import json
import os


def init():
    pass


def run(raw_data):
    if json.loads(raw_data).get("exit"):
        os._exit(1)
    return {"alive": True}
""",
    "returns_numpy": """\
import numpy as np


def init():
    pass


def run(raw_data):
    return np.array([1.5, 2.5])
""",
    "reads_headers": """\
def init():
    pass


def run(raw_data, request_headers):
    return {"trace": request_headers.get("X-Trace-Id"), "length": len(raw_data)}
""",
}


def main(out: Path) -> None:
    for name, script in CASES.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "score.py").write_text(script)
        (folder / "inferenceconfig.json").write_text(
            json.dumps({"entryScript": "score.py", "sourceDirectory": "."}, indent=2)
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
