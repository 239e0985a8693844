"""The stage registry is the one list of stages: recipes, the Python API and the extras checks read it."""
from __future__ import annotations

import typing

import pytest

import edgeopt
from edgeopt import recipe as recipe_mod
from edgeopt.errors import ConfigError, MissingDependencyError
from edgeopt.stages import registry
from edgeopt.stages.registry import STAGES, StageConfig, get_stage


@pytest.mark.parametrize("kind", sorted(STAGES))
def test_every_stage_has_a_versioned_typed_config_and_a_checked_function(kind):
    spec = STAGES[kind]
    cfg_cls = spec.config
    assert issubclass(cfg_cls, StageConfig)
    assert cfg_cls.model_fields["version"].default >= 1
    assert typing.get_args(cfg_cls.model_fields["kind"].annotation) == (kind,)  # kind: Literal[<kind>]
    assert cfg_cls.model_config.get("extra") == "forbid"
    assert getattr(spec.function, "__wrapped__", None) is not None  # @stage: extras checked before it runs
    # the Python API is the registry's (edgeopt.bench is also the subpackage, which calls through)
    api = getattr(edgeopt, kind.replace("-", "_"))  # quantize-weights: edgeopt.quantize_weights
    assert api is spec.function or (kind == "bench" and api.__call__.__func__.__qualname__ == "_CallablePackage.__call__")
    assert getattr(edgeopt, spec.config_name) is cfg_cls


def test_public_api_names_come_from_the_registry():
    assert {n for s in STAGES.values() for n in (s.kind.replace("-", "_"), s.config_name)} <= set(edgeopt.__all__)


def test_edgeopt_bench_is_callable_after_its_package_is_imported(cls_onnx):
    import edgeopt.bench.core  # noqa: F401  binds edgeopt.bench to the subpackage

    report = edgeopt.bench([cls_onnx], edgeopt.BenchConfig(batch_sizes=[1], runs=2, warmup=0))
    assert report.rows[0].batch_size == 1 and report.rows[0].p50_ms > 0


def test_recipes_read_the_registry():
    assert recipe_mod.STAGES is STAGES


def test_unknown_stage_names_the_choices():
    with pytest.raises(ConfigError, match="'nope' is not a stage; choose one of finetune, merge"):
        get_stage("nope")


def test_config_version_is_recorded_in_lineage(tmp_path, cls_onnx):
    from edgeopt.stages.quantize import QuantizeConfig, quantize

    art = quantize(cls_onnx, tmp_path / "q", QuantizeConfig(ptq="dynamic"))
    assert art.manifest.lineage[-1].config["version"] == 1


def test_a_missing_extra_stops_a_stage_before_it_runs(monkeypatch, tmp_path, tiny_text_classifier):
    """The decorator checks the registry's extras first: nothing is loaded or written."""
    from edgeopt import _optional

    real = _optional.installed
    monkeypatch.setattr(_optional, "installed", lambda m: False if m == "peft" else real(m))
    with pytest.raises(MissingDependencyError, match=r"peft is not installed \(needed for the prune stage\); "
                                                     r"install with: pip install 'edgeopt\[train\]'"):
        edgeopt.prune(tiny_text_classifier, tmp_path / "out", edgeopt.PruneConfig(sparsity=0.5))
    assert not (tmp_path / "out").exists()
    assert registry.get_stage("quantize").requires == {"train": ("onnx",)}


def test_config_versions_other_than_the_current_one_are_refused():
    with pytest.raises(Exception, match="version 2 is not one this edgeopt knows"):
        edgeopt.ExportConfig(version=2)
    assert edgeopt.ExportConfig(version=1).version == 1


def test_a_recipe_checks_data_extras_before_the_first_stage(monkeypatch, tmp_path, digits_torch):
    """A later stage's sklearn: data needs scikit-learn ([demo]): the run stops before any stage."""
    from edgeopt import _optional
    from edgeopt.recipe import load_recipe, run_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nmodel: {digits_torch}\nworkdir: {tmp_path / 'w'}\nstages:\n"
                      "  - {name: onnx, kind: export}\n"
                      "  - {name: int8, kind: quantize, ptq: static, calib: 'sklearn:digits:train'}\n")
    r = load_recipe(recipe)
    real = _optional.installed
    monkeypatch.setattr(_optional, "installed", lambda m: False if m == "sklearn" else real(m))
    with pytest.raises(MissingDependencyError, match=r"scikit-learn is not installed \(needed for the sklearn:digits:train "
                                                     r"dataset \(stage int8\)\); install with: pip install 'edgeopt\[demo\]'"):
        run_recipe(r)
    assert not (tmp_path / "w").exists()


def test_every_subpackage_is_in_the_distribution():
    """pyproject.toml lists packages by hand: a subpackage missing there installs from a checkout
    (editable) but not from a wheel (`pip install edgeopt`), so its commands fail with an ImportError."""
    import tomllib

    from _support import REPO

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "edgeopt").rglob("__init__.py")}
    assert found - listed == set(), f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
