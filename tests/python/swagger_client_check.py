"""swagger.json as a user's tools read it: both documents (Swagger 2.0 and OpenAPI 3) pass
openapi-spec-validator, and a client generated from the OpenAPI 3 one by openapi-python-client
(the generator, unmodified, with its default templates) scores through the server.

Usage: swagger_client_check.py BASE_URL KEY EXPECTED_JSON
  BASE_URL       where the service's /score and /swagger.json are (a scoring server's root,
                 or a router's /api/v1/service/NAME)
  KEY            the Bearer key ("" for none)
  EXPECTED_JSON  {"data": ...} to send and the reply expected, as {"request": ..., "reply": ...}

Prints one line per check and "N passed, 0 failed" at the end; exits non-zero on a failure.
"""

import importlib
import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from openapi_spec_validator import validate

BASE_URL, KEY, EXPECTED = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
passed, failed = 0, 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}: {detail}")


def fetch(path):
    with urllib.request.urlopen(BASE_URL + path, timeout=30) as response:
        raw = response.read()
    return raw, json.loads(raw)


raw2, swagger2 = fetch("/swagger.json")
raw3, openapi3 = fetch("/swagger.json?version=3")
for label, document in (("swagger 2.0", swagger2), ("openapi 3", openapi3)):
    try:
        validate(document)
        check(f"{label} is valid", True)
    except Exception as error:  # the validator's own error types vary by version
        check(f"{label} is valid", False, error)
check("documents are small", len(raw2) < 100_000 and len(raw3) < 100_000, (len(raw2), len(raw3)))

score2 = swagger2["paths"]["/score"]["post"]
check("/score needs the Bearer scheme", score2.get("security") == [{"Bearer": []}], score2.get("security"))
check(
    "the 200 reply is ServiceOutput",
    score2["responses"]["200"]["schema"] == {"$ref": "#/definitions/ServiceOutput"},
    score2["responses"]["200"],
)
output_type = swagger2["definitions"]["ServiceOutput"].get("type")
reply_type = "array" if isinstance(EXPECTED["reply"], list) else "object"
check("ServiceOutput has the reply's type", output_type == reply_type, (output_type, reply_type))
if "host" in swagger2:
    host = swagger2["host"] + swagger2.get("basePath", "")
    check("the document names the address it was fetched from", BASE_URL.split("://", 1)[1] == host, host)

# Generate a client from the OpenAPI 3 document and call /score through it.
with tempfile.TemporaryDirectory() as work:
    work = Path(work)
    (work / "openapi.json").write_bytes(raw3)
    (work / "config.json").write_text(
        json.dumps({"package_name_override": "scoring_client", "post_hooks": []})
    )
    generated = subprocess.run(
        [
            str(Path(sys.executable).with_name("openapi-python-client")),
            "generate",
            "--path", str(work / "openapi.json"),
            "--config", str(work / "config.json"),
            "--meta", "none",
            "--output-path", str(work / "scoring_client"),
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
    )
    check("the generator accepts the document", generated.returncode == 0, generated.stdout + generated.stderr)
    if generated.returncode == 0:
        sys.path.insert(0, str(work))
        client_module = importlib.import_module("scoring_client")
        run_ml_service = importlib.import_module("scoring_client.api.default.run_ml_service")
        models = importlib.import_module("scoring_client.models")
        if KEY:
            client = client_module.AuthenticatedClient(base_url=BASE_URL, token=KEY, prefix="Bearer")
        else:
            client = client_module.Client(base_url=BASE_URL)
        body = models.ServiceInput.from_dict(EXPECTED["request"])
        response = run_ml_service.sync_detailed(client=client, body=body)
        check("the generated client scores", response.status_code == 200, (response.status_code, response.content[:300]))
        reply = json.loads(response.content)
        check("the reply is the server's", reply == EXPECTED["reply"], (reply, EXPECTED["reply"]))
        parsed = response.parsed
        as_plain = [item for item in parsed] if isinstance(parsed, list) else getattr(parsed, "to_dict", lambda: parsed)()
        check("the client parses the reply by its schema", as_plain == EXPECTED["reply"], (as_plain, EXPECTED["reply"]))
        if KEY:
            anonymous = client_module.Client(base_url=BASE_URL)
            refused = run_ml_service.sync_detailed(client=anonymous, body=body)
            check("without the key it is refused", refused.status_code == 401, refused.status_code)

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
