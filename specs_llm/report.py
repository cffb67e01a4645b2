"""Reports from results files only: summaries, the paper's plots, tables.

`make_report(dirs, out_dir)` reads ``results.jsonl`` in each directory (never
a model, never the recipe) and writes:

- ``accuracy_latency.png``: accuracy vs mean latency per query, one panel per
  dataset, one marker/line per method (its settings joined in order of
  latency), error bars = standard deviation over seeds (both axes), the
  Pareto front (no other point is both faster and more accurate) drawn as a
  dashed step line with its points ringed (the paper's Figures 3/4);
- ``latency_breakdown.png``: mean seconds per query by phase (draft
  generation, target scoring, PRM scoring, target generation, selection) as
  stacked bars per method and setting (Figure 5);
- ``deferral_by_step.png``: fraction of problems whose step i was deferred to
  the target, among problems that reached step i (SPECS and RSD only);
- ``table.md`` and ``table.csv``: one row per (dataset, method, setting).

On the MDP backend "accuracy" is the mean terminal reward divided by its
range R (records' ``score``). Records with status "error" are counted but
enter no accuracy or latency.

`summarize(records)` is the same aggregation as a dict (the runner writes it
to ``summary.json``).
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["PHASES", "load_records", "merge_shards", "summarize", "pareto_front", "front_points", "matched_latency_ratio",
           "accuracy_at_latency", "matched_comparison", "make_report"]

PHASES = ("draft_generation", "target_scoring", "prm_scoring", "target_generation", "selection")
_PHASE_LABELS = {
    "draft_generation": "draft generation",
    "target_scoring": "target scoring",
    "prm_scoring": "PRM scoring",
    "target_generation": "target generation",
    "selection": "selection",
}


def load_records(directory: str | Path) -> list[dict]:
    """The complete records of ``directory/results.jsonl`` (read only: a partial
    last line, left by a killed run, is skipped, not truncated)."""
    path = Path(directory) / "results.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no results file: {path}")
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    out = []
    for lineno, line in enumerate(data.splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {lineno}: corrupt record ({err.msg})") from None
    return out


def merge_shards(per_dir: list[tuple[Path, list[dict]]]) -> list[tuple[Path, list[dict]]]:
    """Directories written by ``specs run --shard I/N`` (their ``meta.json``
    says so) become one: their records joined under the first one's path.
    Refuses shards of different recipes (``recipe.yaml`` differs), of
    different shard counts, and a record key found in two shards. Other
    directories pass through unchanged."""
    shards, others = [], []
    for d, recs in per_dir:
        meta_path = d / "meta.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        (shards if meta.get("shard") else others).append((d, recs, meta.get("shard")))
    if not shards:
        return per_dir
    recipes = {(d / "recipe.yaml").read_text(encoding="utf-8") if (d / "recipe.yaml").is_file() else None
               for d, _, _ in shards}
    if len(recipes) > 1:
        raise ValueError(f"shards of different recipes: {[str(d) for d, _, _ in shards]} (recipe.yaml differs)")
    counts = {info["count"] for _, _, info in shards}
    if len(counts) > 1:
        raise ValueError(f"shards of different splits (N = {sorted(counts)}): {[str(d) for d, _, _ in shards]}")
    seen: dict[str, Path] = {}
    merged = []
    for d, recs, _ in shards:
        for r in recs:
            if r["key"] in seen:
                raise ValueError(f"record {r['key']!r} is in two shards: {seen[r['key']]} and {d}")
            seen[r["key"]] = d
        merged += recs
    return [(shards[0][0], merged)] + [(d, recs) for d, recs, _ in others]


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _std(xs):
    """Sample standard deviation (None for fewer than two values)."""
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def summarize(records: Iterable[dict]) -> dict:
    """Aggregate records per (dataset, method, setting): accuracy, latency, counts.

    Per group: ``accuracy`` (mean score of ok records), ``accuracy_by_seed``,
    ``accuracy_std`` (over seeds), ``latency_mean`` (seconds per query),
    ``latency_by_seed``, ``latency_std``, ``phase_seconds`` and
    ``phase_calls`` (means per query; their ratio is the cost of one call),
    ``steps`` (mean per query), ``tokens`` (mean per query by model), ``deferral_rate`` (deferrals per
    step), ``deferral_by_step``, ``grade_status`` counts, ``errors``.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r.get("source", ""), r["dataset"], r["method"], r["setting_key"])].append(r)
    out = []
    for (source, dataset, method, key), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        seeds = sorted({r["seed"] for r in rs})
        by_seed = {s: [r for r in ok if r["seed"] == s] for s in seeds}
        acc_seed = {s: _mean([r["score"] for r in v]) for s, v in by_seed.items() if v}
        lat_seed = {s: _mean([r["latency_s"] for r in v]) for s, v in by_seed.items() if v}
        statuses: dict[str, int] = defaultdict(int)
        for r in ok:
            statuses[str(r.get("grade_status"))] += 1
        phases = {p: _mean([r["phases"].get(p, {}).get("seconds", 0.0) for r in ok]) or 0.0 for p in PHASES}
        calls = {p: _mean([r["phases"].get(p, {}).get("calls", 0) for r in ok]) or 0.0 for p in PHASES}
        models = sorted({m for r in ok for m in r.get("models", {})})
        tokens = {m: _mean([r["models"].get(m, {}).get("tokens", 0) for r in ok]) for m in models}
        steps = sum(r["steps"] for r in ok)
        depth = max((len(r.get("step_deferred", [])) for r in ok), default=0)
        by_step = []
        for i in range(depth):
            reached = [r for r in ok if len(r["step_deferred"]) > i]
            by_step.append(sum(r["step_deferred"][i] for r in reached) / len(reached))
        first = rs[0]
        out.append({
            "source": source,
            "dataset": dataset,
            "method": method,
            "label": first.get("label", method),
            "strategy": first.get("strategy"),
            "setting_key": key,
            "setting": first.get("setting", {}),
            "swept": first.get("swept", {}),
            "seeds": seeds,
            "records": len(rs),
            "ok": len(ok),
            "errors": len(rs) - len(ok),
            "correct": sum(1 for r in ok if r.get("correct")),
            "accuracy": _mean([r["score"] for r in ok]),
            "accuracy_by_seed": acc_seed,
            "accuracy_std": _std(list(acc_seed.values())),
            "latency_mean": _mean([r["latency_s"] for r in ok]),
            "latency_by_seed": lat_seed,
            "latency_std": _std(list(lat_seed.values())),
            "phase_seconds": phases,
            "phase_calls": calls,
            "steps": _mean([r["steps"] for r in ok]),
            "tokens": tokens,
            "deferral_rate": (sum(r["deferrals"] for r in ok) / steps) if steps else None,
            "deferral_by_step": by_step,
            "grade_status": dict(statuses),
        })
    all_records = [r for rs in groups.values() for r in rs]
    return {
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "records": len(all_records),
        "errors": sum(1 for r in all_records if r["status"] != "ok"),
        "groups": out,
    }


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (latency, accuracy) no other point dominates
    (lower-or-equal latency and higher-or-equal accuracy, one strictly),
    sorted by latency."""
    idx = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            idx.append(i)
    return sorted(idx, key=lambda i: (points[i][0], -points[i][1]))


def front_points(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The Pareto front of ``points`` (latency, accuracy), sorted by latency."""
    return [tuple(points[i]) for i in pareto_front(points)]


def matched_latency_ratio(front: Sequence[tuple[float, float]], latency: float, objective: float) -> float | None:
    """Latency at which the front first reaches ``objective`` (linear interpolation
    between front points), divided by ``latency``; None if never reached."""
    front = list(front)
    for i, (x, y) in enumerate(front):
        if y >= objective:
            if i == 0:
                return x / latency
            x0, y0 = front[i - 1]
            return (x0 + (x - x0) * (objective - y0) / (y - y0)) / latency
    return None


def accuracy_at_latency(front: Sequence[tuple[float, float]], latency: float) -> float | None:
    """The front's accuracy at ``latency`` (linear interpolation between front
    points, flat after the last); None below the front's fastest point."""
    front = list(front)
    if not front or latency < front[0][0]:
        return None
    for (x0, y0), (x1, y1) in zip(front, front[1:]):
        if x0 <= latency <= x1:
            return y0 + (y1 - y0) * (latency - x0) / (x1 - x0) if x1 > x0 else max(y0, y1)
    return front[-1][1]


def _is_target_beam(g: dict) -> bool:
    return g["strategy"] == "beam" and g["setting"].get("generator", "target") == "target"


def matched_comparison(groups: list[dict]) -> list[dict]:
    """SPECS against target beam search, per dataset: for each target beam search
    point, the latency SPECS's front needs for the same accuracy (as a ratio to
    the beam's latency), and the accuracy SPECS's front reaches at the beam's
    latency (and its difference to the beam's)."""
    out = []
    for dataset in dict.fromkeys(g["dataset"] for g in groups):
        mine = [g for g in groups if g["dataset"] == dataset and g["accuracy"] is not None
                and g["latency_mean"] is not None]
        front = front_points([(g["latency_mean"], g["accuracy"]) for g in mine if g["strategy"] == "specs"])
        if not front:
            continue
        for g in sorted((g for g in mine if _is_target_beam(g)), key=lambda g: g["latency_mean"]):
            acc = accuracy_at_latency(front, g["latency_mean"])
            out.append({"dataset": dataset, "beam": _label(g), "beam_accuracy": g["accuracy"],
                        "beam_latency_s": g["latency_mean"],
                        "specs_latency_ratio_at_matched_accuracy": matched_latency_ratio(
                            front, g["latency_mean"], g["accuracy"]),
                        "specs_accuracy_at_matched_latency": acc,
                        "accuracy_difference": None if acc is None else acc - g["accuracy"]})
    return out


# ---------------------------------------------------------------------------
# plots and tables


def _label(g: dict) -> str:
    return (f"[{g['source']}] " if g["source"] else "") + g["label"]


def _y_label(dataset: str) -> str:
    return "mean terminal reward / R" if dataset == "synthetic" else "accuracy (fraction correct)"


def _plot_accuracy_latency(groups: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(g["dataset"] for g in groups))
    fig, axes = plt.subplots(1, len(datasets), figsize=(9 * len(datasets), 5), squeeze=False)
    methods = list(dict.fromkeys((g["source"], g["method"]) for g in groups))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    markers = "osD^v<>pPX*h"
    for ax, dataset in zip(axes[0], datasets):
        gs = [g for g in groups if g["dataset"] == dataset and g["accuracy"] is not None]
        for i, m in enumerate(methods):
            pts = sorted((g for g in gs if (g["source"], g["method"]) == m), key=lambda g: g["latency_mean"])
            if not pts:
                continue
            name = (f"[{m[0]}] " if m[0] else "") + m[1]
            swept_keys = list(dict.fromkeys(k for g in pts for k in g["swept"]))
            if swept_keys:
                name += f" (point label: {', '.join(swept_keys)})"
            ax.errorbar(
                [g["latency_mean"] for g in pts], [g["accuracy"] for g in pts],
                xerr=[g["latency_std"] or 0.0 for g in pts], yerr=[g["accuracy_std"] or 0.0 for g in pts],
                color=colors[m], marker=markers[i % len(markers)], ms=6, lw=1.2, capsize=3, label=name,
            )
            for g in pts:
                if g["swept"]:
                    ax.annotate(", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in g["swept"].values()),
                                (g["latency_mean"], g["accuracy"]), textcoords="offset points", xytext=(4, 4),
                                fontsize=7, color=colors[m])
        front = pareto_front([(g["latency_mean"], g["accuracy"]) for g in gs])
        if front:
            xs = [gs[i]["latency_mean"] for i in front]
            ys = [gs[i]["accuracy"] for i in front]
            ax.step(xs, ys, where="post", ls="--", color="black", lw=1, alpha=0.7, label="Pareto front")
            ax.scatter(xs, ys, s=160, facecolors="none", edgecolors="black", lw=1.2, zorder=5)
        ax.set_xlabel("mean latency per query (s)")
        ax.set_ylabel(_y_label(dataset))
        ax.set_title(f"{dataset}: accuracy vs latency (error bars: sd over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_breakdown(groups: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(g["dataset"] for g in groups))
    fig, axes = plt.subplots(len(datasets), 1, figsize=(max(7, 0.6 * max(len(groups), 8)), 4.8 * len(datasets)),
                             squeeze=False)
    colors = dict(zip(PHASES, ("tab:green", "tab:orange", "tab:purple", "tab:red", "tab:gray")))
    for ax, dataset in zip(axes[:, 0], datasets):
        gs = [g for g in groups if g["dataset"] == dataset and g["ok"]]
        x = list(range(len(gs)))
        bottom = [0.0] * len(gs)
        for p in PHASES:
            vals = [g["phase_seconds"][p] for g in gs]
            ax.bar(x, vals, bottom=bottom, color=colors[p], label=_PHASE_LABELS[p], width=0.7)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xticks(x)
        ax.set_xticklabels([_label(g) for g in gs], rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("mean seconds per query (s)")
        ax.set_title(f"{dataset}: latency by phase")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_deferrals(groups: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    datasets = list(dict.fromkeys(g["dataset"] for g in groups))
    fig, axes = plt.subplots(1, len(datasets), figsize=(8.5 * len(datasets), 4.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        gs = [g for g in groups if g["dataset"] == dataset and g["strategy"] in ("specs", "rsd")
              and g["deferral_by_step"]]
        for g in gs:
            steps = list(range(1, len(g["deferral_by_step"]) + 1))
            ax.plot(steps, g["deferral_by_step"], marker="o", ms=4, label=_label(g))
        if not gs:
            ax.text(0.5, 0.5, "no SPECS or RSD records", ha="center", va="center", transform=ax.transAxes)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step index (1 = first reasoning step)")
        ax.set_ylabel("deferral rate (fraction of problems reaching the step)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{dataset}: deferral to the target by step")
        ax.grid(alpha=0.3)
        if gs:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


_COLUMNS = ("dataset", "method", "setting", "seeds", "ok", "errors", "accuracy", "accuracy_std",
            "latency_mean_s", "latency_std_s", "deferral_rate", "draft_tokens", "target_tokens", "prm_tokens")


def _rows(groups: list[dict]) -> list[dict]:
    rows = []
    for g in groups:
        rows.append({
            "dataset": g["dataset"],
            "method": (f"[{g['source']}] " if g["source"] else "") + g["method"],
            "setting": ", ".join(f"{k}={v}" for k, v in g["swept"].items()),
            "seeds": len(g["seeds"]),
            "ok": g["ok"],
            "errors": g["errors"],
            "accuracy": g["accuracy"],
            "accuracy_std": g["accuracy_std"],
            "latency_mean_s": g["latency_mean"],
            "latency_std_s": g["latency_std"],
            "deferral_rate": g["deferral_rate"],
            "draft_tokens": g["tokens"].get("draft"),
            "target_tokens": g["tokens"].get("target"),
            "prm_tokens": g["tokens"].get("prm"),
        })
    return rows


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _write_tables(groups: list[dict], md: Path, csv_path: Path, matched: list[dict]) -> None:
    rows = _rows(groups)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r[k] is None else r[k]) for k in _COLUMNS})
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[k]).replace("|", "\\|") for k in _COLUMNS) + " |")
    notes = [
        "",
        "accuracy: mean over problems and seeds of the score (1 correct / 0 wrong; on the MDP the terminal "
        "reward / R); *_std: standard deviation over seeds; latency: seconds per query (sum of the model "
        "calls the problem waited on); tokens: mean per query; errors: failed model calls (not graded).",
    ]
    if matched:
        notes += ["", "## SPECS vs target beam search", "",
                  "| dataset | target beam search | its accuracy | its latency (s) | SPECS latency at matched accuracy "
                  "/ its latency | SPECS accuracy at matched latency | difference |", "|---|---|---|---|---|---|---|"]
        for m in matched:
            notes.append("| " + " | ".join(_fmt(m[k]) for k in (
                "dataset", "beam", "beam_accuracy", "beam_latency_s", "specs_latency_ratio_at_matched_accuracy",
                "specs_accuracy_at_matched_latency", "accuracy_difference")) + " |")
        notes += ["", "From the Pareto front of every SPECS setting (linear interpolation between its points): a "
                      "latency ratio below 1 means SPECS reaches the beam's accuracy faster; none: SPECS never "
                      "reaches it, or is never that fast."]
    md.write_text("\n".join(lines + notes) + "\n", encoding="utf-8")


def make_report(dirs: Sequence[str | Path] | str | Path, out_dir: str | Path) -> list[Path]:
    """Plots and tables from the ``results.jsonl`` of each directory in ``dirs``.

    Groups with the same (dataset, method, setting) found in more than one
    directory are kept apart, labelled with the directory name. Returns the
    written paths: ``accuracy_latency.png``, ``latency_breakdown.png``,
    ``deferral_by_step.png``, ``table.md``, ``table.csv``, ``summary.json``.
    """
    import matplotlib

    matplotlib.use("Agg")
    if isinstance(dirs, (str, Path)):
        dirs = [dirs]
    per_dir = merge_shards([(Path(d), load_records(d)) for d in dirs])
    owners: dict[tuple, set] = defaultdict(set)
    for d, recs in per_dir:
        for r in recs:
            owners[(r["dataset"], r["method"], r["setting_key"])].add(str(d))
    records = []
    for d, recs in per_dir:
        for r in recs:
            shared = len(owners[(r["dataset"], r["method"], r["setting_key"])]) > 1
            records.append({**r, "source": d.name if shared else ""})
    if not records:
        raise ValueError(f"no records in {[str(d) for d, _ in per_dir]}")
    summary = summarize(records)
    groups = summary["groups"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "accuracy_latency.png", out / "latency_breakdown.png", out / "deferral_by_step.png",
             out / "table.md", out / "table.csv", out / "summary.json"]
    _plot_accuracy_latency(groups, paths[0])
    _plot_breakdown(groups, paths[1])
    _plot_deferrals(groups, paths[2])
    summary["matched"] = matched_comparison(groups)
    _write_tables(groups, paths[3], paths[4], summary["matched"])
    paths[5].write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return paths
