"""Tracking: the contract (``schema``), the tracker interface (``tracker``), its MLflow
implementation (``mlflow_run``, ``mlflow_sweep``, ``mlflow_results``), the SIGTERM policy
(``interrupts``) and the MLflow UI (``ui``).

Nothing is imported here, so the training loop runs without mlflow installed when tracking is
off; ``schema``, ``tracker`` and ``interrupts`` import no MLflow (``tracker`` loads it only
when one of its functions is called); import the MLflow modules only where they are needed.
"""
