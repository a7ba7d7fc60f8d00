"""cluster.yaml is a valid Ray cluster-launcher config (checked with Ray's own schema and defaults)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from jsonschema import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def test_cluster_yaml_validates_with_ray():
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    validate_config(prepare_config(config))
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] > 0, "GPU workers autoscale from zero"
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}


def test_cluster_installs_torch_first_then_the_project():
    setup = yaml.safe_load(CLUSTER_YAML.read_text())["setup_commands"]
    torch_line = next(i for i, c in enumerate(setup) if "torch==2.13.0" in c)
    project_line = next(i for i, c in enumerate(setup) if "cine-factory[" in c)
    assert torch_line < project_line


def test_ray_validation_rejects_a_broken_config():
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    config["available_node_types"]["gpu_worker"]["min_workers"] = "zero"
    with pytest.raises(ValidationError):
        validate_config(prepare_config(config))
