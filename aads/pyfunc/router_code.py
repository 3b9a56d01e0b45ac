"""MLflow "models from code" entry of the AADS crop router: MLflow runs this file to build the
model object, so nothing is pickled (`aads.pyfunc.models.RouterModel`)."""

from mlflow.models import set_model

from aads.pyfunc.models import RouterModel

set_model(RouterModel())
