"""The search: Ray Tune + Optuna (TPE) + ASHA over InfoPrompt's hyperparameters."""
