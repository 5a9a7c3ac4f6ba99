"""Where the agents went: map positions (world_map.json) and the pictures drawn from episode infos."""
import importlib.util
import json

import numpy as np
import pytest
import standin_play
from pyboy.plugins.game_wrapper_pokemon_gen1_constants import MAPS as PYBOY_MAP_IDS

import pokemon_env
from pokemon_env import ACTIONS, LABEL, LEGEND_HEIGHT, NO_MAP, NOT_VISITED, colour_share

SCRIPT = pokemon_env.WORLD_MAP_FILE.parent / "tools" / "derive_world_map.py"
spec = importlib.util.spec_from_file_location("derive_world_map", SCRIPT)
derive = importlib.util.module_from_spec(spec)
spec.loader.exec_module(derive)

WORLDS = json.loads(pokemon_env.WORLD_MAP_FILE.read_text())["worlds"]
RED = pokemon_env.Rom(data=b"", name="Pokemon Red", sha1="", title="POKEMON RED")  # as load_rom gives the real game
OPPOSITE = {"north": "south", "south": "north", "west": "east", "east": "west"}


def tile(map_id, x, y):
    return map_id << 16 | y << 8 | x


@pytest.mark.parametrize("name", ["pokemon_red", "standin"])
def test_connections_meet_edge_to_edge_and_outdoor_maps_do_not_overlap(name):
    maps = {m["id"]: m for m in WORLDS[name]["maps"]}
    connections = WORLDS[name]["connections"]
    assert connections
    for source, direction, target, offset in connections:
        a, b = maps[source], maps[target]
        meets = {  # the neighbour's edge against this map's, shifted along it by the offset
            "north": b["y"] + b["height"] == a["y"] and b["x"] - a["x"] == offset,
            "south": b["y"] == a["y"] + a["height"] and b["x"] - a["x"] == offset,
            "west": b["x"] + b["width"] == a["x"] and b["y"] - a["y"] == offset,
            "east": b["x"] == a["x"] + a["width"] and b["y"] - a["y"] == offset,
        }[direction]
        assert meets, (a["name"], direction, b["name"])
        assert [target, OPPOSITE[direction], source, -offset] in connections  # both sides agree
    outdoor = [m for m in maps.values() if "x" in m]
    ground = np.zeros((1000, 1000))
    for m in outdoor:
        ground[m["y"] : m["y"] + m["height"], m["x"] : m["x"] + m["width"]] += 1
    assert ground.max() == 1


@pytest.mark.parametrize("name", ["pokemon_red", "standin"])
def test_indoor_maps_hang_on_a_door_of_an_outdoor_map(name):
    maps = {m["id"]: m for m in WORLDS[name]["maps"]}
    for m in maps.values():
        if "door" not in m:
            continue
        door_map, x, y = m["door"]
        outside = maps[door_map]
        assert "x" in outside and 0 <= x < outside["width"] and 0 <= y < outside["height"]
        chain = [m["id"]]
        while "x" not in maps[chain[-1]]:  # through the maps that lead in, out to the door's map
            assert maps[chain[-1]]["door"] == m["door"] and len(chain) < 20, chain
            chain.append(maps[chain[-1]]["via"])
        assert chain[-1] == door_map


def test_pokemon_red_maps_match_pokemon_env_and_pyboy():
    world = WORLDS["pokemon_red"]
    assert world["source"]["repository"] == "https://github.com/pret/pokered"
    assert len(world["source"]["commit"]) == 40
    names = {m["id"]: m["name"] for m in world["maps"]}
    assert all(PYBOY_MAP_IDS[name.lower()] == map_id for map_id, name in names.items())  # in capitals
    assert names[0x26] == "REDS_HOUSE_2F" and len(names) == 226  # wCurMap ids; 22 of 248 are unused
    placed = [m for m in world["maps"] if "x" in m or "door" in m]
    assert len([m for m in placed if "x" in m]) == 36 and len(placed) == 220  # link-cable rooms are not
    maps = {m["id"]: m for m in world["maps"]}
    pallet, route_1 = maps[0x00], maps[0x0C]
    assert route_1["y"] + route_1["height"] == pallet["y"] and maps[0x26]["door"] == [0x00, 5, 5]


def test_standin_world_is_what_the_script_derives_from_build_standin(tmp_path):
    """world_map.json must follow roms/build_standin.py's maps: re-run tools/derive_world_map.py if not."""
    written = tmp_path / "world_map.json"
    derive.write({"pokemon_red": WORLDS["pokemon_red"], "standin": derive.standin_world()}, written)
    assert written.read_text() == pokemon_env.WORLD_MAP_FILE.read_text(), (
        "world_map.json is stale: run python tools/derive_world_map.py")
    names = {m["name"] for m in WORLDS["standin"]["maps"] if "x" in m or "door" in m}
    assert names == set(derive.standin_module().MAPS)  # every stand-in map is placed


def test_world_is_chosen_by_the_rom(standin_rom):
    assert pokemon_env.load_world(pokemon_env.load_rom(standin_rom))["name"] == "standin"
    world = pokemon_env.load_world(RED)
    assert world["name"] == "pokemon_red" and world["maps"][0x26]["name"] == "REDS_HOUSE_2F"


@pytest.fixture(scope="module")
def badge_route_info():
    """The episode info at the end of the stand-in's scripted badge route, through the real env."""
    env = pokemon_env.PokemonRedEnv(rom_path=standin_play.ROM, max_steps=len(standin_play.BADGE_ROUTE))
    env.reset(seed=0)
    for button in standin_play.BADGE_ROUTE:
        _, _, _, truncated, info = env.step(ACTIONS.index(button))
    env.close()
    assert truncated and info["badges"] == 1
    return info


def test_scripted_route_is_drawn_where_the_world_puts_it(badge_route_info):
    world = pokemon_env.load_world(pokemon_env.load_rom(standin_play.ROM))
    visits = {}
    pokemon_env.add_visits(visits, badge_route_info["visited_tiles"])
    assert set(visits) == {0x00, 0x0C, 0x25, 0x26, 0x28, 0x36}  # every map the route entered is drawn...
    layout = pokemon_env.world_layout(visits, world)
    assert set(visits) <= set(layout["places"])  # ...and placed
    image = pokemon_env.render_world_map(visits, 1, world)
    scale = image.shape[1] // layout["size"][1]
    assert image.shape[0] == LEGEND_HEIGHT + layout["size"][0] * scale

    def pixel(map_id, x, y):
        top, left, _, _ = layout["places"][map_id]
        return tuple(image[LEGEND_HEIGHT + (top + y) * scale + scale // 2, (left + x) * scale + scale // 2])

    everyone = tuple(colour_share(np.ones((1, 1)))[0, 0])
    for packed in badge_route_info["visited_tiles"]:
        assert pixel(packed >> 16, packed & 0xFF, packed >> 8 & 0xFF) == everyone
    assert pixel(0x00, 1, 1) == NOT_VISITED  # Pallet Town's path, off the route
    assert tuple(image[LEGEND_HEIGHT + scale // 2, scale // 2]) == NO_MAP  # the margin: no map

    # Route 1's edge (2, 7) is the step just north of Pallet Town's exit (4, 0).
    pallet, route_1 = layout["places"][0x00], layout["places"][0x0C]
    assert (route_1[0] + 7, route_1[1] + 2) == (pallet[0] - 1, pallet[1] + 4)
    # The house's floors hang on Pallet Town's door (3, 3), Oak's lab on its door (7, 3), the gym on
    # Route 1's (2, 1); the insets sit near them and cover no visited tile, no door and no other inset.
    assert layout["doors"] == {0x25: (pallet[0] + 3, pallet[1] + 3), 0x26: (pallet[0] + 3, pallet[1] + 3),
                               0x28: (pallet[0] + 3, pallet[1] + 7), 0x36: (route_1[0] + 1, route_1[1] + 2)}
    rectangles = {map_id: layout["places"][map_id] for map_id in layout["doors"]}
    covered = np.zeros(layout["size"], int)
    for top, left, h, w in rectangles.values():
        covered[top : top + h, left : left + w] += 1
    assert covered.max() == 1 and all(covered[door] == 0 for door in layout["doors"].values())
    for packed in badge_route_info["visited_tiles"]:
        if packed >> 16 in (0x00, 0x0C):
            top, left, _, _ = layout["places"][packed >> 16]
            assert covered[top + (packed >> 8 & 0xFF), left + (packed & 0xFF)] == 0
    for map_id, (top, left, h, w) in rectangles.items():
        door_y, door_x = layout["doors"][map_id]
        gap_y = max(top - door_y, door_y - (top + h - 1), 0)
        gap_x = max(left - door_x, door_x - (left + w - 1), 0)
        assert max(gap_y, gap_x) <= 6, map_id  # beside its door, on a world 28 steps wide


def test_heatmap_counts_episodes_per_tile_and_keeps_panels_in_place(standin_rom):
    counts = {}
    pokemon_env.add_visits(counts, np.array([tile(0x26, 4, 3), tile(0x26, 5, 3), tile(0x00, 2, 6)], np.int32))
    pokemon_env.add_visits(counts, np.array([tile(0x26, 4, 3)], np.int32))
    assert counts[0x26][3, 4] == 2 and counts[0x26][3, 5] == 1 and counts[0x00][6, 2] == 1
    assert counts[0x26].sum() == 3
    world = pokemon_env.load_world(pokemon_env.load_rom(standin_rom))
    image = pokemon_env.render_heatmap(counts, 2, world)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3

    # Whole maps: 8x8 steps at 12 pixels a step, 10x8 at 10, all grey but the visited steps (and a
    # few pixels of the names' anti-aliasing); black around them.
    grey_pixels = (image[LEGEND_HEIGHT:] == NOT_VISITED).all(axis=2).sum()
    assert 0 <= grey_pixels - ((64 - 2) * 12 * 12 + (80 - 1) * 10 * 10) < 20
    assert (image == NO_MAP).all(axis=2).any()
    # The next window of episodes visits the maps in other proportions: the panels stay where they
    # were, so the pictures differ only on the 3 tiles whose counts changed.
    later = {}
    pokemon_env.add_visits(later, np.array([tile(0x26, 4, 3), tile(0x00, 2, 6)], np.int32))
    pokemon_env.add_visits(later, np.array([tile(0x00, 2, 6), tile(0x00, 3, 6), tile(0x26, 5, 3)], np.int32))
    changed = (pokemon_env.render_heatmap(later, 2, world) != image).any(axis=2)
    assert 0 < changed.sum() <= 3 * 12 * 12

    many = {m: np.ones((256, 256), np.int32) for m in range(30)}
    assert pokemon_env.render_heatmap(many, 1, world).shape[1] <= 700  # 6 panels to a row


# ----- Pokemon Red's world map, drawn without the ROM: synthetic visits on every map -----

UNKNOWN_MAP = 0x0B  # an id Pokemon Red leaves unused: world_map.json knows no such map


@pytest.fixture(scope="module")
def red():
    """Red's world (no ROM needed), visits on three tiles of every map (two corners and the middle) and
    of a map it does not know, their layout and the world map drawn from them."""
    world = pokemon_env.load_world(RED)
    visits = {}
    for map_id, entry in [*world["maps"].items(), (UNKNOWN_MAP, {"height": 6, "width": 5})]:
        grid = np.zeros((256, 256), np.int32)
        h, w = entry["height"], entry["width"]
        grid[0, 0], grid[h - 1, w - 1], grid[h // 2, w // 2] = 1, 2, 3
        visits[map_id] = grid
    return world, visits, pokemon_env.world_layout(visits, world), pokemon_env.render_world_map(visits, 3, world)


def is_label(pixels) -> np.ndarray:
    return np.abs(pixels.astype(int) - LABEL).max(axis=-1) <= 10


def is_line(pixels) -> np.ndarray:
    """Grey and bright: the label colour, anti-aliased over grey (no map, not visited), never a visit's."""
    pixels = pixels.astype(int)
    return (pixels.max(axis=-1) - pixels.min(axis=-1) <= 3) & (pixels.min(axis=-1) >= 150)


def test_every_map_is_placed_outdoor_maps_where_the_world_puts_them(red):
    world, visits, layout, _ = red
    assert world["name"] == "pokemon_red" and UNKNOWN_MAP not in world["maps"]
    assert set(layout["places"]) == set(visits)
    outdoor = {map_id: m for map_id, m in world["maps"].items() if "x" in m}
    margin = layout["places"][0x00][0] - outdoor[0x00]["y"]  # Pallet Town
    for map_id, m in outdoor.items():
        assert layout["places"][map_id] == (margin + m["y"], margin + m["x"], m["height"], m["width"])
    assert UNKNOWN_MAP not in layout["doors"] and layout["places"][UNKNOWN_MAP][2:] == (6, 5)  # as far as visited


def test_insets_cover_no_visited_tile_no_door_and_no_other_inset(red):
    world, visits, layout, _ = red
    height, width = layout["size"]
    insets = {map_id: place for map_id, place in layout["places"].items() if "x" not in world["maps"].get(map_id, {})}
    assert len(insets) > 150
    covered = np.zeros((height + 2, width + 2), int)  # with a step around each inset
    for top, left, h, w in insets.values():
        assert top >= 0 and left >= 0 and top + h <= height and left + w <= width
        covered[top : top + h + 2, left : left + w + 2] += 1
    inside = np.zeros((height, width), int)
    for top, left, h, w in insets.values():
        inside[top : top + h, left : left + w] += 1
        assert covered[top + 1 : top + h + 1, left + 1 : left + w + 1].max() == 1  # a step from any other
    for map_id, (top, left, h, w) in layout["places"].items():
        if map_id not in insets:
            ys, xs = np.nonzero(visits[map_id][:h, :w])
            assert not inside[top + ys, left + xs].any(), world["maps"][map_id]["name"]
    assert all(inside[door] == 0 for door in layout["doors"].values())


def test_the_image_has_its_size_outlines_and_door_lines(red):
    world, visits, layout, image = red
    height, width = layout["size"]
    scale = 2  # Red's world is 410 x 390 steps: 2 pixels a step within 900
    assert image.shape == (LEGEND_HEIGHT + height * scale, width * scale, 3) and image.dtype == np.uint8
    canvas = image[LEGEND_HEIGHT:]
    for map_id, (top, left, h, w) in layout["places"].items():
        if "x" in world["maps"].get(map_id, {}):
            continue
        y0, x0, y1, x1 = top * scale - 1, left * scale - 1, (top + h) * scale, (left + w) * scale
        for y, x in [(y0, x0), (y0, x1), (y1, x0), (y1, x1)]:  # an outlined inset
            if 0 <= y < canvas.shape[0] and 0 <= x < canvas.shape[1]:
                assert is_label(canvas[y, x]), map_id
        if map_id not in layout["doors"]:
            continue
        door_y, door_x = layout["doors"][map_id]
        assert is_label(canvas[door_y * scale - 1, door_x * scale - 1])  # the door, outlined
        start = np.array([door_y * scale + scale // 2, door_x * scale + scale // 2])
        end = np.clip(start, (y0, x0), (y1, x1))  # the nearest point of the inset's outline
        points = [np.round(start + (end - start) * t).astype(int) for t in np.linspace(0, 1, 8)]
        assert all(is_line(canvas[y - 1 : y + 2, x - 1 : x + 2]).any() for y, x in points), map_id  # the line


def test_heatmap_of_every_map_has_a_panel_each(red):
    world, visits, _, _ = red
    image = pokemon_env.render_heatmap(visits, 3, world)
    rows = -(-len(visits) // 6)
    assert image.shape == (LEGEND_HEIGHT + rows * (14 + 100 + 6), 6 + 6 * 106, 3)
    assert (image == NO_MAP).all(axis=2).any()
