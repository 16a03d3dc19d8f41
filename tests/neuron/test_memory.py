"""Several models on one device (a real neuron on the CPU): each within the KV budget its load
asked for, and `/health` reports what is left for the next one."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex.config import parse_size
from tests.support.neuron_proc import NeuronProc, Session, start_neuron

MiB = 2**20
# A size string and bytes. Both are less than max_batch full-context sequences need (stories260k:
# 2048 x 512 tokens of 1280 bytes, 1.3 GB), so the budgets, not the need, size the KV caches.
# They are large so that other processes on the host cannot hide the drops in free memory.
BUDGETS = {"stories260k": "1GiB", "tiny/qwen3": 1024 * MiB}
NEURON_TOML = "[engine]\nmax_batch = 2048\n"


@pytest.fixture(scope="module")
def neuron(
    models_root: Path, neuron_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> NeuronProc:
    config = tmp_path_factory.mktemp("cfg") / "neuron.toml"
    config.write_text(NEURON_TOML)
    proc = start_neuron(models_root, ["--config", str(config)], env=neuron_env)
    yield proc
    assert proc.stop() == 0


def free_bytes(client: Session) -> int:
    (device,) = client.get("/health").json()["devices"]
    return device["free_bytes"]


def test_two_models_share_the_device_each_within_its_budget(neuron: NeuronProc) -> None:
    with Session(neuron.url) as client:
        try:
            before = free_bytes(client)
            frees = []
            for model_id, memory in BUDGETS.items():
                answer = client.post("/models/load", json={"model": model_id, "memory": memory})
                assert answer.status_code == 200, answer.text
                # Weights and KV cache fill the budget to within one KV block (under 1 MiB).
                budget = parse_size(memory)
                assert budget - MiB < answer.json()["bytes"] <= budget
                frees.append(free_bytes(client))
            # The KV cache is allocated and written at load: the device's free memory shows it,
            # so the gateway sees what is left beside the first model when it places the second.
            # On a CPU host that is MemAvailable, which some VMs lower by only part of what a
            # process writes (half, in the VM these tests were written in), and which other
            # processes move too: only its direction is certain.
            assert before > frees[0] > frees[1]
            models = {m["id"]: m for m in client.get("/health").json()["models"]}
            assert set(models) == set(BUDGETS)
            for model in models.values():
                assert (model["device"], model["graphs"]) == ("cpu", "eager")
            for model_id in BUDGETS:
                body = {"model": model_id, "prompt": "Once upon a time", "max_tokens": 4}
                reply = client.post("/v1/completions", json=body)
                assert reply.status_code == 200, reply.text
                assert reply.json()["usage"]["completion_tokens"] >= 1
        finally:
            for model_id in BUDGETS:
                client.post("/models/unload", json={"model": model_id})


@pytest.mark.parametrize(
    ("memory", "status", "code"),
    [
        ("lots", 400, "invalid_request"),
        (-5, 400, "invalid_request"),
        (0, 400, "invalid_request"),
        ("1KiB", 507, "insufficient_memory"),  # not even the weights
    ],
)
def test_a_memory_budget_that_cannot_be_honoured(
    neuron: NeuronProc, memory: object, status: int, code: str
) -> None:
    with Session(neuron.url) as client:
        answer = client.post("/models/load", json={"model": "stories260k", "memory": memory})
        assert answer.status_code == status, answer.text
        error = answer.json()["error"]
        assert error["code"] == code
        if status == 400:
            assert error["param"] == "memory"
        else:
            assert error["required_bytes"] > 0 and error["free_bytes"] > 0
        assert client.get("/health").json()["models"] == []
