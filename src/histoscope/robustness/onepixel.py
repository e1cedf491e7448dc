"""The one-pixel attack (Su et al.'s differential evolution, as the one-pixel paper uses it).

A candidate is ``(x, y, r, g, b)``.  DE/rand/1 without crossover: each generation every
member ``i`` gets the child ``x_r1 + F (x_r2 - x_r3)`` (``r1, r2, r3`` distinct and not
``i``); out-of-range coordinates are redrawn uniformly (as SciPy's DE does, so the
attack is not pushed onto the image border or onto colours 0/255); the child replaces
its parent when it scores at least as well.  The whole population is scored in one
batched call per generation, and the search stops as soon as the goal is reached.

Directions on a class ``c`` (the mitosis class by default):

``decrease``  (mitosis-to-normal): minimise ``p_c``; success when it ends below ``down``.
``increase``  (normal-to-mitosis): maximise ``p_c``; success when it ends above ``up``.

``down = up = 0.5`` is the decision threshold; the paper's analysis also keeps attacks that
cross 0.9 downward / 0.1 upward (``criterion="paper"``).  For multi-class models:
``untargeted`` (lower the true class until another class wins) and ``targeted`` (raise a
target class until it wins).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from .scoring import Mode, PixelScorer
from .target import Target

__all__ = ["DEConfig", "Criterion", "AttackResult", "one_pixel_attack", "attack_images", "neighbour_colours", "CRITERIA"]

Direction = Literal["decrease", "increase", "untargeted", "targeted"]

#: Named success criteria: (threshold a decrease must end below, threshold an increase must end above).
CRITERIA: dict[str, tuple[float, float]] = {"decision": (0.5, 0.5), "paper": (0.9, 0.1)}


@dataclass(frozen=True)
class DEConfig:
    """Differential evolution settings (Su et al.'s defaults)."""

    popsize: int = 400
    max_generations: int = 100
    f: float = 0.5
    early_stop: bool = True

    def __post_init__(self) -> None:
        if self.popsize < 4:
            raise ValueError(f"popsize must be >= 4 (DE/rand/1 draws three others), got {self.popsize}")
        if self.max_generations < 0:
            raise ValueError(f"max_generations must be >= 0, got {self.max_generations}")
        if not 0 < self.f <= 2:
            raise ValueError(f"F must be in (0, 2], got {self.f}")


@dataclass(frozen=True)
class Criterion:
    """When an attack counts as successful: ``down`` for decreases, ``up`` for increases."""

    down: float = 0.5
    up: float = 0.5

    @classmethod
    def named(cls, spec: str | tuple[float, float] | Criterion) -> Criterion:
        if isinstance(spec, Criterion):
            return spec
        if isinstance(spec, str):
            if spec not in CRITERIA:
                raise ValueError(f"unknown criterion {spec!r}; use one of {sorted(CRITERIA)} or (down, up) thresholds")
            return cls(*CRITERIA[spec])
        down, up = spec
        return cls(float(down), float(up))


@dataclass
class AttackResult:
    """One attacked image (the per-image record of the audit)."""

    image: str
    direction: str
    target_class: str
    original_score: float
    best_score: float
    x: int
    y: int
    r: int
    g: int
    b: int
    neighbours: list[list[int]] = field(repr=False)
    neighbour_mean: list[float] = field(repr=False)
    queries: int = 0
    generations: int = 0
    success: bool = False
    applicable: bool = True
    predicted_before: str = ""
    predicted_after: str = ""

    @property
    def score_change(self) -> float:
        return self.best_score - self.original_score

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        nb = d.pop("neighbours")
        mean = d.pop("neighbour_mean")
        d.update({f"nb{i}_{ch}": v for i, c in enumerate(nb) for ch, v in zip("rgb", c)})
        d.update({f"nb_mean_{ch}": v for ch, v in zip("rgb", mean)})
        d["score_change"] = self.score_change
        return d


def neighbour_colours(image: np.ndarray, y: int, x: int) -> np.ndarray:
    """The colours of the (up to) 8 neighbours of ``(y, x)``, row by row: ``(n, 3)``."""
    h, w = image.shape[:2]
    out = [image[yy, xx] for yy in range(y - 1, y + 2) for xx in range(x - 1, x + 2) if (yy, xx) != (y, x) and 0 <= yy < h and 0 <= xx < w]
    return np.asarray(out, dtype=np.int64)


def _fitness(p: torch.Tensor, direction: str, c: int) -> torch.Tensor:
    """Lower is better."""
    if direction in ("decrease", "untargeted"):
        return p[:, c]
    return -p[:, c]


def _succeeded(p: torch.Tensor, direction: str, c: int, crit: Criterion) -> torch.Tensor:
    if direction == "decrease":
        return p[:, c] < crit.down
    if direction == "increase":
        return p[:, c] > crit.up
    if direction == "untargeted":
        return p.argmax(1) != c
    return p.argmax(1) == c  # targeted


def one_pixel_attack(
    target: Target,
    image: np.ndarray,
    *,
    direction: Direction = "decrease",
    target_class: int | str | None = None,
    criterion: str | tuple[float, float] | Criterion = "decision",
    config: DEConfig | None = None,
    mode: Mode = "auto",
    seed: int | np.random.Generator | None = 0,
    name: str = "image",
    scorer: PixelScorer | None = None,
) -> AttackResult:
    """Attack one ``(H, W, 3)`` uint8 image with one pixel.

    Parameters
    ----------
    direction : {"decrease", "increase", "untargeted", "targeted"}
    target_class : int or str, optional
        The class whose score moves (decrease / increase: default the last class, e.g.
        ``mitosis``); for ``untargeted`` the true class (default: the predicted one); for
        ``targeted`` the class to reach.
    criterion : "decision", "paper" or (down, up)
    mode : {"auto", "plain", "incremental"}
        How perturbations are scored (:class:`~histoscope.robustness.scoring.PixelScorer`).
    """
    cfg = config or DEConfig()
    crit = Criterion.named(criterion)
    if direction not in ("decrease", "increase", "untargeted", "targeted"):
        raise ValueError(f"direction must be decrease, increase, untargeted or targeted, got {direction!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    q0 = target.queries
    sc = scorer if scorer is not None else PixelScorer(target, image, mode=mode)
    dev = sc.device
    original = sc.original
    if target_class is None:
        c = int(original.argmax()) if direction == "untargeted" else len(target.classes) - 1
        if direction == "targeted":
            raise ValueError("a targeted attack needs target_class")
    else:
        c = target.class_index(target_class)
    classes = target.classes
    h, w = sc.height, sc.width
    orig_score = float(original[c])
    applicable = not bool(_succeeded(original[None], direction, c, crit)[0])

    hi = torch.tensor([w, h, 256, 256, 256], device=dev, dtype=torch.float32)
    gen = torch.Generator(device=dev).manual_seed(int(rng.integers(2**62)))

    def uniform(n: int) -> torch.Tensor:
        return torch.rand(n, 5, generator=gen, device=dev) * hi

    def score(pop: torch.Tensor) -> torch.Tensor:
        ints = pop.floor().long()
        return sc(ints[:, 1], ints[:, 0], ints[:, 2:])

    n = cfg.popsize
    pop = uniform(n)
    # Su et al.: colours start from N(128, 127), clipped into range
    pop[:, 2:] = (torch.randn(n, 3, generator=gen, device=dev) * 127 + 128).clamp(0, 255.999)
    probs = score(pop) if applicable else original[None].expand(n, -1)
    fit = _fitness(probs, direction, c)
    generations = 0
    idx = torch.arange(n, device=dev)
    while applicable and generations < cfg.max_generations and not (cfg.early_stop and bool(_succeeded(probs, direction, c, crit).any())):
        # three distinct partners per member, none of them the member itself
        r = torch.argsort(torch.rand(n, n - 1, generator=gen, device=dev), dim=1)[:, :3]
        r = r + (r >= idx[:, None]).long()  # skip i
        child = pop[r[:, 0]] + cfg.f * (pop[r[:, 1]] - pop[r[:, 2]])
        bad = (child < 0) | (child >= hi)
        if bool(bad.any()):
            child = torch.where(bad, uniform(n), child)
        p_child = score(child)
        f_child = _fitness(p_child, direction, c)
        better = f_child <= fit
        pop = torch.where(better[:, None], child, pop)
        fit = torch.where(better, f_child, fit)
        probs = torch.where(better[:, None], p_child, probs)
        generations += 1
    ok = _succeeded(probs, direction, c, crit)
    best = int(torch.nonzero(ok)[0, 0]) if bool(ok.any()) and cfg.early_stop else int(fit.argmin())
    bx, by, br, bg, bb = (int(v) for v in pop[best].floor().long().tolist())
    nb = neighbour_colours(sc.image, by, bx)
    return AttackResult(
        image=name,
        direction=direction,
        target_class=classes[c] if c < len(classes) else str(c),
        original_score=orig_score,
        best_score=float(probs[best, c]),
        x=bx,
        y=by,
        r=br,
        g=bg,
        b=bb,
        neighbours=nb.tolist(),
        neighbour_mean=nb.mean(0).tolist(),
        queries=target.queries - q0,
        generations=generations,
        success=bool(ok[best]) and applicable,
        applicable=applicable,
        predicted_before=classes[int(original.argmax())] if classes else str(int(original.argmax())),
        predicted_after=classes[int(probs[best].argmax())] if classes else str(int(probs[best].argmax())),
    )


def attack_images(
    target: Target,
    images: list[np.ndarray],
    names: list[str] | None = None,
    *,
    direction: Direction | list[Direction] = "decrease",
    target_class: int | str | None = None,
    criterion: str | tuple[float, float] | Criterion = "decision",
    config: DEConfig | None = None,
    mode: Mode = "auto",
    seed: int = 0,
    verbose: bool = True,
) -> pd.DataFrame:
    """Attack every image (one direction each, or one for all); a table of :class:`AttackResult` rows."""
    from tqdm.auto import tqdm

    names = names or [f"image_{i}" for i in range(len(images))]
    directions = direction if isinstance(direction, list) else [direction] * len(images)
    if len(names) != len(images) or len(directions) != len(images):
        raise ValueError(f"{len(images)} images but {len(names)} names and {len(directions)} directions")
    rng = np.random.default_rng(seed)
    rows = []
    for img, nm, d in tqdm(list(zip(images, names, directions)), desc="one-pixel attacks", unit="image", disable=not verbose):
        rows.append(one_pixel_attack(target, img, direction=d, target_class=target_class, criterion=criterion, config=config, mode=mode, seed=rng, name=nm).row())
    return pd.DataFrame(rows)
