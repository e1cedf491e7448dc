"""The one-pixel paper's analyses (section 3) of an attack table from :func:`attack_images`.

* chromatic: RMSE between the attack colour and the mean of its 8 neighbours, all scaled to
  [0, 1], against the score change (their Fig. 1 and 2);
* spatial: mean, median and SD of X, Y, R, G, B over successful attacks per direction
  (their Tables 1 and 2) and a heatmap of attack positions (Fig. 3 and 4);
* periodicity: how many attack pixels lie on even/even, even/odd, odd/even, odd/odd
  coordinates (a stride-(2, 2) first layer concentrates them on even/even).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["chromatic_rmse", "spatial_table", "periodicity_table", "position_heatmap", "summary_table"]

PARITIES = ("even/even", "even/odd", "odd/even", "odd/odd")


def chromatic_rmse(attacks: pd.DataFrame) -> np.ndarray:
    """Per attack: RMSE over R, G, B between the attack colour and its neighbours' mean colour, in [0, 1]."""
    colour = attacks[["r", "g", "b"]].to_numpy(float) / 255
    mean = attacks[["nb_mean_r", "nb_mean_g", "nb_mean_b"]].to_numpy(float) / 255
    return np.sqrt(((colour - mean) ** 2).mean(axis=1))


def _successful(attacks: pd.DataFrame) -> pd.DataFrame:
    return attacks[attacks["success"].astype(bool) & attacks["applicable"].astype(bool)]


def spatial_table(attacks: pd.DataFrame, *, successful_only: bool = True) -> pd.DataFrame:
    """Mean, median and SD of X, Y, R, G, B per direction (their Tables 1 and 2)."""
    a = _successful(attacks) if successful_only else attacks[attacks["applicable"].astype(bool)]
    rows = []
    for direction, g in a.groupby("direction", sort=True):
        for stat in ("mean", "median", "sd"):
            vals = {c: (g[c].mean() if stat == "mean" else g[c].median() if stat == "median" else g[c].std(ddof=1)) for c in ("x", "y", "r", "g", "b")}
            rows.append({"direction": direction, "statistic": stat, "n": len(g), **vals})
    return pd.DataFrame(rows, columns=["direction", "statistic", "n", "x", "y", "r", "g", "b"])


def parity(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``"even/even"`` etc. of (x, y) coordinates."""
    names = np.array(PARITIES)
    return names[(np.asarray(x) % 2) * 2 + (np.asarray(y) % 2)]


def periodicity_table(attacks: pd.DataFrame, *, successful_only: bool = True) -> pd.DataFrame:
    """Counts and shares of attack pixels by coordinate parity (x/y), per direction and overall."""
    a = _successful(attacks) if successful_only else attacks[attacks["applicable"].astype(bool)]
    rows = []
    groups = [(d, g) for d, g in a.groupby("direction", sort=True)] + [("all", a)]
    for direction, g in groups:
        p = pd.Series(parity(g["x"].to_numpy(int), g["y"].to_numpy(int)) if len(g) else [], dtype=object)
        counts = {k: int((p == k).sum()) for k in PARITIES}
        n = len(g)
        rows.append({"direction": direction, "n": n, **counts, "even/even share": counts["even/even"] / n if n else float("nan")})
    return pd.DataFrame(rows)


def position_heatmap(attacks: pd.DataFrame, shape: tuple[int, int], *, successful_only: bool = True) -> np.ndarray:
    """Counts of attack pixels per position, ``shape = (H, W)``."""
    a = _successful(attacks) if successful_only else attacks[attacks["applicable"].astype(bool)]
    heat = np.zeros(shape, dtype=np.int64)
    np.add.at(heat, (a["y"].to_numpy(int), a["x"].to_numpy(int)), 1)
    return heat


def summary_table(attacks: pd.DataFrame) -> pd.DataFrame:
    """Per direction: images, applicable ones, successes, success rate, mean queries and score change."""
    rows = []
    for direction, g in attacks.groupby("direction", sort=True):
        app = g[g["applicable"].astype(bool)]
        ok = app["success"].astype(bool)
        rows.append(
            {
                "direction": direction,
                "images": len(g),
                "attacked": len(app),
                "successful": int(ok.sum()),
                "success rate": float(ok.mean()) if len(app) else float("nan"),
                "mean queries": float(app["queries"].mean()) if len(app) else float("nan"),
                "mean score change": float(app["score_change"].mean()) if len(app) else float("nan"),
                "mean |change| of successes": float(app.loc[ok, "score_change"].abs().mean()) if ok.any() else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def map_parity(min_map: np.ndarray, max_map: np.ndarray) -> dict[str, float]:
    """Mean one-pixel score range (max - min map) per coordinate parity (x/y) and the
    even/even to other ratio: above 1 where the checkerboard of a stride-2 first layer shows."""
    rng = np.asarray(max_map, float) - np.asarray(min_map, float)
    yy, xx = np.mgrid[0 : rng.shape[0], 0 : rng.shape[1]]
    names = parity(xx, yy)
    out = {f"mean range {k}": float(np.nanmean(np.where(names == k, rng, np.nan))) for k in PARITIES}
    others = np.nanmean(np.where(names != "even/even", rng, np.nan))
    out["even/even to others"] = out["mean range even/even"] / others if others > 0 else float("nan")
    return out
