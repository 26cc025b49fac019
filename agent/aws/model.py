"""The CodeDeployCommand service description, read from package data.

The JSON is a botocore ``service-2.json`` so that tests and workstation tools can build a real
botocore client from it; the agent itself only reads it as data, because botocore is too heavy to
import on a Pi at run time.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

SERVICE_NAME = "codedeploy-commands"
API_VERSION = "2014-10-06"
MODEL_FILENAME = "codedeploy-commands.json"


def load_commands_model() -> dict[str, Any]:
    """Return the parsed service description of the private CodeDeployCommand API."""
    text = resources.files("agent.aws").joinpath(MODEL_FILENAME).read_text("utf-8")
    model = json.loads(text)
    if not isinstance(model, dict):
        raise TypeError(f"{MODEL_FILENAME} must hold a JSON object")
    return model
