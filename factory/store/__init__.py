"""Zarr v3 stores of subjects (real cohorts and synthetic output share one schema)."""


def __getattr__(name: str):
    """`factory.store.read` imports Ray only when it is first used, keeping `import factory.store` cheap."""
    if name == "read":
        from factory.store.ray_io import read

        return read
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
