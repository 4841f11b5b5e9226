"""Converts the model behind an Azure ML (SDK v1) entry script to ONNX, for `modelpod import`.

Run in the user's Python (the environment score.py ran in), as Azure's server did: score.py is
imported with AZUREML_MODEL_DIR set, `init()` runs, then `run()` is called on the sample
request while the model objects it uses are watched. What reached the model (a numpy array or
a pandas DataFrame) gives the ONNX inputs, which method ran (`predict` or `predict_proba`)
gives the output, and what `run()` returned is the answer modelpod must reproduce.

Writes one JSON report to --report (the entry script's own prints go to stderr). Exit status: 0 converted, 3 not convertible (the report says
why), 1 a usage or environment error.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import sys
import traceback
from pathlib import Path

NOT_CONVERTIBLE = 3


class NotConvertible(Exception):
    """The model cannot be served from ONNX; the entry-script backend has to run it."""


class Watched:
    """Stands in for a model object: records each prediction call, then makes it."""

    METHODS = ("predict", "predict_proba")

    def __init__(self, model, calls):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_calls", calls)

    def __getattr__(self, name):
        attr = getattr(self._model, name)
        if name not in self.METHODS:
            return attr

        def call(*args, **kwargs):
            self._calls.append((self._model, name, args, kwargs))
            return attr(*args, **kwargs)

        return call


def framework_of(model) -> str | None:
    module = type(model).__module__.split(".")[0]
    return {"sklearn": "scikit-learn", "xgboost": "xgboost", "lightgbm": "lightgbm"}.get(module)


def import_entry_script(score: Path, source_dir: Path):
    sys.path.insert(0, str(source_dir))
    spec = importlib.util.spec_from_file_location("score", score)
    module = importlib.util.module_from_spec(spec)
    sys.modules["score"] = module
    spec.loader.exec_module(module)
    return module


def sample_request(module, samples: Path | None):
    if samples is not None:
        body = json.loads(samples.read_text())
        if not isinstance(body, dict) or "data" not in body:
            raise SystemExit(f'{samples}: must be a scoring request, {{"data": ...}}')
        return body, str(samples)
    try:
        from inference_schema.schema_util import get_input_schema, is_schema_decorated
    except ImportError:
        is_schema_decorated = None
    if is_schema_decorated is not None and is_schema_decorated(module.run):
        example = get_input_schema(module.run).get("example")
        if isinstance(example, dict) and example:
            return example, "the input_schema sample in the entry script"
    raise NotConvertible(
        "no sample request: the entry script has no input_schema sample; give one with --samples"
    )


def call_run(module, body):
    """Calls run() as Azure's server does: keyword arguments when schema-decorated, else the raw body."""
    try:
        from inference_schema.schema_util import is_schema_decorated

        decorated = is_schema_decorated(module.run)
    except ImportError:
        decorated = False
    if decorated:
        return module.run(**body)
    return module.run(json.dumps(body))


def watch_models(module, calls):
    """Replaces every module-level model object of a known framework with a watcher."""
    watched = 0
    for name, value in list(vars(module).items()):
        if callable(getattr(value, "predict", None)) and not inspect.isclass(value):
            setattr(module, name, Watched(value, calls))
            watched += 1
    return watched


def onnx_input_types(features, name: str):
    """skl2onnx initial types for what reached the model, and how requests carry them."""
    import numpy as np
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType

    try:
        import pandas as pd
    except ImportError:
        pd = None
    if pd is not None and isinstance(features, pd.DataFrame):
        types = []
        for column in features.columns:
            dtype = features[column].dtype
            if pd.api.types.is_bool_dtype(dtype):
                raise NotConvertible(f"column {column!r} is boolean, which ONNX converters do not take")
            if pd.api.types.is_integer_dtype(dtype):
                types.append((str(column), Int64TensorType([None, 1])))
            elif pd.api.types.is_numeric_dtype(dtype):
                types.append((str(column), FloatTensorType([None, 1])))
            elif pd.api.types.is_string_dtype(dtype) or dtype == object:
                types.append((str(column), StringTensorType([None, 1])))
            else:
                raise NotConvertible(f"column {column!r} has type {dtype}, which has no ONNX input type")
        return types, "dataframe"
    array = np.asarray(features)
    if array.ndim != 2:
        raise NotConvertible(f"the model received a {array.ndim}-d array; converters take 2-d rows")
    if array.dtype.kind in "fiu":
        return [(name, FloatTensorType([None, array.shape[1]]))], "array"
    if array.dtype.kind in "OU":
        return [(name, StringTensorType([None, array.shape[1]]))], "array"
    raise NotConvertible(f"the model received an array of {array.dtype}")


def register_boosters():
    """Makes skl2onnx convert XGBoost and LightGBM estimators (alone or in a pipeline) through onnxmltools."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBClassifier, XGBRegressor

        update_registered_converter(
            XGBClassifier, "XGBoostXGBClassifier", calculate_linear_classifier_output_shapes,
            convert_xgboost, options=classifier_options,
        )
        update_registered_converter(
            XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes, convert_xgboost,
        )
    except ImportError:
        pass
    try:
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(
            LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes,
            convert_lightgbm, options=classifier_options,
        )
        update_registered_converter(
            LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes,
            convert_lightgbm,
        )
    except ImportError:
        pass


def final_estimator(model):
    steps = getattr(model, "steps", None)
    return final_estimator(steps[-1][1]) if steps else model


def convert(model, features, method: str, input_name: str, opset: int):
    try:
        import skl2onnx
    except ImportError as e:
        raise SystemExit(f"skl2onnx is not installed in {sys.executable}: pip install skl2onnx ({e})")
    register_boosters()
    types, form = onnx_input_types(features, input_name)
    estimator = final_estimator(model)
    is_classifier = hasattr(estimator, "classes_")
    # predict_proba answers a list of probability lists: the dense tensor, not ZipMap's maps.
    options = {id(estimator): {"zipmap": False}} if is_classifier else None
    try:
        onx = skl2onnx.convert_sklearn(
            model, initial_types=types, options=options, target_opset={"": opset, "ai.onnx.ml": 3}
        )
    except Exception as e:  # the converters raise many types; each means "not this model"
        raise NotConvertible(f"{type(model).__name__} could not be converted to ONNX: {e}") from e
    outputs = [o.name for o in onx.graph.output]
    if is_classifier:
        output = outputs[0] if method == "predict" else outputs[1]
    else:
        output = outputs[0]
    return onx, types, form, is_classifier, output


def shape_of(value):
    import numpy as np

    return list(np.asarray(value).shape)


def jsonable(value):
    """The reply Azure's server would send for run()'s return value."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def versions():
    found = {}
    for name in ("sklearn", "skl2onnx", "onnxmltools", "xgboost", "lightgbm", "pandas", "numpy"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = getattr(module, "__version__", "?")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entry-script", type=Path, required=True)
    parser.add_argument("--source-dir", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--onnx", type=Path, required=True, help="where to write the ONNX model")
    parser.add_argument("--samples", type=Path)
    parser.add_argument("--report", type=Path, required=True, help="where to write the JSON report")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args()
    # What the entry script prints must not mix with anything modelpod reads.
    sys.stdout = sys.stderr

    report = {"python": sys.executable}
    os.environ["AZUREML_MODEL_DIR"] = str(args.model_dir)
    try:
        try:
            module = import_entry_script(args.entry_script, args.source_dir)
            if not callable(getattr(module, "run", None)):
                raise NotConvertible("the entry script has no run() function")
            if callable(getattr(module, "init", None)):
                module.init()
        except NotConvertible:
            raise
        except Exception as e:
            raise NotConvertible(
                f"the entry script failed in this Python: {type(e).__name__}: {e}"
            ) from e
        body, source = sample_request(module, args.samples)
        report["sample_source"] = source
        calls = []
        if watch_models(module, calls) == 0:
            raise NotConvertible("no module-level model object with a predict() method after init()")
        try:
            answer = call_run(module, body)
        except Exception as e:
            raise NotConvertible(f"run() failed on the sample request: {type(e).__name__}: {e}") from e
        if isinstance(answer, str):
            raise NotConvertible(
                "run() returns a string (JSON text?), which Azure sent as a JSON string; "
                "modelpod's declared steps answer JSON values"
            )
        if len(calls) != 1:
            raise NotConvertible(
                f"run() made {len(calls)} model calls on one request; only one predict() or "
                "predict_proba() maps onto an ONNX graph"
            )
        model, method, call_args, _ = calls[0]
        report["model_class"] = f"{type(model).__module__}.{type(model).__qualname__}"
        report["method"] = method
        framework = framework_of(model)
        if framework is None:
            raise NotConvertible(
                f"{report['model_class']} is not a scikit-learn, XGBoost or LightGBM model"
            )
        report["framework"] = framework
        if not call_args:
            raise NotConvertible(f"{method}() was called without positional features")
        features = call_args[0]
        onx, types, form, is_classifier, output = convert(model, features, method, "data", args.opset)
        args.onnx.parent.mkdir(parents=True, exist_ok=True)
        args.onnx.write_bytes(onx.SerializeToString())
        prediction = getattr(model, method)(features)
        report.update(
            status="converted",
            kind="classifier" if is_classifier else "regressor",
            input_form=form,
            inputs=[{"name": n, "type": str(t)} for n, t in types],
            output=output,
            # A regressor's predict() is 1-d where the graph's output is [N, 1].
            squeeze=(not is_classifier) and len(shape_of(prediction)) == 1,
            request=body,
            expected=jsonable(answer),
            versions=versions(),
        )
        args.report.write_text(json.dumps(report))
        return 0
    except NotConvertible as e:
        report.update(status="not_convertible", reason=str(e), versions=versions())
        if os.environ.get("MODELPOD_IMPORT_TRACE"):
            traceback.print_exc()
        args.report.write_text(json.dumps(report))
        return NOT_CONVERTIBLE


if __name__ == "__main__":
    sys.exit(main())
