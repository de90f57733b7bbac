"""Configuration: the settings schema, loading and validation (see settings.py)."""
from .settings import ConfigError, Issuer, Limits, Settings, load, split_hostport

__all__ = ["ConfigError", "Issuer", "Limits", "Settings", "load", "split_hostport"]
