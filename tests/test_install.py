"""The installed packages are requirements.txt's pins for this platform, and they interoperate."""
import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"


def requirements_here() -> dict[str, Requirement]:
    """requirements.txt's requirements whose environment markers hold on this machine, by name."""
    lines = (line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines())
    requirements = [Requirement(line) for line in lines if line]
    return {r.name: r for r in requirements if r.marker is None or r.marker.evaluate()}


def test_installed_versions_are_the_pinned_ones():
    wrong = {}
    for name, requirement in requirements_here().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "missing"
        if not requirement.specifier.contains(installed):  # torch 2.13.0+cpu matches ==2.13.0
            wrong[name] = f"{installed}, requirements.txt pins {requirement.specifier}"
    assert not wrong, f"run pip install -r requirements.txt; installed here: {wrong}"


def test_torch_shares_memory_with_pinned_numpy():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    tensor = torch.from_numpy(array)
    array[0, 0] = 200  # from_numpy shares the buffer: a broken numpy ABI would copy or crash
    assert tensor[0, 0].item() == 200
    assert torch.as_tensor(array, dtype=torch.float32).sum().item() == array.astype(np.float32).sum()


def test_pufferlib_vector_and_emulation_import():
    if "pufferlib" not in requirements_here() and importlib.util.find_spec("pufferlib") is None:
        pytest.skip("PufferLib is not installed: requirements.txt installs it only where its wheel exists "
                    "(Linux x86-64, Python 3.11); our own vector backend runs here")
    import pufferlib.emulation
    import pufferlib.vector

    assert hasattr(pufferlib.vector, "Serial") and hasattr(pufferlib.vector, "Multiprocessing")
    assert hasattr(pufferlib.emulation, "GymnasiumPufferEnv")
