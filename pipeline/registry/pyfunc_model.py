"""The code file of the logged pyfunc model (MLflow "models from code"): loading the model runs this file instead
of unpickling a Python object."""

import mlflow.models

from pipeline.registry.serving import ClipClassifier

mlflow.models.set_model(ClipClassifier())
