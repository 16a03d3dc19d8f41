"""The packaged default configs load as shipped, with the project's own loaders."""

from __future__ import annotations

from cortex.config import load_cortex_config, load_models_config, load_neuron_config
from tests.conftest import ROOT

PACKAGING = ROOT / "packaging"


def test_cortex_toml_loads_with_its_models_toml() -> None:
    config = load_cortex_config(PACKAGING / "cortex.toml")
    assert config.gateway.listen == "0.0.0.0:31313"
    assert config.gateway.metrics_listen == "0.0.0.0:31314"
    assert [(n.name, n.endpoint) for n in config.neurons] == [("local", "http://127.0.0.1:13131")]
    assert config.models.path == PACKAGING / "models.toml"


def test_models_toml_loads() -> None:
    models = load_models_config(PACKAGING / "models.toml")
    assert models.models == [] and models.aliases == {}


def test_neuron_toml_loads() -> None:
    config = load_neuron_config(PACKAGING / "neuron.toml")
    assert config.neuron.listen == "0.0.0.0:13131"
    assert config.neuron.models_dirs == ["/var/lib/helexa-neuron/models"]
    assert config.engine.cuda_graphs is True
