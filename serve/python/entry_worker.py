"""modelpod's entry-script worker: runs one Azure ML `score.py` for the scoring server.

The scoring server starts this file with the user's Python. It connects to the Unix socket
named by MODELPOD_WORKER_SOCKET, imports the entry script, calls init() once, then answers
one request at a time. The framing is described in serve/src/entry_script/protocol.rs.

The script is loaded, analysed and called by azureml-inference-server-http's own UserScript
(the @rawhttp / @input_schema / plain-string decision, the input parsers, the SIGALRM scoring
timeout), and its answers are encoded with that package's AMLResponse, so a script sees what
Azure's server gives it and its caller gets what Azure's server answers. Only the HTTP server
(Flask under gunicorn) is replaced: the scoring server does HTTP, auth and queueing in Rust.
"""

import io
import json
import os
import socket
import struct
import sys
import threading
import traceback

FRAME = struct.Struct("<IBI")  # length of what follows the u32, kind, metadata length
CALL, ECHO = 1, 2
READY, RESPONSE, LOG, FATAL = 16, 17, 18, 19

_send_lock = threading.Lock()
_sock = None
# The request being served, so that what the script prints is logged with its id.
_current_request = None


def send(kind, meta, payload=b""):
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    header = FRAME.pack(1 + 4 + len(meta_bytes) + len(payload), kind, len(meta_bytes))
    with _send_lock:
        _sock.sendall(header + meta_bytes + payload)


class FrameWriter(io.TextIOBase):
    """sys.stdout / sys.stderr: whole lines go to the scoring server's log as LOG frames."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream
        self.pending = ""

    def writable(self):
        return True

    def write(self, text):
        self.pending += text
        if "\n" in self.pending:
            lines, self.pending = self.pending.rsplit("\n", 1)
            self._emit(lines)
        return len(text)

    def flush(self):
        if self.pending:
            text, self.pending = self.pending, ""
            self._emit(text)

    def _emit(self, text):
        try:
            send(LOG, {"stream": self.stream, "request_id": _current_request}, text.encode("utf-8", "replace"))
        except OSError:
            pass


def read_exactly(stream, count):
    data = stream.read(count)
    if data is None or len(data) < count:
        return None
    return data


def read_frame(stream):
    head = read_exactly(stream, 4)
    if head is None:
        return None
    (length,) = struct.unpack("<I", head)
    rest = read_exactly(stream, length)
    if rest is None:
        return None
    kind = rest[0]
    (meta_len,) = struct.unpack_from("<I", rest, 1)
    meta = json.loads(rest[5 : 5 + meta_len])
    return kind, meta, rest[5 + meta_len :]


def environ_for(meta, body):
    """The WSGI environ gunicorn would have built for this request."""
    environ = {
        "REQUEST_METHOD": meta["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": meta["path"],
        "QUERY_STRING": meta["query"],
        "SERVER_NAME": meta.get("host", "localhost"),
        "SERVER_PORT": str(meta.get("port", 80)),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": meta.get("peer", ""),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": meta.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
    for name, value in meta["headers"]:
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if key == "CONTENT_TYPE":
                environ[key] = value
            continue
        key = "HTTP_" + key
        # gunicorn joins a repeated header with commas.
        environ[key] = environ[key] + "," + value if key in environ else value
    return environ


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class LightRequest:
    """What Azure's input parsers read of a POST (method, data, is_json, get_data, headers),
    without building a werkzeug request: most of a light script's per-call cost. Used only
    where it reads the same as flask.Request: POSTs that are not forms, to scripts without
    @rawhttp (which get the real request object)."""

    __slots__ = ("method", "data", "headers", "is_json")

    def __init__(self, meta, body):
        self.method = "POST"
        self.data = body
        headers = {}
        content_type = ""
        for name, value in meta["headers"]:
            key = name.title()
            if key == "Content-Length":
                continue
            if key == "Content-Type":
                content_type = value
            headers[key] = headers[key] + "," + value if key in headers else value
        if body:
            headers["Content-Length"] = str(len(body))
        self.headers = headers
        mimetype = content_type.split(";", 1)[0].strip().lower()
        self.is_json = mimetype == "application/json" or (
            mimetype.startswith("application/") and mimetype.endswith("+json")
        )

    def get_data(self, *args, **kwargs):
        return self.data

    @staticmethod
    def fits(meta, raw_http):
        if raw_http or meta["method"] != "POST":
            return False
        for name, value in meta["headers"]:
            if name.lower() == "content-type":
                return not value.lower().startswith(FORM_TYPES)
        return True


class Script:
    def __init__(self):
        self.stage = "runtime"

    def start(self):
        app_root = os.environ["AML_APP_ROOT"]
        source_dir = os.environ.get("AZUREML_SOURCE_DIRECTORY")
        # As Azure's server does: the app root and the source directory are importable.
        sys.path.append(app_root)
        if source_dir:
            sys.path.append(os.path.join(app_root, source_dir))
        # Importing the package registers azureml.contrib.services.aml_request/aml_response,
        # which older scripts import @rawhttp and AMLResponse from.
        import azureml_inference_server_http.server  # noqa: F401
        from azureml_inference_server_http.server import input_parsers, user_script
        from azureml_inference_server_http.api.aml_response import AMLResponse
        import flask

        self.flask = flask
        self.parsers = input_parsers
        self.errors = user_script
        self.AMLResponse = AMLResponse
        self.timeout_ms = int(os.environ.get("SCORING_TIMEOUT_MS", 3600 * 1000))
        self.user_script = user_script.UserScript(os.environ.get("AZUREML_ENTRY_SCRIPT"))
        self.stage = "import"
        self.user_script.load_script(app_root)
        self.raw_http = isinstance(self.user_script.input_parser, input_parsers.RawRequestInput)
        self.stage = "init"
        self.user_script.invoke_init()
        self.stage = "swagger"
        self.swagger = self._swagger(app_root)
        self.stage = "serving"

    def _swagger(self, app_root):
        from azureml_inference_server_http.constants import SERVER_ROOT
        from azureml_inference_server_http.server.swagger import Swagger, SwaggerException

        swagger = Swagger(app_root, SERVER_ROOT, self.user_script)
        documents, errors = {}, {}
        for version in sorted(Swagger._valid_versions):
            try:
                documents[version] = swagger.get_swagger(version)
            except SwaggerException as e:
                errors[version] = e.message
        return {
            "documents": documents,
            "errors": errors,
            "supported": sorted(swagger.supported_versions),
        }

    def error(self, status, message, run_function_failed=False):
        body = {"message": message}
        return self.AMLResponse(body, status, json_str=True, run_function_failed=run_function_failed)

    def handle(self, meta, body):
        """What Azure's `/score` route answers (server/routes.py, handle_score)."""
        parsers, errors = self.parsers, self.errors
        if LightRequest.fits(meta, self.raw_http):
            request = LightRequest(meta, body)
        else:
            request = self.flask.Request(environ_for(meta, body))
        try:
            timed = self.user_script.invoke_run(request, timeout_ms=self.timeout_ms)
        except parsers.BadInput as ex:
            return self.error(400, ex.args[0])
        except parsers.UnsupportedInput as ex:
            return self.error(415, ex.args[0])
        except parsers.UnsupportedHTTPMethod:
            if request.method == "OPTIONS":
                return self.AMLResponse("", 200)
            return self.error(405, "Method not allowed")
        except errors.UserScriptTimeout as ex:
            traceback.print_exc()
            return self.error(500, f"Scoring timeout after {ex.timeout_ms} ms", run_function_failed=True)
        except errors.UserScriptException as ex:
            traceback.print_exception(ex.user_ex)
            return self.error(
                500,
                "An unexpected error occurred in scoring script. Check the logs for more info.",
                run_function_failed=True,
            )
        response = timed.output
        if not isinstance(response, self.flask.Response):
            # What AMLResponse(response, 200, json_str=True) holds, made directly.
            payload = json.dumps(response if response is not None else {}).encode()
            headers = [
                ["Content-Type", "application/json"],
                ["x-ms-run-function-failed", "False"],
                ["x-ms-run-fn-exec-ms", f"{timed.elapsed_ms:.3f}"],
            ]
            return 200, headers, payload
        if response.status_code >= 500:
            if "x-ms-run-function-failed" in response.headers:
                response.headers["x-ms-run-function-failed"] = True
            else:
                response.headers.add("x-ms-run-function-failed", True)
        response.headers.add("x-ms-run-fn-exec-ms", f"{timed.elapsed_ms:.3f}")
        return response

    def answer(self, meta, body):
        try:
            response = self.handle(meta, body)
            if isinstance(response, tuple):
                status, headers, payload = response
                return {"seq": meta["seq"], "status": status, "headers": headers}, payload
            payload = response.get_data()
        except Exception:
            # Flask's handler for anything else (routes.py, all_unhandled_exception), e.g. a
            # run() result json.dumps cannot encode.
            print("Encountered Exception: " + traceback.format_exc(), file=sys.stderr)
            response = self.error(500, "An unexpected internal error occurred. Check the logs for more info.")
            payload = response.get_data()
        headers = [
            [name, value]
            for name, value in response.headers.to_wsgi_list()
            if name.lower() not in ("content-length", "transfer-encoding", "connection")
        ]
        return {"seq": meta["seq"], "status": response.status_code, "headers": headers}, payload


def main():
    global _sock, _current_request
    _sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    _sock.connect(os.environ["MODELPOD_WORKER_SOCKET"])
    reader = _sock.makefile("rb", buffering=1 << 16)
    sys.stdout = FrameWriter("stdout")
    sys.stderr = FrameWriter("stderr")
    script = Script()
    try:
        script.start()
    except BaseException as ex:
        user_ex = getattr(ex, "user_ex", ex)
        send(
            FATAL,
            {
                "stage": script.stage,
                "message": f"{type(user_ex).__name__}: {user_ex}",
                "traceback": traceback.format_exc(),
            },
        )
        sys.stderr.flush()
        os._exit(3)
    send(READY, {"pid": os.getpid(), "swagger": script.swagger})
    while True:
        frame = read_frame(reader)
        if frame is None:
            return
        kind, meta, payload = frame
        if kind == CALL:
            _current_request = meta.get("id")
            answer_meta, body = script.answer(meta, payload)
            sys.stdout.flush()
            sys.stderr.flush()
            send(RESPONSE, answer_meta, body)
            _current_request = None
        elif kind == ECHO:
            send(ECHO, meta, payload)


if __name__ == "__main__":
    main()
