"""Shared test fixtures. Everything runs on the stand-in cartridge (roms/standin.gb)."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STANDIN_ROM = ROOT / "roms" / "standin.gb"
sys.path.insert(0, str(ROOT))  # the scripts live at the top of the repository, not in a package


def pytest_collection_modifyitems(config, items):
    """Tests that need test_play.py's trained checkpoint (a training run in a subprocess) are slow; tests
    marked real_rom run only when POKEMON_RED_ROM points at the user's ROM."""
    skip = pytest.mark.skip(reason="set POKEMON_RED_ROM=path/to/pokemon_red.gb to run")
    for item in items:
        if "trained" in item.fixturenames:
            item.add_marker(pytest.mark.slow)
        if "real_rom" in item.keywords and not os.environ.get("POKEMON_RED_ROM"):
            item.add_marker(skip)


@pytest.fixture
def standin_rom() -> Path:
    assert STANDIN_ROM.exists(), "roms/standin.gb is missing: run python roms/build_standin.py"
    return STANDIN_ROM


@pytest.fixture(scope="session")
def start_state_file(tmp_path_factory) -> Path:
    """The stand-in's start state (intro played once per session), as an init_state file."""
    from pokemon_env import PokemonRedEnv

    assert STANDIN_ROM.exists(), "roms/standin.gb is missing: run python roms/build_standin.py"
    env = PokemonRedEnv(rom_path=STANDIN_ROM)
    path = tmp_path_factory.mktemp("states") / "standin_start.state"
    path.write_bytes(env.start_state)
    env.close()
    return path


@pytest.fixture
def standin_env(standin_rom):
    """Factory for environments on the stand-in cartridge; closes them after the test."""
    from pokemon_env import PokemonRedEnv

    envs = []

    def make(**kwargs):
        env = PokemonRedEnv(rom_path=standin_rom, **kwargs)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()
