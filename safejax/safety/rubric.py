"""The 0..5 safety rubric and the harm categories, as data.

The levels paraphrase section 1 of the Safety Pretraining paper (Maini et al. 2025) in our own
words. A document gets the highest level that applies anywhere in it; levels are never summed.

The harm categories carry short lists of indicative terms. They are deliberately generic words
that signal a topic (never instructions). They count harmful-term hits per million tokens in the
data report card (before and after the pipeline), name a document's categories for the generators
(`detect_categories`) and rate sentences where no scorer is configured (`lexical_scores`, the
template backend's fallback). They are not the safety classifier.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

NUM_LEVELS = 6
# A level >= 1 is "not child-safe"; UNSAFE_LEVEL is the unsafe cut: the level from which text is
# tagged, and the positives of the tag as a detector.
SAFE_LEVEL, UNSAFE_LEVEL = 0, 3


@dataclasses.dataclass(frozen=True)
class Level:
  score: int
  name: str
  description: str
  examples: tuple[str, ...]


LEVELS: tuple[Level, ...] = (
    Level(0, "safe", "Suitable for children: no profanity, adult themes or violence, and no "
          "reference to illegal acts.", ("encyclopedia article on a river", "recipe", "maths lesson")),
    Level(1, "mild", "Mild swearing or slang, alcohol mentioned without excess, light romance, "
          "passing mention of stressful subjects.", ("a blog post that says 'damn'", "a wine pairing")),
    Level(2, "low", "Small personal insults or sarcasm; casual financial, legal or medical advice "
          "without caveats; a brief, indirect nod to a controversial subject.",
          ("a sarcastic forum reply", "stock tips without a disclaimer")),
    Level(3, "moderate", "Stereotypes or insults about social groups without hostile intent; "
          "suggestive adult themes or non-graphic sexual content; moderate violence; a brief "
          "mention of weapons, self-harm or crime.", ("a crime novel excerpt", "a crude group joke")),
    Level(4, "high", "Strong profanity or slurs aimed at people; detailed harmful advice; "
          "extremist or conspiratorial material; detailed accounts of illegal activity; urging "
          "self-harm or violence.", ("an abusive tweet at a person", "a conspiracy manifesto")),
    Level(5, "severe", "Hate speech, violent threats, graphic illegal sexual content, instructions "
          "for causing harm, or disclosure of someone's personal data.",
          ("a threat to kill someone", "a post that doxxes a private person")),
)


@dataclasses.dataclass(frozen=True)
class HarmCategory:
  name: str
  description: str
  terms: tuple[str, ...]  # lower-case words or short phrases; matched on word boundaries


HARM_CATEGORIES: tuple[HarmCategory, ...] = (
    HarmCategory("harassment_discrimination", "Demeaning, bullying or excluding people, "
                 "individually or for who they are.",
                 ("idiot", "loser", "stupid", "moron", "worthless", "pathetic", "shut up",
                  "ugly", "freak", "you people")),
    HarmCategory("hate", "Hostility, dehumanisation or calls for exclusion aimed at protected "
                 "groups.", ("subhuman", "vermin", "inferior race", "go back to your country",
                             "hate them all", "white power", "ethnic cleansing", "degenerates")),
    HarmCategory("violence", "Threats, glorification or graphic depiction of physical harm.",
                 ("kill", "murder", "stab", "shoot", "beat up", "massacre", "torture", "bloodbath",
                  "slaughter", "assault")),
    HarmCategory("self_harm", "Content that depicts, encourages or romanticises hurting oneself.",
                 ("suicide", "kill myself", "self harm", "self-harm", "cutting myself", "overdose",
                  "want to die", "end my life")),
    HarmCategory("sexual", "Sexually explicit or suggestive content.",
                 ("porn", "nude", "naked", "sex", "sexy", "xxx", "horny", "erotic", "escort")),
    HarmCategory("weapons", "Weapons, explosives and their acquisition or use.",
                 ("gun", "rifle", "bomb", "explosive", "grenade", "ammunition", "firearm", "weapon")),
    HarmCategory("illegal_activity", "Crime in general: theft, drugs, trafficking, evading police.",
                 ("steal", "shoplift", "cocaine", "heroin", "meth", "smuggle", "trafficking",
                  "break into", "drug dealer", "launder")),
    HarmCategory("malware_hacking", "Breaking into computer systems or writing malicious software.",
                 ("malware", "ransomware", "hack into", "keylogger", "botnet", "phishing", "exploit",
                  "ddos", "password cracking")),
    HarmCategory("fraud_deception", "Scams, forgery and deceiving people for gain.",
                 ("scam", "fraud", "counterfeit", "forged", "fake id", "ponzi", "con artist",
                  "identity theft")),
    HarmCategory("disinformation", "Deliberately false or conspiratorial claims presented as fact.",
                 ("hoax", "conspiracy", "fake news", "plandemic", "false flag", "cover-up",
                  "flat earth", "chemtrails")),
    HarmCategory("privacy_personal_data", "Exposure of private people's personal information.",
                 ("home address", "phone number", "social security number", "doxx", "dox",
                  "credit card number", "leaked photos", "private information")),
    HarmCategory("economic_harm", "Gambling, predatory lending and schemes that cost people money.",
                 ("gambling", "payday loan", "pyramid scheme", "get rich quick", "insider trading",
                  "loan shark", "betting", "casino")),
)

CATEGORY_NAMES: tuple[str, ...] = tuple(c.name for c in HARM_CATEGORIES)


def _category_patterns() -> dict[str, re.Pattern]:
  """One alternation per category; phrases may be separated by any run of spaces."""
  patterns = {}
  for category in HARM_CATEGORIES:
    alternatives = sorted((r"\s+".join(map(re.escape, t.split())) for t in category.terms),
                          key=len, reverse=True)
    patterns[category.name] = re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.IGNORECASE)
  return patterns


_PATTERNS = _category_patterns()


def category_term_hits(text: str) -> dict[str, int]:
  """Counts indicative-term occurrences per harm category (case-insensitive, whole words).

  Returns {category name: count} with every category present. Overlapping terms of one category
  count once per position (the longest term wins); the same word may count for two categories.
  """
  return {name: len(pattern.findall(text)) for name, pattern in _PATTERNS.items()}


def level(score: int) -> Level:
  """The rubric level for an integer score; raises ValueError outside 0..5."""
  if not 0 <= int(score) < NUM_LEVELS:
    raise ValueError(f"safety score must be in 0..{NUM_LEVELS - 1}, got {score}")
  return LEVELS[int(score)]


def rubric_text() -> str:
  """The rubric as plain text, one level per line (for prompts and reports)."""
  return "\n".join(f"{lv.score}: {lv.description}" for lv in LEVELS)


def detect_categories(text: str) -> list[str]:
  """The harm categories whose indicative terms occur in `text`, most hits first."""
  hits = category_term_hits(text)
  return [name for name, n in sorted(hits.items(), key=lambda kv: (-kv[1], kv[0])) if n > 0]


def lexical_scores(sentences: Sequence[str]) -> list[int]:
  """A fallback sentence rater: UNSAFE_LEVEL (3) for a sentence with any of the rubric's indicative terms, else 0."""
  return [UNSAFE_LEVEL if any(category_term_hits(s).values()) else 0 for s in sentences]
