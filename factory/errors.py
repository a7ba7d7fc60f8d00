"""User-facing errors: each names the file or value at fault and what is wrong with it."""


class FactoryError(Exception):
    """Base of every error that the CLI and jobs print as one line and exit non-zero on."""


class InputError(FactoryError):
    """A user-supplied file or value is unreadable, malformed or implausible."""


class StoreError(FactoryError):
    """A store is missing, incomplete, corrupt, or the output path is already used."""


class BundleError(FactoryError):
    """A model bundle is missing weights, was built for another preset, or is not safetensors."""
