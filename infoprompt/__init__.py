"""InfoPrompt: soft prompts tuned with two mutual-information losses (no Ray in here)."""

from infoprompt.config import ConfigError, Critic, InfoPromptConfig, Method
from infoprompt.errors import InfoPromptError

__all__ = ["ConfigError", "Critic", "InfoPromptConfig", "InfoPromptError", "Method", "fit",
           "load_model", "load_splits", "run"]


def __getattr__(name: str):
    # torch and transformers load only when training is asked for, so `--help` stays fast.
    if name in ("fit", "run"):
        from infoprompt import train
        return getattr(train, name)
    if name == "load_splits":
        from infoprompt.store import load_splits
        return load_splits
    if name == "load_model":
        from infoprompt.saved import load_model
        return load_model
    raise AttributeError(name)
