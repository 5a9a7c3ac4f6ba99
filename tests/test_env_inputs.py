"""Bad inputs to the environment fail with one clear line: ROM files, init_state files, arguments."""
import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from pyboy import PyBoy

import pokemon_env
from pokemon_env import IntroError, PokemonRedEnv, RomError, StateError, UnknownRomWarning

# A program of our own: fill work RAM with $FF, then loop forever.
FILL_WRAM_PROGRAM = bytes([
    0x21, 0x00, 0xC0,  # ld hl, $C000
    0x3E, 0xFF,        # ld a, $FF
    0x22,              # .fill: ld [hl+], a
    0xCB, 0x6C,        # bit 5, h  (set once hl reaches $E000)
    0x28, 0xFB,        # jr z, .fill
    0x18, 0xFE,        # jr @
])  # fmt: skip


def build_rom(title: bytes, program: bytes = FILL_WRAM_PROGRAM, cartridge_type: int = 0x00) -> bytes:
    """A 32 KiB Game Boy ROM with a valid header that runs `program` from $0150."""
    rom = bytearray(0x8000)
    rom[0x100:0x104] = bytes([0x00, 0xC3, 0x50, 0x01])  # nop; jp $0150
    rom[0x134 : 0x134 + len(title)] = title
    rom[0x147] = cartridge_type
    rom[0x150 : 0x150 + len(program)] = program
    checksum = 0
    for byte in rom[0x134:0x14D]:
        checksum = (checksum - byte - 1) & 0xFF
    rom[0x14D] = checksum
    return bytes(rom)


def test_missing_rom_says_where_to_put_it_and_the_sha1(tmp_path):
    with pytest.raises(RomError) as error:
        PokemonRedEnv(rom_path=tmp_path / "pokemon_red.gb")
    message = str(error.value)
    assert "\n" not in message
    assert "roms/pokemon_red.gb" in message and "legally obtained" in message
    assert pokemon_env.RED_SHA1 in message


@pytest.mark.parametrize("size", [0, 100, 0x8000 - 1, 0x8000 + 0x4000])
def test_wrong_size_is_not_a_rom(tmp_path, size):
    path = tmp_path / "wrong_size.gb"
    path.write_bytes(build_rom(b"SIZE")[:size].ljust(size, b"\0"))
    with pytest.raises(RomError, match="not a Game Boy ROM"):
        PokemonRedEnv(rom_path=path)


def test_random_bytes_are_not_a_rom(tmp_path):
    path = tmp_path / "random.gb"
    random_bytes = np.random.default_rng(0).integers(0, 256, 0x8000, dtype=np.uint8).tobytes()
    path.write_bytes(random_bytes)
    with pytest.raises(RomError, match="not a Game Boy ROM"):
        PokemonRedEnv(rom_path=path)


def test_bad_header_checksum_is_refused(tmp_path):
    rom = bytearray(build_rom(b"CHECKSUM"))
    rom[0x14D] ^= 0xFF
    path = tmp_path / "bad_checksum.gb"
    path.write_bytes(bytes(rom))
    with pytest.raises(RomError, match="bad header checksum"):
        PokemonRedEnv(rom_path=path)


def test_unknown_valid_rom_warns_then_the_intro_driver_gives_up(tmp_path):
    path = tmp_path / "homebrew.gb"
    path.write_bytes(build_rom(b"HOMEBREW"))
    with pytest.warns(UnknownRomWarning, match="RAM addresses may not match"):
        with pytest.raises(IntroError, match="within 600 frames"):
            PokemonRedEnv(rom_path=path, intro_frame_budget=600)


def test_the_readmes_sha1_table_is_known_roms():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("It is identified by SHA-1:")[1].split("\n\n")[1]
    rows = [line.strip("|").split("|") for line in table.splitlines()[2:]]
    documented = {sha1.strip().strip("`"): version.split("(")[0].strip() for version, sha1 in rows}
    assert documented == pokemon_env.KNOWN_ROMS
    assert pokemon_env.KNOWN_ROMS[pokemon_env.RED_SHA1] == "Pokemon Red"


@pytest.mark.parametrize("version", ["Pokemon Red", "Pokemon Blue"])
def test_red_and_blue_play_without_the_warning(standin_rom, tmp_path, monkeypatch, version):
    """A cartridge titled as the real game's, whose SHA-1 stands in for the real one in KNOWN_ROMS."""
    rom = bytearray(standin_rom.read_bytes())
    title = {"Pokemon Red": b"POKEMON RED", "Pokemon Blue": b"POKEMON BLUE"}[version]
    rom[0x134:0x144] = title.ljust(16, b"\0")  # the real games' title; the stand-in's own is STANDIN
    rom[0x14D] = -sum(byte + 1 for byte in rom[0x134:0x14D]) & 0xFF
    path = tmp_path / "pokemon.gb"
    path.write_bytes(bytes(rom))
    with pytest.warns(UnknownRomWarning):  # not yet known
        pokemon_env.load_rom(path)
    real_sha1 = next(sha1 for sha1, name in pokemon_env.KNOWN_ROMS.items() if name == version)
    known = {sha1: name for sha1, name in pokemon_env.KNOWN_ROMS.items() if sha1 != real_sha1}
    monkeypatch.setattr(pokemon_env, "KNOWN_ROMS", {**known, hashlib.sha1(rom).hexdigest(): version})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        assert pokemon_env.load_rom(path).name == version
        env = PokemonRedEnv(rom_path=path, max_steps=2)
    try:
        assert env.rom_name == version
        env.reset(seed=0)
        env.step(0)
    finally:
        env.close()


def test_standin_is_recognised_without_a_warning(standin_rom, recwarn):
    rom = pokemon_env.load_rom(standin_rom)
    assert rom.name == "stand-in cartridge" and rom.data == standin_rom.read_bytes() and rom.title == "STANDIN"
    assert rom.sha1 == hashlib.sha1(rom.data).hexdigest()
    assert not [w for w in recwarn if issubclass(w.category, UnknownRomWarning)]


def test_rom_file_is_never_written_beside(standin_env, standin_rom):
    before = sorted(p.name for p in standin_rom.parent.iterdir())
    digest = hashlib.sha1(standin_rom.read_bytes()).hexdigest()
    env = standin_env()
    env.reset(seed=0)
    env.step(0)
    env.close()
    assert sorted(p.name for p in standin_rom.parent.iterdir()) == before
    assert hashlib.sha1(standin_rom.read_bytes()).hexdigest() == digest


def test_missing_init_state(standin_env, tmp_path):
    with pytest.raises(StateError, match="does not exist"):
        standin_env(init_state=tmp_path / "nothing.state")


@pytest.mark.parametrize("contents", ["random", "empty", "truncated", "padded"])
def test_garbage_init_state_is_refused(standin_env, start_state_file, tmp_path, contents):
    state = start_state_file.read_bytes()
    garbage = {
        "random": np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "empty": b"",
        "truncated": state[: len(state) // 2],
        "padded": state + b"\0" * 64,
    }[contents]
    path = tmp_path / "garbage.state"
    path.write_bytes(garbage)
    with pytest.raises(StateError) as error:
        standin_env(init_state=path)
    assert "\n" not in str(error.value)


def test_state_of_another_rom_is_refused(standin_env, tmp_path):
    rom = io.BytesIO(build_rom(b"OTHERGAME"))
    other = PyBoy(rom, window="null", sound_emulated=False, cgb=False, log_level="ERROR")
    other.tick(300, False)  # past the boot ROM, RAM filled
    path = tmp_path / "other_game.state"
    with open(path, "wb") as f:
        other.save_state(f)
    other.stop(save=False)
    with pytest.raises(StateError, match="Pokemon Red|this ROM"):
        standin_env(init_state=path)


@pytest.mark.parametrize(
    "kwargs", [dict(render_mode="video"), dict(frame_skip=1), dict(frame_stack=0), dict(max_steps=0)]
)
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, kwargs):
    path = tmp_path / "homebrew.gb"
    path.write_bytes(build_rom(b"HOMEBREW"))
    with pytest.raises(ValueError, match="must be") as error:
        PokemonRedEnv(rom_path=path, **kwargs)
    assert not isinstance(error.value, RomError)
