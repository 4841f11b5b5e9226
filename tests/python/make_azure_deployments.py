#!/usr/bin/env python3
"""Writes Azure ML (SDK v1) deployment folders, as users brought them, for `modelpod import`'s tests.

    .venv/bin/python tests/python/make_azure_deployments.py OUT

Each OUT/<case>/ holds score.py (init/run with inference_schema decorators), the pickled model
(joblib), inferenceconfig.json and deploymentconfig.json, plus two files the tests read:
requests.json (a scoring request of many rows) and expected.json (what the pickled model
answered to it, through the entry script's run(), as Azure returned it). Deterministic: data
and models come from fixed seeds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

ENTRY_SCRIPT = """\
import os

import joblib
import numpy as np
import pandas as pd
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.pandas_parameter_type import PandasParameterType
from inference_schema.schema_decorators import input_schema, output_schema


def init():
    global model
    model = joblib.load(os.path.join(os.getenv("AZUREML_MODEL_DIR"), "model.pkl"))


input_sample = {sample}
output_sample = np.array({output})


@input_schema("data", {parameter_type}(input_sample))
@output_schema(NumpyParameterType(output_sample))
def run(data):
    return model.{method}(data).tolist()
"""


def numpy_script(sample: np.ndarray, output: str, method: str) -> str:
    return ENTRY_SCRIPT.format(
        sample=f"np.array({json.dumps(sample.tolist())})", output=output, method=method,
        parameter_type="NumpyParameterType",
    )


def pandas_script(sample: pd.DataFrame, output: str, method: str) -> str:
    return ENTRY_SCRIPT.format(
        sample=f"pd.DataFrame({json.dumps(sample.to_dict(orient='list'))})", output=output,
        method=method, parameter_type="PandasParameterType",
    )


# A model no converter knows: a class of the user's own, pickled.
CUSTOM_MODULE = """\
class Doubler:
    def predict(self, rows):
        return [2 * sum(row) for row in rows]
"""

CUSTOM_SCRIPT = """\
import json
import os

import joblib


def init():
    global model
    model = joblib.load(os.path.join(os.getenv("AZUREML_MODEL_DIR"), "model.pkl"))


def run(raw_data):
    data = json.loads(raw_data)["data"]
    return model.predict(data)
"""


def write_case(out: Path, name: str, model, script: str, requests: dict, expected, config: dict):
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, folder / "model.pkl")
    (folder / "score.py").write_text(script)
    (folder / "inferenceconfig.json").write_text(
        json.dumps(
            {
                "entryScript": "score.py",
                "sourceDirectory": ".",
                "environment": {"python": {"condaDependencies": {"dependencies": ["python=3.11"]}}},
            },
            indent=2,
        )
    )
    (folder / "deploymentconfig.json").write_text(json.dumps(config, indent=2))
    (folder / "requests.json").write_text(json.dumps(requests))
    (folder / "expected.json").write_text(json.dumps(expected))


def main(out: Path) -> None:
    rng = np.random.default_rng(7)
    config = {"computeType": "aks", "maxConcurrentRequestsPerContainer": 4, "scoringTimeoutMs": 60000}

    # A default scikit-learn classifier with string labels, answering predict().
    iris = load_iris()
    labels = np.array(iris.target_names)[iris.target]
    forest = RandomForestClassifier(n_estimators=20, max_depth=5, random_state=0).fit(iris.data, labels)
    rows = iris.data[rng.choice(len(iris.data), 40, replace=False)]
    write_case(
        out, "iris_forest", forest,
        numpy_script(iris.data[:2], '["setosa", "setosa"]', "predict"),
        {"data": rows.tolist()}, forest.predict(rows).tolist(), config,
    )

    # A regressor: predict() is 1-d, the graph's output [N, 1].
    diabetes = load_diabetes()
    boosted = GradientBoostingRegressor(n_estimators=40, random_state=0).fit(diabetes.data, diabetes.target)
    rows = diabetes.data[rng.choice(len(diabetes.data), 40, replace=False)]
    write_case(
        out, "diabetes_boosting", boosted,
        numpy_script(diabetes.data[:1], "[198.95]", "predict"),
        {"data": rows.tolist()}, boosted.predict(rows).tolist(), config,
    )

    # A pandas pipeline: scaled numbers and one-hot text columns, answering predict_proba().
    count = 300
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, count),
            "balance": rng.normal(1000.0, 400.0, count).round(2),
            "city": rng.choice(["Paris", "Lyon", "Nice", "Lille"], count),
            "plan": rng.choice(["basic", "plus", "pro"], count),
        }
    )
    churn = np.where(
        (frame["balance"] < 900) & (frame["plan"] == "basic") | (frame["age"] > 70), "leaves", "stays"
    )
    pipeline = Pipeline(
        [
            (
                "features",
                ColumnTransformer(
                    [
                        ("numbers", StandardScaler(), ["age", "balance"]),
                        ("text", OneHotEncoder(handle_unknown="ignore"), ["city", "plan"]),
                    ]
                ),
            ),
            ("classifier", LogisticRegression(max_iter=500)),
        ]
    ).fit(frame, churn)
    sample = frame.head(2)
    batch = frame.sample(40, random_state=1)
    write_case(
        out, "churn_pipeline", pipeline,
        pandas_script(sample, "[[0.5, 0.5]]", "predict_proba"),
        {"data": json.loads(batch.to_json(orient="records"))},
        pipeline.predict_proba(batch).tolist(), config,
    )

    # Not convertible: the entry-script backend has to run it.
    folder = out / "custom_doubler"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "doubler.py").write_text(CUSTOM_MODULE)
    sys.path.insert(0, str(folder))
    from doubler import Doubler

    write_case(out, "custom_doubler", Doubler(), CUSTOM_SCRIPT, {"data": [[1, 2], [3, 4]]}, [6, 14], config)

    boosters(out, rng, config)


def boosters(out: Path, rng, config: dict) -> None:
    """XGBoost and LightGBM models, where those packages are installed."""
    try:
        from lightgbm import LGBMRegressor
        from xgboost import XGBClassifier
    except ImportError:
        return
    iris = load_iris()
    xgb = XGBClassifier(n_estimators=20, max_depth=3, random_state=0).fit(iris.data, iris.target)
    rows = iris.data[rng.choice(len(iris.data), 40, replace=False)]
    write_case(
        out, "iris_xgboost", xgb,
        numpy_script(iris.data[:2], "[[0.3, 0.3, 0.4]]", "predict_proba"),
        {"data": rows.tolist()}, xgb.predict_proba(rows).tolist(), config,
    )
    diabetes = load_diabetes()
    lgbm = LGBMRegressor(n_estimators=40, random_state=0, verbose=-1).fit(diabetes.data, diabetes.target)
    rows = diabetes.data[rng.choice(len(diabetes.data), 40, replace=False)]
    write_case(
        out, "diabetes_lightgbm", lgbm,
        numpy_script(diabetes.data[:1], "[150.0]", "predict"),
        {"data": rows.tolist()}, lgbm.predict(rows).tolist(), config,
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
