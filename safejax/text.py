"""Plain text, shared by the generators that write it and the measures that check it.

  STYLES                 the paper's seven rephrasing styles (name -> description, also in LLM prompts)
  split_sentences        a document's sentences (regular expressions; enough to rate them one by one)
  sentence_spans         the same cut as character spans covering the text (to tag unsafe sentences)
  strip_speaker          a sentence without its speaker label ("Question:", "A:", "river_fox asked:")
  document_topic         the most frequent proper-noun phrase ("the Drovane bomb")
  own_request            a document's own question among its unsafe sentences
  near_duplicate_share   the share of texts with a word 5-gram Jaccard near duplicate
  named_entities         proper-noun words, a proxy where no NER model is at hand
  content_survival       named entities and numbers of an original that a rewrite keeps

The offline template backend, the real generators, the demo and the benchmarks all read these
(none of them is specific to the template backend's prose).
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence

# The paper's seven rephrasing styles: name -> description (also used in LLM prompts).
STYLES: dict[str, str] = {
    "podcast": "an episode of a podcast for middle-school students, two hosts talking",
    "textbook": "a chapter of a school textbook",
    "teacher_script": "a script a teacher reads aloud to the class",
    "ted_talk": "a TED talk",
    "parent_child": "a conversation between a parent and a child",
    "friends_conversation": "a conversation between two friends",
    "kids_video": "the script of a video for children, with a narrator",
}


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_SPEAKER = re.compile(r"^\s*(?:[A-Za-z0-9_]{1,20}(?: asked)?|Q|A):\s+")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]*")
_STOP = frozenset("""a an the and or but if of to in on at by for with from as is are was were be been it its this
that these those i you he she we they my your our their me him her us them not no so do does did just than then
there here what who how why when where which""".split())


_ABBREVIATIONS = re.compile(r"(?:^|\s)(?:Dr|Mr|Mrs|Ms|Prof|St|Mt|No|vs|etc|e\.g|i\.e|[A-Z])\.$")


def split_sentences(text: str) -> list[str]:
  """A document's sentences: paragraphs and lines first, then sentence ends (. ! ? before a capital
  or a digit), not after common abbreviations ("Dr.", "e.g.") or initials. A regular-expression
  splitter, good enough for rating sentences one by one."""
  sentences = []
  for line in text.splitlines():
    merged: list[str] = []
    for piece in _SENTENCE_END.split(line.strip()):
      piece = piece.strip()
      if not piece:
        continue
      if merged and _ABBREVIATIONS.search(merged[-1]):
        merged[-1] = f"{merged[-1]} {piece}"
      else:
        merged.append(piece)
    sentences += merged
  return sentences


def sentence_spans(text: str) -> list[tuple[int, int]]:
  """Contiguous (start, end) spans covering `text`, one a sentence: cut after each line break and
  at each sentence end `split_sentences` uses (the whitespace after a sentence stays with it), so
  their concatenation is exactly `text`. What the pipeline scores to tag the unsafe sentences only."""
  cuts = {m.end() for m in re.finditer(r"\n", text)} | {m.end() for m in _SENTENCE_END.finditer(text)}
  cuts = sorted(c for c in cuts if 0 < c < len(text)) + [len(text)]
  spans, start = [], 0
  for cut in cuts:
    if cut > start:
      spans.append((start, cut))
      start = cut
  return spans or [(0, len(text))]


def strip_speaker(sentence: str) -> str:
  """Drops a leading speaker label ("Question:", "A:", "river_fox asked:")."""
  return _SPEAKER.sub("", sentence, count=1)


def document_topic(sentences: Sequence[str], min_count: int = 2) -> str | None:
  """The most frequent proper-noun phrase of `sentences` ("the Drovane bomb"), or None.

  A proper noun is a capitalised word that does not open its sentence (after any speaker label).
  The phrase grows to the right over words that follow it at least 80 % of the time (at most two),
  and takes "the" in front when most occurrences have it.
  """
  words = [_TOKEN.findall(strip_speaker(s)) for s in sentences]
  counts = collections.Counter(w for ws in words for w in ws[1:] if w[:1].isupper() and w.lower() not in _STOP
                               and not w.isupper())
  if not counts:
    return None
  head, n = counts.most_common(1)[0]
  if n < min_count:
    return None
  phrase = [head]
  for _ in range(2):
    following = collections.Counter()
    total = 0
    for ws in words:
      for i in range(len(ws) - len(phrase)):
        if ws[i:i + len(phrase)] == phrase:
          total += 1
          following[ws[i + len(phrase)]] += 1
    if not following:
      break
    word, k = following.most_common(1)[0]
    if k < 0.8 * total or word.lower() in _STOP:
      break
    phrase.append(word)
  before = sum(1 for ws in words for i in range(1, len(ws)) if ws[i] == head and ws[i - 1].lower() == "the")
  return ("the " if before >= 0.5 * n else "") + " ".join(phrase)


def own_request(sentences: Sequence[str], scores: Sequence[int]) -> str | None:
  """The document's own question among its unsafe sentences (speaker label dropped), or None."""
  for sentence, score in zip(sentences, scores):
    question = strip_speaker(sentence)
    if score > 0 and question.endswith("?") and 3 <= len(question.split()) <= 30:
      return question
  return None


def word_ngrams(text: str, n: int = 5) -> set[tuple[str, ...]]:
  words = [w.lower() for w in _TOKEN.findall(text)]
  return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def near_duplicate_share(texts: Sequence[str], n: int = 5, threshold: float = 0.8) -> float:
  """The share of texts with another text of the list whose word n-gram Jaccard exceeds `threshold`.

  Exact Jaccard, with an inverted index so that only texts sharing n-grams are compared.
  """
  if not texts:
    return 0.0
  grams = [word_ngrams(t, n) for t in texts]
  index: dict[tuple[str, ...], list[int]] = collections.defaultdict(list)
  for i, g in enumerate(grams):
    for gram in g:
      index[gram].append(i)
  duplicated = set()
  for i, g in enumerate(grams):
    if i in duplicated or not g:
      continue
    shared = collections.Counter(j for gram in g for j in index[gram] if j != i)
    for j, k in shared.items():
      if k / (len(g) + len(grams[j]) - k) > threshold:
        duplicated.update((i, j))
        break
  return len(duplicated) / len(texts)


_NUMBER = re.compile(r"\b\d[\d,.]*\b")


def named_entities(text: str) -> set[str]:
  """Proper-noun words (capitalised, not opening a sentence, not a stop word): a proxy for named
  entities where no NER model is at hand."""
  out = set()
  for sentence in split_sentences(text):
    ws = _TOKEN.findall(strip_speaker(sentence))
    out.update(w for w in ws[1:] if w[:1].isupper() and w.lower() not in _STOP)
  return out


def content_survival(original: str, rewritten: str) -> dict[str, int]:
  """How many of the original's named entities (`named_entities`) and numbers occur in the rewrite."""
  entities, numbers = named_entities(original), set(_NUMBER.findall(original))
  words = set(_TOKEN.findall(rewritten))
  return {"entities": len(entities), "entities_kept": sum(e in words for e in entities),
          "numbers": len(numbers), "numbers_kept": sum(x in rewritten for x in numbers)}
