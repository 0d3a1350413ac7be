"""Registry: MLflow tracking and registration, the pyfunc model, prediction, plots."""
