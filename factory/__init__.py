"""cine-factory: synthetic 4D cardiac cine MRI."""
