"""Ray Tune sweeps over the training job (Optuna TPE + ASHA), tracked as MLflow parent/child runs."""
