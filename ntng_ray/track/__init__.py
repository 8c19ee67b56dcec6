"""Tracking: every run recorded in MLflow (``mlflow_run``) and the MLflow UI (``ui``).

Nothing is imported here, so the training loop runs without mlflow installed when tracking is
off; import ``ntng_ray.track.mlflow_run`` or ``ntng_ray.track.ui`` where they are needed.
"""
