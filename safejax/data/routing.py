"""Routing: which streams a scored document feeds.

Every score 0..5 has exactly one primary route:

  keep      the document goes to the `keep` stream as is            (default: score 0)
  rephrase  it is rewritten into the `rephrase` stream              (default: scores 1-3)
  refuse    it becomes a `refuseweb` dialogue and, from that, a     (default: scores 4-5)
            `moral_education` article
  tag       only its tagged copy is kept                            (default: none)

and, independently, documents whose score is in `tag_copy` also feed a tagged raw copy to the
`tagged` stream (default: scores 3-5, the rubric's unsafe range; the paper's "raw unsafe text may
also be kept, tagged"). The manifest counts each document once, by its primary route; tagged
copies are counted as stream records (see `manifest`).
"""

from __future__ import annotations

import dataclasses

import gin

KEEP, REPHRASE, REFUSE, TAG = "keep", "rephrase", "refuse", "tag"
ROUTES: tuple[str, ...] = (KEEP, REPHRASE, REFUSE, TAG)
SCORES = tuple(range(6))


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RoutingTable:
  """Scores per primary route (disjoint, together 0..5) and the scores that also get a tagged copy."""

  keep: tuple[int, ...] = (0,)
  rephrase: tuple[int, ...] = (1, 2, 3)
  refuse: tuple[int, ...] = (4, 5)
  tag: tuple[int, ...] = ()
  tag_copy: tuple[int, ...] = (3, 4, 5)

  def __post_init__(self):
    for name in (*ROUTES, "tag_copy"):
      object.__setattr__(self, name, tuple(sorted(int(s) for s in getattr(self, name))))
    owners: dict[int, list[str]] = {s: [] for s in SCORES}
    for route in ROUTES:
      for s in getattr(self, route):
        if s not in owners:
          raise ValueError(f"routing: {route} lists score {s}, outside 0..5")
        owners[s].append(route)
    bad = {s: r for s, r in owners.items() if len(r) != 1}
    if bad:
      raise ValueError(f"routing: every score 0..5 needs exactly one primary route; got {bad}")
    if 0 in self.tag_copy or any(s not in SCORES for s in self.tag_copy):
      raise ValueError(f"routing: tag_copy scores must be in 1..5 (score 0 is safe), got {self.tag_copy}")

  def primary(self, score: int) -> str:
    for route in ROUTES:
      if score in getattr(self, route):
        return route
    raise ValueError(f"score {score!r} is not in 0..5")

  def as_dict(self) -> dict[str, list[int]]:
    return {name: list(getattr(self, name)) for name in (*ROUTES, "tag_copy")}


def route(record: dict, table: RoutingTable) -> list[tuple[str, dict]]:
  """The (route, record) pairs a scored document feeds; the first pair is its primary route.

  Each returned record is the input plus `route`, the primary route. A tagged copy is a second
  pair ("tag", record) unless the primary route is already "tag".
  """
  primary = table.primary(record["score"])
  routed = {**record, "route": primary}
  pairs = [(primary, routed)]
  if primary != TAG and record["score"] in table.tag_copy:
    pairs.append((TAG, routed))
  return pairs
