"""Model bundle: one directory with every stage's weights (safetensors) and `bundle.json`.

`io` reads, verifies and writes bundles (its public names are importable from here); `pack` makes the
shippable copy (`factory pack`). Weights are only ever read as safetensors: nothing in a bundle is unpickled.
"""

from factory.bundle.io import (BUNDLE_FILE, STAGES, Bundle, add_stage, load_bundle, read_config, sha256_file,
                               start_bundle, training_fingerprint, update_config, verify_bundle)

__all__ = ["BUNDLE_FILE", "STAGES", "Bundle", "add_stage", "load_bundle", "read_config", "sha256_file",
           "start_bundle", "training_fingerprint", "update_config", "verify_bundle"]
