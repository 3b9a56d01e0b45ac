"""MLflow "models from code" entry of an AADS crop adapter: MLflow runs this file to build the
model object, so nothing is pickled (`aads.pyfunc.models.AdapterModel`)."""

from mlflow.models import set_model

from aads.pyfunc.models import AdapterModel

set_model(AdapterModel())
