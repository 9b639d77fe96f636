"""The synthetic worlds a model can be trained and scored on, by name: `shapes` (imagen.shapes, the plain world of
the shipped `shapes` model) and `shapes-hard` (imagen.shapes_hard, busier scenes where guidance has room to help).

A world is a seeded captioned dataset plus the scorer that reads its images: `World` gathers the functions the
trainer, the prompt suites, the alignment metric and `eval shapes` need, so none of them names a world module.
A trained model says which world it was trained on in `world.txt` beside its weights (absent: `shapes`).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from imagen.errors import UserError

WORLD_FILE = "world.txt"
DEFAULT_WORLD = "shapes"
_MODULES = {"shapes": ("imagen.shapes", "imagen.shapes_scorer", "ShapesWorld"),
            "shapes-hard": ("imagen.shapes_hard", "imagen.shapes_hard_scorer", "HardWorld")}
WORLDS: tuple[str, ...] = tuple(_MODULES)


@dataclass(frozen=True)
class World:
    name: str
    categories: tuple[str, ...]
    fact_types: tuple[str, ...]
    _module: object
    _scorer: object
    _dataset: type

    def dataset(self, seed: int = 0, split: str = "train", categories: tuple[str, ...] | None = None):
        """The endless seeded dataset: `.item(i)` -> (scene, caption, facts)."""
        return self._dataset(seed, split, tuple(categories or self.categories))

    def render(self, scene, size: int):
        return self._module.render(scene, size)

    def held_out_captions(self, n: int, seed: int = 0) -> list:
        return self._module.held_out_captions(n, seed)

    def facts_to_row(self, facts) -> dict:
        return self._module.facts_to_row(facts)

    def row_to_facts(self, row):
        return self._module.row_to_facts(row)

    @property
    def fact_columns(self) -> tuple[str, ...]:
        return self._module.FACT_COLUMNS

    def score(self, image, facts) -> dict[str, bool]:
        return self._scorer.score(image, facts)

    def tested_facts(self, facts) -> tuple[str, ...]:
        return self._scorer.tested_facts(facts)


def get_world(name: str) -> World:
    if name not in _MODULES:
        raise UserError(f"unknown world {name!r}; choose one of {', '.join(WORLDS)}")
    mod_name, scorer_name, cls = _MODULES[name]
    mod, scorer = importlib.import_module(mod_name), importlib.import_module(scorer_name)
    return World(name, mod.CATEGORIES, scorer.FACT_TYPES, mod, scorer, getattr(mod, cls))


def world_of_facts(facts: dict) -> World:
    """The world a stored facts dict belongs to: its "world" key (the plain world's rows have none)."""
    return get_world(facts.get("world") or DEFAULT_WORLD)


def score_facts_json(image, facts_json: str) -> dict[str, bool]:
    """Score one image against facts stored as JSON (the prompts table's `facts` column), by the facts' world."""
    row = json.loads(facts_json)
    world = world_of_facts(row)
    return world.score(image, world.row_to_facts(row))


def model_world(folder) -> str:
    """The world a checkpoint folder's model was trained on: its world.txt, else `shapes`."""
    path = Path(folder) / WORLD_FILE
    if path.is_file():
        name = path.read_text().strip()
        if name not in _MODULES:
            raise UserError(f"{path}: unknown world {name!r}; choose one of {', '.join(WORLDS)}")
        return name
    return DEFAULT_WORLD
