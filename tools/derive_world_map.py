"""Derive world_map.json: where every map sits in one world, for pokemon_env's world-map picture.

    python tools/derive_world_map.py --pokered DIR [--commit HASH]  # both worlds, from a pret/pokered tree
    python tools/derive_world_map.py                                # the stand-in's world again; keeps Red's

Re-run it (without --pokered) whenever roms/build_standin.py's maps change; tests/test_world_map.py
checks that world_map.json is what this script writes.

Outdoor maps are placed by their connections (a neighbour's edge meets this map's edge, shifted by
the connection's offset), from the first outdoor map at (0, 0), then shifted so that no coordinate
is negative. Each indoor map hangs on the door tile of the outdoor map that leads into it; an
indoor map reached only through other indoor maps hangs on the same door as the first map of the
shortest such chain. Positions are in steps (one wXCoord/wYCoord unit; a block is 2x2 steps).

Pokemon Red's facts come from a pret/pokered checkout, which is read here and never committed:
map sizes from constants/map_constants.asm, connections from data/maps/headers/*.asm (offsets in
blocks, as the `connection` macro in macros/scripts/maps.asm takes them), warps from
data/maps/objects/*.asm. The stand-in's come from roms/build_standin.py (MAPS, MAP_IDS), whose
outdoor maps join through warps on their edges: such a pair of edge warps is read as a connection.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "world_map.json"
STEP = {"north": (0, -1), "south": (0, 1), "west": (-1, 0), "east": (1, 0)}
POKERED_FILES = ["constants/map_constants.asm", "data/maps/headers/*.asm", "data/maps/objects/*.asm"]


class WorldError(Exception):
    """The map facts do not make one consistent world; the message says where."""


def read_pokered(root: Path):
    """(maps, connections, warps, outdoor) from a pret/pokered checkout."""
    maps, ids = {}, {}
    for line in (root / "constants/map_constants.asm").read_text().splitlines():
        found = re.match(r"\s*map_const\s+(\w+),\s*(\d+),\s*(\d+)", line)
        if found:  # ids count up from 0 in file order; sizes in blocks of 2x2 steps
            name, width, height = found[1], int(found[2]), int(found[3])
            ids[name] = len(ids)
            if width and height:  # the unused ids have size 0
                maps[ids[name]] = {"name": name, "width": 2 * width, "height": 2 * height}
    connections = []
    for path in sorted((root / "data/maps/headers").glob("*.asm")):
        source = None
        for line in path.read_text().splitlines():
            header = re.match(r"\s*map_header\s+\w+,\s*(\w+)", line)
            link = re.match(r"\s*connection\s+(\w+),\s*\w+,\s*(\w+),\s*(-?\d+)", line)
            if header:
                source = ids[header[1]]
            elif link:  # the offset is in blocks: steps are twice that
                connections.append([source, link[1], ids[link[2]], 2 * int(link[3])])
    warps = {}
    for path in sorted((root / "data/maps/objects").glob("*.asm")):
        text = path.read_text()
        owner = ids[re.search(r"def_warps_to\s+(\w+)", text)[1]]
        events = re.findall(r"warp_event\s+(\d+),\s*(\d+),\s*(\w+)", text)
        # LAST_MAP (back where the player came from) never leads anywhere new; nor do warps to the
        # size-0 ids, which the game rewrites as it runs (elevators).
        warps[owner] = [(int(x), int(y), ids[dest]) for x, y, dest in events
                        if dest != "LAST_MAP" and ids[dest] in maps]
    outdoor = {map_id for link in connections for map_id in (link[0], link[2])}
    return maps, connections, warps, outdoor


def standin_module():
    """roms/build_standin.py, imported (it builds nothing until its main() runs)."""
    spec = importlib.util.spec_from_file_location("build_standin", ROOT / "roms" / "build_standin.py")
    standin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standin)
    return standin


def read_standin():
    """(maps, connections, warps, outdoor) from roms/build_standin.py's map definitions."""
    standin = standin_module()
    ids = standin.MAP_IDS
    maps = {ids[name]: {"name": name, "width": len(m["rows"][0]), "height": len(m["rows"])}
            for name, m in standin.MAPS.items()}
    outdoor = {ids[name] for name, m in standin.MAPS.items() if m["outdoor"]}
    warps, connections = {}, []
    for name, m in standin.MAPS.items():
        source, width, height = ids[name], len(m["rows"][0]), len(m["rows"])
        warps[source] = [(x, y, ids[dest]) for (x, y), (dest, _, _) in m["warps"].items()]
        for (x, y), (dest, to_x, to_y) in m["warps"].items():
            if source not in outdoor or ids[dest] not in outdoor:
                continue
            # An edge warp lands next to the other map's matching edge warp: the maps meet at their
            # edges, shifted along them by the warp's displacement.
            edges = {"north": y == 0, "south": y == height - 1, "west": x == 0, "east": x == width - 1}
            direction = next((side for side, on_it in edges.items() if on_it), None)
            if direction is None:
                raise WorldError(f"stand-in {name}: warp ({x}, {y}) joins two outdoor maps off the edge")
            offset = x - to_x if direction in ("north", "south") else y - to_y
            link = [source, direction, ids[dest], offset]
            if link not in connections:
                connections.append(link)
    return maps, connections, warps, outdoor


def place(maps, connections, warps, outdoor) -> dict:
    """Outdoor maps' positions and indoor maps' doors. Raises WorldError on inconsistent facts."""
    position = {}
    first = min(outdoor)
    position[first] = (0, 0)
    queue = deque([first])
    while queue:
        source = queue.popleft()
        for link_source, direction, target, offset in connections:
            if link_source != source:
                continue
            x, y = position[source]
            if direction == "north":
                spot = (x + offset, y - maps[target]["height"])
            elif direction == "south":
                spot = (x + offset, y + maps[source]["height"])
            elif direction == "west":
                spot = (x - maps[target]["width"], y + offset)
            else:
                spot = (x + maps[source]["width"], y + offset)
            if target not in position:
                position[target] = spot
                queue.append(target)
            elif position[target] != spot:
                raise WorldError(f"{maps[source]['name']}'s {direction} connection puts "
                                 f"{maps[target]['name']} at {spot}, already placed at {position[target]}")
    missing = sorted(maps[m]["name"] for m in outdoor - set(position))
    if missing:
        raise WorldError(f"outdoor maps not connected to the rest: {', '.join(missing)}")
    left = min(x for x, _ in position.values())
    top = min(y for _, y in position.values())
    for map_id, (x, y) in position.items():
        maps[map_id].update(x=x - left, y=y - top)

    # Indoor maps, breadth first from the outdoor doors: the first way in found is the shortest.
    reached = deque(sorted(outdoor))
    while reached:
        source = reached.popleft()
        for x, y, target in warps.get(source, []):
            if target in outdoor or "door" in maps[target]:
                continue
            door = [source, x, y] if source in outdoor else maps[source]["door"]
            maps[target].update(door=door, via=source)
            reached.append(target)
    return maps


def world_entry(maps, connections, source) -> dict:
    return {"source": source, "maps": [{"id": map_id, **maps[map_id]} for map_id in sorted(maps)],
            "connections": connections}


def standin_world() -> dict:
    maps, connections, warps, outdoor = read_standin()
    source = {"file": "roms/build_standin.py", "names": ["MAPS", "MAP_IDS"]}
    return world_entry(place(maps, connections, warps, outdoor), connections, source)


def pokemon_red_world(root: Path, commit: str) -> dict:
    maps, connections, warps, outdoor = read_pokered(root)
    source = {"repository": "https://github.com/pret/pokered", "commit": commit, "files": POKERED_FILES}
    return world_entry(place(maps, connections, warps, outdoor), connections, source)


def write(worlds: dict, path: Path = OUT) -> None:
    """JSON with one map or connection a line, so that a change reads as a short diff."""

    def rows(items):
        return "[\n" + ",\n".join(json.dumps(item) for item in items) + "\n]"

    entries = [f'"{name}": {{"source": {json.dumps(w["source"])},\n"maps": {rows(w["maps"])},\n'
               f'"connections": {rows(w["connections"])}}}' for name, w in worlds.items()]
    path.write_text(f'{{\n"about": {json.dumps(ABOUT)},\n"worlds": {{\n' + ",\n".join(entries) + "\n}\n}\n")


ABOUT = ("Where every map sits in one picture of its game's world, written by tools/derive_world_map.py "
         "(see its docstring). Positions in steps (wXCoord/wYCoord units). Outdoor maps: x, y of their "
         "top-left step. Indoor maps: door = [outdoor map id, x, y], the door tile that leads in, and "
         "via = the map whose warp leads in. A map with neither is not reachable from outdoors. "
         "Connections: [from, direction, to, offset in steps along the edge].")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pokered", type=Path, help="a pret/pokered tree; without it, Red's world is kept")
    parser.add_argument("--commit", help="the pokered commit of that tree, if it is not a git checkout")
    args = parser.parse_args()
    worlds = {}
    if args.pokered is not None:
        if not (args.pokered / "constants/map_constants.asm").is_file():
            sys.exit(f"error: {args.pokered} is not a pret/pokered tree (no constants/map_constants.asm)")
        commit = args.commit
        if commit is None and (args.pokered / ".git").exists():
            git = ["git", "-C", str(args.pokered), "rev-parse", "HEAD"]
            commit = subprocess.run(git, capture_output=True, text=True).stdout.strip()
        if not re.fullmatch(r"[0-9a-f]{40}", commit or ""):
            sys.exit(f"error: give the commit {args.pokered} holds with --commit HASH (40 hex digits)")
        worlds["pokemon_red"] = pokemon_red_world(args.pokered, commit)
    elif OUT.is_file():
        worlds["pokemon_red"] = json.loads(OUT.read_text())["worlds"]["pokemon_red"]
    else:
        sys.exit(f"error: {OUT} does not exist yet: give --pokered DIR, a pret/pokered checkout")
    worlds["standin"] = standin_world()
    write(worlds)
    print(f"wrote {OUT}: " + ", ".join(f"{name} {len(w['maps'])} maps" for name, w in worlds.items()))


if __name__ == "__main__":
    main()
