"""A served model (a winner's search fold, or its fold ensemble) as MLflow logs it from code
(models-from-code): MLflow stores this file with the model and runs it to load the model, instead
of unpickling a Python object that a writer of the artifact store could have replaced
(`model_registry.log_served_model`). The fold models it averages are torch.export programs, which
load without pickle too."""

import mlflow

from harness.served_model import FoldEnsemble

mlflow.models.set_model(FoldEnsemble())
