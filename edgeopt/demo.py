"""`edgeopt demo`: the product-classifier example end to end, from the copy shipped with edgeopt."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Callable, Optional

from .recipe import RunResult, load_recipe, run_recipe


def demo_recipe_path() -> Path:
    return Path(str(resources.files("edgeopt._examples") / "product-classifier" / "recipe.yaml"))


def run_demo(workdir: Path, force: bool = False, on_stage: Optional[Callable[[str, str], None]] = None) -> RunResult:
    from ._optional import missing
    from .errors import MissingDependencyError

    lacking = [*missing("demo"), *missing("train"), *missing("report")]
    if lacking:
        raise MissingDependencyError(", ".join(lacking), extra="demo", purpose="the demo")
    recipe = load_recipe(demo_recipe_path())
    recipe.workdir = Path(workdir).expanduser().resolve()
    return run_recipe(recipe, force=force, on_stage=on_stage)
