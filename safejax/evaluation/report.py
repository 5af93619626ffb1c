"""Report files: results JSON, markdown tables in the paper's shape, and PNG charts.

`write_report(results, out_dir)` takes the dict `run.evaluate` builds and writes
  results.json     every number with its configuration (NaN written as null)
  report.md        the paper-shaped table (rows: model x decoding; columns: ASR per stage,
                   over-refusal, capability), then details per system: ASR per benchmark and judge,
                   per category, capability per task beside chance, perplexity, tag detector
  safety.png       ASR and over-refusal with Wilson 95 % intervals per system
  capability.png   accuracy per task per system, chance level marked
  judge_agreement.png  Cohen's kappa of each judge with human labels (when validated)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _finite(value: Any) -> Any:
  """NaN and infinities become None, recursively, so the JSON is standard."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  return value


def write_json(data: Any, path: str | Path) -> None:
  Path(path).write_text(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


def cell(value: Any) -> str:
  """`value` as one markdown table cell: "|" escaped, line breaks as spaces. Names reach the
  tables from users' files (benchmarks, categories, model labels), and a "|" or a newline in one
  would otherwise split its row or end the table."""
  text = str(value).replace("\\", "\\\\").replace("|", "\\|")
  return " ".join(text.splitlines()) if ("\n" in text or "\r" in text) else text


def _row(cells: list[Any]) -> str:
  return "| " + " | ".join(cell(c) for c in cells) + " |"


def _pct(p: dict[str, Any] | None, ci: bool = True) -> str:
  if not p:
    return "-"
  if not ci:
    return f"{100 * p['rate']:.1f}"
  return f"{100 * p['rate']:.1f} [{100 * p['low']:.1f}, {100 * p['high']:.1f}]"


def _stages(systems: dict[str, Any]) -> list[str]:
  return list(dict.fromkeys(s["stage"] for s in systems.values()))


def paper_table(results: dict[str, Any]) -> str:
  """Rows: model x decoding; columns: pooled ASR per stage, over-refusal and capability per stage."""
  systems = results["systems"]
  stages = _stages(systems)
  rows: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
  for s in systems.values():
    rows.setdefault((s["model"], s["decoding"]), {})[s["stage"]] = s
  has = lambda key: [st for st in stages if any(key in r.get(st, {}) for r in rows.values())]  # noqa: E731
  asr_stages, refusal_stages, capability_stages = has("safety"), has("over_refusal"), has("capability")
  header = (["model", "decoding"] + [f"ASR % {st}" for st in asr_stages]
            + [f"over-refusal % {st}" for st in refusal_stages]
            + [f"capability acc % {st} (chance)" for st in capability_stages])
  lines = [_row(header), "|" + "---|" * len(header)]
  for (model, decoding), by_stage in rows.items():
    cells = [model, decoding]
    cells += [_pct(by_stage.get(st, {}).get("safety", {}).get("pooled")) for st in asr_stages]
    cells += [_pct(by_stage.get(st, {}).get("over_refusal", {}).get("pooled")) for st in refusal_stages]
    for st in capability_stages:
      avg = by_stage.get(st, {}).get("capability", {}).get("average")
      cells.append(f"{100 * avg['acc']:.1f} ({100 * avg['chance']:.1f})" if avg else "-")
    lines.append(_row(cells))
  return "\n".join(lines)


def agreement_markdown(table: dict[str, Any]) -> str:
  """The agreement table as markdown, one section per gold set."""
  lines = []
  for name, gold in table.items():
    lines += [f"### {cell(name)}: `{cell(gold['target'])}` (n={gold['n']}, {gold['positives']} positive)", "",
              gold["description"], "",
              "| judge | accuracy [95% CI] | kappa | precision | recall | undecided | trust |",
              "|---|---|---|---|---|---|---|"]
    for judge, r in sorted(gold["judges"].items(), key=lambda kv: -kv[1]["kappa"]):
      acc = r["accuracy"]
      lines.append(_row([judge, f"{100 * acc['rate']:.1f} [{100 * acc['low']:.1f}, {100 * acc['high']:.1f}]",
                         f"{r['kappa']:.3f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}", r["undecided"],
                         r["trust"]]))
    lines.append("")
  return "\n".join(lines)


def _system_details(name: str, s: dict[str, Any]) -> list[str]:
  lines = [f"## {cell(name)}", "", f"model `{cell(s['model'])}`, stage `{cell(s['stage'])}`, decoding "
           f"`{cell(s['decoding'])}`, prompts `{cell(s['prompt_style'])}`", ""]
  safety = s.get("safety")
  if safety:
    judges = list(next(iter(safety["benchmarks"].values()))["judges"])
    lines += ["ASR % [95% CI] per benchmark and judge (primary judge first):", "",
              _row(["benchmark", "n", *judges]), "|---|---|" + "---|" * len(judges)]
    for bench, b in safety["benchmarks"].items():
      lines.append(_row([bench, b["n"], *(_pct(b["judges"][j]["overall"]) for j in judges)]))
    lines.append(_row(["pooled", safety["pooled"]["n"] if safety["pooled"] else 0, _pct(safety["pooled"]),
                       *[""] * (len(judges) - 1)]))
    lines.append("")
    for bench, b in safety["benchmarks"].items():
      per_category = b["judges"][judges[0]]["per_category"]
      if per_category:
        lines += [f"{cell(bench)} ASR % per category ({cell(judges[0])}):", "", "| category | n | ASR % [95% CI] |",
                  "|---|---|---|"]
        lines += [_row([c, p["n"], _pct(p)]) for c, p in per_category.items()]
        lines.append("")
  refusal = s.get("over_refusal")
  if refusal:
    lines += ["Over-refusal % [95% CI] on benign prompts:", "", "| benchmark | judge | n | refused % |", "|---|---|---|---|"]
    for bench, b in refusal["benchmarks"].items():
      lines.append(_row([bench, b["judge"], b["overall"]["n"] if b["overall"] else 0, _pct(b["overall"])]))
    lines.append("")
  capability = s.get("capability")
  if capability:
    lines += ["Capability (zero-shot, log-likelihood):", "", "| task | n | acc % | acc_norm % | chance % |",
              "|---|---|---|---|---|"]
    for task, r in capability.items():
      if task == "average":
        continue
      norm = f"{100 * r['acc_norm']:.1f}" if "acc_norm" in r else "-"
      lines.append(_row([task, r["n"], f"{100 * r['acc']:.1f}", norm, f"{100 * r['chance']:.1f}"]))
    avg = capability.get("average")
    if avg:
      lines.append(f"| average | | {100 * avg['acc']:.1f} | | {100 * avg['chance']:.1f} |")
    lines.append("")
  if s.get("perplexity"):
    p = s["perplexity"]
    lines += [f"Held-out perplexity ({p['n_docs']} documents): word {p['word_perplexity']:.2f}, "
              f"byte {p['byte_perplexity']:.4f}, bits/byte {p['bits_per_byte']:.4f}", ""]
  if s.get("tag_detector"):
    t = s["tag_detector"]
    lines += [f"Tag as detector: AUROC {t['auroc']:.3f} on {t['n']} documents ({t['n_unsafe']} unsafe)", ""]
  return lines


def markdown_report(results: dict[str, Any]) -> str:
  lines = ["# safejax evaluation", "", paper_table(results), ""]
  for name, s in results["systems"].items():
    lines += _system_details(name, s)
  if results.get("judge_validation"):
    lines += ["## Judge agreement with human labels", "", agreement_markdown(results["judge_validation"])]
  lines += ["## Configuration", "", "```json", json.dumps(_finite(results.get("config", {})), indent=2), "```", ""]
  return "\n".join(lines)


def _bars(ax, groups: list[str], series: dict[str, list[dict[str, Any] | None]], title: str) -> None:
  """Grouped bars of rates (%) with Wilson error bars; series: system -> one proportion per group."""
  width = 0.8 / max(len(series), 1)
  x = np.arange(len(groups))
  for i, (name, props) in enumerate(series.items()):
    rate = np.array([100 * p["rate"] if p else np.nan for p in props])
    err = np.array([[100 * (p["rate"] - p["low"]), 100 * (p["high"] - p["rate"])] if p else [0, 0] for p in props]).T
    ax.bar(x + (i - (len(series) - 1) / 2) * width, rate, width, yerr=err, capsize=3, label=name)
  ax.set_xticks(x, groups, rotation=20, ha="right")
  ax.set_ylabel("%")
  ax.set_ylim(0, 100)
  ax.set_title(title)


def plot_safety(results: dict[str, Any], path: str | Path) -> None:
  """ASR per harmful benchmark (and pooled) and over-refusal per benign benchmark, per system."""
  systems = results["systems"]
  asr_benchmarks = list(dict.fromkeys(b for s in systems.values() for b in s.get("safety", {}).get("benchmarks", {})))
  refusal_benchmarks = list(dict.fromkeys(
      b for s in systems.values() for b in s.get("over_refusal", {}).get("benchmarks", {})))
  panels = [p for p in ("asr", "refusal") if (asr_benchmarks if p == "asr" else refusal_benchmarks)]
  if not panels:
    return
  fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
  for ax, panel in zip(axes[0], panels):
    if panel == "asr":
      groups = asr_benchmarks + ["pooled"]
      series = {}
      for name, s in systems.items():
        safety = s.get("safety", {})
        benchmarks = safety.get("benchmarks", {})
        series[name] = [next(iter(benchmarks[b]["judges"].values()))["overall"] if b in benchmarks else None
                        for b in asr_benchmarks] + [safety.get("pooled")]
      _bars(ax, groups, series, "attack success rate (primary judge)")
    else:
      series = {name: [s.get("over_refusal", {}).get("benchmarks", {}).get(b, {}).get("overall")
                       for b in refusal_benchmarks] for name, s in systems.items()}
      _bars(ax, refusal_benchmarks, series, "over-refusal on benign prompts")
  axes[0][-1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_capability(results: dict[str, Any], path: str | Path) -> None:
  """Accuracy per task per system, with each task's chance level as a black line."""
  systems = {n: s["capability"] for n, s in results["systems"].items() if s.get("capability")}
  if not systems:
    return
  tasks = list(dict.fromkeys(t for c in systems.values() for t in c if t != "average"))
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tasks)), 4.5))
  width = 0.8 / len(systems)
  x = np.arange(len(tasks))
  for i, (name, capability) in enumerate(systems.items()):
    acc = [100 * capability[t]["acc"] if t in capability else np.nan for t in tasks]
    ax.bar(x + (i - (len(systems) - 1) / 2) * width, acc, width, label=name)
  for j, task in enumerate(tasks):
    chance = next(100 * c[task]["chance"] for c in systems.values() if task in c)
    ax.hlines(chance, j - 0.45, j + 0.45, colors="black", linestyles="dashed", zorder=3,
              label="chance" if j == 0 else None)
  ax.set_xticks(x, tasks, rotation=20, ha="right")
  ax.set_ylabel("accuracy %")
  ax.set_ylim(0, 100)
  ax.set_title("capability (zero-shot log-likelihood)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_judge_agreement(table: dict[str, Any], path: str | Path) -> None:
  """Cohen's kappa of each judge with the human labels, one panel per gold set."""
  fig, axes = plt.subplots(1, len(table), figsize=(5.5 * len(table), 0.45 * max(
      len(g["judges"]) for g in table.values()) + 1.5), squeeze=False)
  for ax, (name, gold) in zip(axes[0], table.items()):
    judges = sorted(gold["judges"], key=lambda j: gold["judges"][j]["kappa"])
    kappa = [gold["judges"][j]["kappa"] for j in judges]
    colors = ["tab:gray" if j.startswith("reference:") else "tab:blue" for j in judges]
    ax.barh(judges, kappa, color=colors)
    for y, j in enumerate(judges):
      ax.text(max(kappa[y], 0) + 0.02, y, f"acc {100 * gold['judges'][j]['accuracy']['rate']:.0f}%",
              va="center", fontsize=7)
    ax.set_xlim(min(0, min(kappa)) - 0.05, 1.15)
    ax.axvline(0.6, color="black", linestyle=":", linewidth=1)
    ax.set_xlabel("Cohen's kappa (dotted: substantial)")
    ax.set_title(f"{name} (n={gold['n']})", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_report(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
  """Writes results.json, report.md, safety.png and capability.png; returns the paths written."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  write_json(results, out / "results.json")
  (out / "report.md").write_text(markdown_report(results))
  plot_safety(results, out / "safety.png")
  plot_capability(results, out / "capability.png")
  if results.get("judge_validation"):
    plot_judge_agreement(results["judge_validation"], out / "judge_agreement.png")
  names = ("results.json", "report.md", "safety.png", "capability.png", "judge_agreement.png")
  return [p for p in (out / n for n in names) if p.exists()]
