"""What the offline template backend keeps of real unsafe text: named entities and numbers.

  python benchmarks/template_content.py [--data_dir ../shared/data] [--split test]

Rephrases every unsafe (score >= 1) document of a split of the labelled real data
(`safejax.safety.labelled`) with `TemplateBackend()` (its default lexical sentence rater) and
prints, overall and per source, how many of the documents' named entities and numbers survive
(`backends.template.content_survival`), and the rephrasings' near-duplicate share (word 5-gram
Jaccard > 0.8, `near_duplicate_share`). A measurement, not a speed benchmark.
"""

from __future__ import annotations

import argparse
import collections


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data_dir", default="../shared/data")
  parser.add_argument("--split", default="test")
  args = parser.parse_args()

  from safejax.backends import TemplateBackend
  from safejax.backends import template as templates
  from safejax.data import generators
  from safejax.safety import labelled

  data = labelled.build_labelled(args.data_dir)
  docs = [{"id": f"{args.split}-{i}", "text": e.text, "score": e.score, "source": e.source, "meta": {}}
          for i, e in enumerate(data.splits[args.split]) if e.score >= 1]
  rephrased, dead = generators.rephrase(docs, TemplateBackend(), seed=0)
  totals: collections.Counter = collections.Counter()
  by_source: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for doc, out in zip(docs, rephrased):
    survival = templates.content_survival(doc["text"], out["text"])
    totals.update(survival)
    by_source[doc["source"]].update(survival)
  print(f"{len(docs)} unsafe {args.split} documents, {len(rephrased)} rephrased, {len(dead)} dead letters\n")
  print("| source | entities kept | numbers kept |\n|---|---|---|")
  for name, t in [("all", totals), *sorted(by_source.items())]:
    share = lambda kept, n: f"{t[kept]} / {t[n]} ({t[kept] / t[n]:.0%})" if t[n] else "-"  # noqa: E731
    print(f"| {name} | {share('entities_kept', 'entities')} | {share('numbers_kept', 'numbers')} |")
  print(f"\nnear-duplicate share of the rephrasings: {templates.near_duplicate_share([r['text'] for r in rephrased]):.3f}")


if __name__ == "__main__":
  main()
