"""What each metric measures and which way is better, as data on the metric.

As Quantus keeps ``score_direction`` and a category on each metric class, every metric function
of :mod:`xailab.metrics` is declared with :func:`metric`, which attaches a frozen
:class:`MetricInfo` (``fn.info``) and lists it in :data:`METRICS`. The scoreboard names the
metric behind each of its columns (:data:`xailab.metrics.scoreboard.COLUMNS`), ``compare``
writes that data into the run (manifest section ``metrics``), and the report and the printed
scoreboard take "lower is better" from there, never from prose.

    @metric(direction="lower", category="faithfulness", summary="area under the deletion curve")
    def deletion(model, images, maps, ...): ...

    deletion.info.better()          # 'lower is better'
    METRICS["insertion"].direction  # 'higher'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

#: ``"higher"`` or ``"lower"`` is better; ``"neither"`` for a value with no better side
#: (agreement between two methods: high agreement is not a virtue in itself)
Direction = Literal["higher", "lower", "neither"]
#: Quantus's categories, plus agreement between methods and the cost of a method
Category = Literal["faithfulness", "robustness", "localisation", "complexity", "randomisation",
                   "axiomatic", "agreement", "cost"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class MetricInfo:
    """The metadata of one metric.

    Attributes:
        name: the metric's name (its function's name).
        direction: which way is better (see :data:`Direction`).
        category: what kind of quality it measures (see :data:`Category`).
        summary: what the number is, in one sentence.
        low, high: the range of the score, where it is bounded (``None`` otherwise).
    """

    name: str
    direction: Direction
    category: Category
    summary: str
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.direction not in ("higher", "lower", "neither"):
            raise ValueError(f"direction must be 'higher', 'lower' or 'neither', not {self.direction!r}")

    def better(self) -> str:
        """``"higher is better"``, ``"lower is better"`` or ``"neither side is better"``."""
        return "neither side is better" if self.direction == "neither" else f"{self.direction} is better"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: every declared metric by name
METRICS: dict[str, MetricInfo] = {}


def metric(*, direction: Direction, category: Category, summary: str, low: float | None = None,
           high: float | None = None, name: str | None = None) -> Callable[[F], F]:
    """Declare a metric function's :class:`MetricInfo` (``fn.info``) and list it in :data:`METRICS`."""

    def deco(fn: F) -> F:
        info = MetricInfo(name or fn.__name__, direction, category, summary, low, high)
        if info.name in METRICS:
            raise ValueError(f"metric {info.name!r} is declared twice")
        METRICS[info.name] = info
        fn.info = info  # type: ignore[attr-defined]
        return fn

    return deco


def info_of(fn: Callable[..., Any] | str) -> MetricInfo:
    """The :class:`MetricInfo` of a metric function or name."""
    if isinstance(fn, str):
        return METRICS[fn]
    found = getattr(fn, "info", None)
    if not isinstance(found, MetricInfo):
        raise KeyError(f"{getattr(fn, '__name__', fn)!r} declares no metric info")
    return found
