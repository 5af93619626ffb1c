"""The ablation ladder's report: every metric per stage, system and seed with between-seed
statistics, the claims decided from them, and the files (`ladder.md`, `claims.md`, `ladder.json`,
`ladder.png`).

`ladder_table` builds the report from the results of `evaluation.run.evaluate` (one results dict per
model) and the models' rung, seed and stage; `write_ladder` writes it. The statistics are
`evaluation.ladder`'s, the claims `evaluation.claims`'.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safejax.evaluation import claims as claims_lib
from safejax.evaluation import ladder

STAGES = ("base", "instruct", "benign_ft")
TABLE_METRICS = ("harmful_refused", "empty_share", "over_refusal", "helpfulness", "capability", "word_perplexity",
                 "tag_auroc", "sham_auroc", "nll_auroc", "oov_share", "reply_perplexity")


def judge_kappas(world_validation: Mapping[str, Any] | None, results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
  """judge -> Cohen's kappa on attack-success labels: the world's labelled replies on the built-in
  world, JailbreakBench's human judge comparison on real data (from any model's results)."""
  if world_validation:
    return {judge: world_validation[judge]["kappa"] for judge in ("compliance", "leak") if judge in world_validation}
  for result in results.values():
    if result.get("judge_validation"):
      return ladder.attack_success_kappas(result["judge_validation"])
  return {}


def ladder_table(results: Mapping[str, Mapping[str, Any]], models: Mapping[str, Mapping[str, Any]],
                 rungs: Sequence[str], seeds: Sequence[int], decodings: Sequence[str],
                 kappas: Mapping[str, float] | None = None,
                 model_reply_kappas: Mapping[str, float] | None = None, plain: str = "beam") -> dict[str, Any]:
  """Every metric per stage, system ("<rung>/<decoding>") and seed, with between-seed statistics
  and the claims decided from them (`safejax.evaluation.ladder`, `safejax.evaluation.claims`).

  The primary metric (the ASR) is the first judge whose kappa against labelled replies is at
  least `ladder.MIN_JUDGE_KAPPA` (`kappas`; on the world, compliance: the paper's ASR); the
  others sit beside it, and a judge below that kappa or never validated is labelled unvalidated
  and is never the ASR. With no validated judge no claim on the ASR is decided. Seeds are never
  pooled.
  """
  judge_names = list(next(iter(results.values()))["config"]["judges"])
  standing = ladder.judge_standing(judge_names, kappas or {}, model_reply_kappas=model_reply_kappas)
  records = ladder.records_from_results(results, models, judges=judge_names)
  nested = ladder.nest(records)
  stages = [st for st in STAGES if any(st in by_stage for by_stage in nested.values())]
  decodings = list(decodings)
  systems = [f"{rung}/{decoding}" for rung in rungs for decoding in decodings]
  ordered = standing["validated"] + list(standing["unvalidated"])
  tables = {metric: {st: ladder.seed_rows(nested, metric, st, systems) for st in stages if st in nested.get(metric, {})}
            for metric in [*ordered, *TABLE_METRICS] if metric in nested}
  primary = standing["primary"]
  if primary is not None:
    settings = claims_lib.ClaimSettings(asr_metric=primary, headline_stage=stages[-1],
                                        earlier_stages=tuple(reversed(stages[:-1])), plain=plain)
    decided = claims_lib.evaluate_claims(nested, settings)
    claims, claims_markdown = [c.to_dict() for c in decided], claims_lib.claims_markdown(decided)
    # The same rules at each earlier stage, beside the headline: an effect at the base model that
    # post-training removes (or a floor every rung reaches) shows here and not in the headline.
    for i, stage in enumerate(stages[:-1]):
      earlier = claims_lib.evaluate_claims(nested, dataclasses.replace(
          settings, headline_stage=stage, earlier_stages=tuple(reversed(stages[:i]))))
      claims_markdown += f"\n\nThe same claims at `{stage}` (not the paper's headline):\n\n"
      claims_markdown += claims_lib.claims_markdown(earlier)
  else:
    claims, claims_markdown = [], ("No ASR judge is validated (kappa >= "
                                   f"{ladder.MIN_JUDGE_KAPPA} against labelled replies): no claim is decided.")
  return {"primary": primary, "judges": judge_names, "judge_standing": standing, "kappas": kappas or {},
          "model_reply_kappas": model_reply_kappas or {},
          "stages": stages, "systems": systems, "decodings": decodings, "rungs": list(rungs),
          "seeds": list(seeds), "values": nested, "tables": tables, "claims": claims,
          "claims_markdown": claims_markdown}


def write_ladder(out: Path, table: dict) -> list[str]:
  """ladder.json, ladder.md (every table and the claims), claims.md and ladder.png (the primary
  metric per stage with between-seed error bars)."""
  (out / "ladder.json").write_text(json.dumps(table, indent=2))
  primary, unvalidated = table["primary"], table["judge_standing"]["unvalidated"]
  kappas = ", ".join(f"{judge} {kappa:.2f}" for judge, kappa in table["kappas"].items())
  on_models = ", ".join(f"{judge} {kappa:.2f}" for judge, kappa in table.get("model_reply_kappas", {}).items())
  lines = [f"# The ladder (seeds {table['seeds']})", "",
           (f"The ASR is `{primary}`" + (": compliance with a harmful request, the paper's measure" if primary ==
                                         "compliance" else "") if primary else "No ASR judge is validated")
           + f". Judges' kappa against labelled replies: {kappas or 'none measured'}"
           + (f"; against hand labels of replies the models wrote (held-out half): {on_models}" if on_models else "")
           + "."
           + "".join(f" `{judge}` is unvalidated ({why}): never the ASR." for judge, why in unvalidated.items()), ""]
  lines += ["## Summary", "",
            "Each cell: mean [95 % t interval between seeds, clipped to [0, 100] for shares] (per-seed values); "
            "percent but for perplexities.", ""]
  for metric in table["tables"]:
    label = f"{metric} (UNVALIDATED: {unvalidated[metric]})" if metric in unvalidated else metric
    lines += [f"### {label}", "", ladder.stages_markdown(table["values"], metric, table["stages"], table["systems"]), ""]
  lines += ["## Claims", "", table["claims_markdown"], "", "## Per stage, with paired differences to raw/beam", ""]
  for metric, by_stage in table["tables"].items():
    title = f"{metric} (UNVALIDATED: {unvalidated[metric]})" if metric in unvalidated else None
    for stage, rows in by_stage.items():
      lines += [ladder.rows_markdown(rows, metric, stage, title=title), ""]
  (out / "ladder.md").write_text("\n".join(lines))
  (out / "claims.md").write_text(table["claims_markdown"] + "\n")
  written = [str(out / n) for n in ("ladder.json", "ladder.md", "claims.md")]
  if primary is not None:
    ladder.plot_ladder(table["values"], primary, table["stages"], table["rungs"], table["decodings"],
                       out / "ladder.png", title=f"{primary} (%): mean of seeds {table['seeds']}, 95 % t interval "
                                                 "between seeds clipped to [0, 100], dots = seeds")
    written.append(str(out / "ladder.png"))
  return written
