"""`edgeopt tune`: the fastest int8 variant within an accuracy budget (see :mod:`edgeopt.tuning.search`)."""
from .search import Trial, TuneConfig, TuneResult, Variant, tune

__all__ = ["Trial", "TuneConfig", "TuneResult", "Variant", "tune"]
