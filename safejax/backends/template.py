"""`TemplateBackend` and its text: safe, fluent, non-operational writing that keeps a document's topic.

The offline stand-in for an LLM in the demo and the tests. It never copies a word of the document
it replaces except a title that carries no harm term: the topic comes from that title and from the
document's harm categories (the rubric's indicative terms, `detect_categories`), each of which has
a gentle theme, the principle at stake, why a request for it is declined and a constructive
alternative. Sentences are drawn from pools per style and slot with the request's seed, so the
same request always gives the same text and different documents read differently.

Nothing here describes how to do anything harmful, and the pools avoid the rubric's indicative
terms altogether (a test checks it), so template text adds no harmful-term hits to the report card.

Each task function maps (request fields, numpy Generator) -> text:
  rephrase         fields: style, title, categories
  refuseweb        fields: title, categories; a "User: ... / Assistant: ..." dialogue
  moral_education  fields: title, categories; a markdown article
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import numpy as np

from safejax.backends.base import Generation, GenerationRequest
from safejax.safety.rubric import category_term_hits

TEMPLATE_VERSION = "safejax-templates-1"

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

# Who talks in the dialogue styles: (the one who opens and reacts, the one who explains).
_SPEAKERS: dict[str, Sequence[tuple[str, str]]] = {
    "podcast": (("Maya", "Leo"), ("Priya", "Sam"), ("Jordan", "Ines"), ("Kofi", "Hana")),
    "parent_child": (("Ella", "Mom"), ("Noah", "Dad"), ("Ravi", "Grandma"), ("Lucia", "Papa")),
    "friends_conversation": (("Aisha", "Tom"), ("Ben", "Zoe"), ("Carmen", "Yuki"), ("Dev", "Olivia")),
    "kids_video": (("Narrator", "Pip the Owl"), ("Narrator", "Robo"), ("Narrator", "Luna the Fox")),
}
_REACTIONS = (
    "That's a really good point.", "Why does that matter so much?", "Oh, I never thought about it that way.",
    "So what can we do about it?", "That makes sense to me.", "Can you tell me more?",
)


@dataclasses.dataclass(frozen=True)
class _Profile:
  theme: str        # what the document is about, said gently
  request: str      # what a user might ask for, described without any detail
  principle: str    # the ethical principle at stake (an article title)
  why: str          # why the request is declined
  offer: str        # a constructive alternative
  lesson: str       # why it matters, in the third person (moral education)
  practice: str     # what a person can do instead, in the third person


_PROFILES: dict[str, _Profile] = {
    "harassment_discrimination": _Profile(
        "how people treat one another", "a message meant to humiliate a particular person",
        "Treating Every Person with Dignity",
        "Words written to wound someone can stay with them for years, and singling people out for "
        "who they are makes everyone around them feel less welcome.",
        "I'd be glad to help you say what you disagree with clearly and respectfully instead.",
        "Words written to wound someone can stay with them for years, and singling people out for who "
        "they are makes a whole community feel less welcome.",
        "Disagreement can be said clearly and respectfully, and that tends to persuade far more people."),
    "hate": _Profile(
        "fairness and respect between different groups of people",
        "a post that paints a whole group of people as lesser",
        "Equal Dignity for Every Group",
        "Describing a whole group as lesser has been used again and again to justify treating real "
        "people unfairly, and it spreads quickly once it is written down.",
        "I could share how communities have stood up to prejudice, or help you learn about the group "
        "from their own voices.",
        "Describing a whole group as lesser has been used again and again to justify treating real "
        "people unfairly.",
        "Learning about a group from its own members, and standing up when others are treated "
        "unfairly, builds understanding that lasts."),
    "violence": _Profile(
        "conflict and keeping people safe", "a plan to physically hurt someone",
        "Protecting People from Harm",
        "Helping anyone plan to hurt another person could put a real life at risk, and no reason "
        "makes that acceptable.",
        "If there is a conflict going on, I can suggest ways to calm things down or people who can "
        "step in and help.",
        "Plans to hurt another person put real lives at risk, and no grievance makes that acceptable.",
        "Calming a conflict, walking away, or asking a trusted person to step in are choices that keep "
        "everyone safer."),
    "self_harm": _Profile(
        "difficult feelings and finding support", "specific details about hurting myself",
        "Caring for Ourselves and Each Other",
        "Details like that can put someone who is struggling in real danger, and you deserve support "
        "rather than that.",
        "If you are going through something hard, talking to someone you trust or a local support "
        "line can help, and I'm glad to listen or help you find one.",
        "People who are struggling deserve care and support, and the details they sometimes ask for "
        "can put them in real danger.",
        "Reaching out to someone trusted, or to a local support line, is a sign of strength, and "
        "listening without judgement is one of the kindest things a friend can do."),
    "sexual": _Profile(
        "relationships, boundaries and respect", "explicit adult material",
        "Respect, Consent and Healthy Boundaries",
        "That kind of explicit material is not something I write, and it can be harmful, especially "
        "when young people come across it.",
        "I can talk about healthy relationships and boundaries in an age-appropriate way.",
        "Explicit material can be harmful, especially when young people come across it, and respect "
        "for others includes respecting boundaries.",
        "Age-appropriate conversations about healthy relationships, consent and boundaries help people "
        "of every age."),
    "weapons": _Profile(
        "public safety and the rules that protect people", "a way to get hold of something dangerous",
        "Shared Responsibility for Public Safety",
        "Helping someone obtain or use something dangerous could cost lives, including the lives of "
        "people who had nothing to do with it.",
        "I can explain how safety laws work and how communities prevent accidents.",
        "Putting dangerous things into the wrong hands can cost lives, including the lives of "
        "bystanders.",
        "Safety rules exist because communities learned, often painfully, how accidents and tragedies "
        "can be prevented."),
    "illegal_activity": _Profile(
        "laws and why communities have them", "a way to get around the law without being caught",
        "Respect for the Law and the People It Protects",
        "Helping with that could lead to real people being hurt and to serious consequences for "
        "everyone involved.",
        "I can explain how the law treats this, or point you to legal options and support services.",
        "Helping someone get around the law can lead to real people being hurt and to serious "
        "consequences for everyone involved.",
        "Understanding how the law works, and knowing where to find legal help and support services, "
        "opens better doors."),
    "malware_hacking": _Profile(
        "keeping computers and accounts secure", "a way into someone else's computer account",
        "Honesty and Care in the Digital World",
        "Getting into systems without permission harms the people who depend on them, often people "
        "who never see it coming.",
        "I'd be glad to show you how to protect your own accounts, or how people build careers in "
        "ethical security work.",
        "Getting into systems without permission harms the people who depend on them, often people who "
        "never see it coming.",
        "Protecting one's own accounts, and the many careers in ethical security work, show the same "
        "skills put to good use."),
    "fraud_deception": _Profile(
        "honesty and spotting tricks", "a trick to get people to hand over their money",
        "Honesty and Trust",
        "Tricking people out of their savings causes real hardship and wears away the trust that "
        "communities run on.",
        "I can help you recognise common tricks so that you and your family can avoid them.",
        "Tricking people out of their savings causes real hardship and wears away the trust that "
        "communities run on.",
        "Learning to recognise common tricks helps families and neighbours look out for one another."),
    "disinformation": _Profile(
        "checking facts and finding trustworthy sources", "a false story dressed up as news",
        "Truthfulness and Careful Thinking",
        "Spreading claims that are not true can lead people into decisions that hurt them and the "
        "people they care about.",
        "I can help you check the claim against reliable sources and explain what the evidence shows.",
        "Claims that are not true can lead people into decisions that hurt them and the people they "
        "care about.",
        "Checking a claim against reliable sources, and being willing to change one's mind, keeps a "
        "community's conversations healthy."),
    "privacy_personal_data": _Profile(
        "protecting personal information", "someone's personal details, shared without their permission",
        "Respect for Privacy",
        "Sharing a person's details without their permission can expose them to harassment or worse.",
        "I can explain how to keep your own details safe online.",
        "Sharing a person's details without permission can expose them to harassment or worse.",
        "Everyone can keep their own details safe online and treat other people's details with the "
        "same care."),
    "economic_harm": _Profile(
        "money, fairness and protecting people's savings", "a scheme that takes money from ordinary people",
        "Fairness and Responsibility with Money",
        "Schemes like that tend to leave ordinary people with losses they cannot afford.",
        "I can share the basics of budgeting and how to spot offers that are too good to be true.",
        "Schemes that promise easy money tend to leave ordinary people with losses they cannot afford.",
        "Simple budgeting, patience, and a healthy suspicion of offers that seem too good to be true "
        "protect people's savings."),
}
_DEFAULT_PROFILE = _Profile(
    "a sensitive subject", "the harmful parts of what I read", "Kindness and Responsibility",
    "It could cause real harm to people, and that matters more than any reason for asking.",
    "I'm happy to help with a safer version of what you are working on.",
    "Some requests could cause real harm to people, and that matters more than any reason for asking.",
    "There is almost always a safer way to reach the same goal, and looking for it is a habit worth "
    "building.")


def detect_categories(text: str) -> list[str]:
  """The harm categories whose indicative terms occur in `text`, most hits first."""
  hits = category_term_hits(text)
  return [name for name, n in sorted(hits.items(), key=lambda kv: (-kv[1], kv[0])) if n > 0]


def safe_title(title: Any) -> str | None:
  """The title, if it is a short string without any harm term; else None."""
  if not isinstance(title, str):
    return None
  title = " ".join(title.split())
  if not 0 < len(title) <= 80 or any(category_term_hits(title).values()):
    return None
  return title


def _profile(fields: Mapping[str, Any]) -> _Profile:
  for category in fields.get("categories") or ():
    if category in _PROFILES:
      return _PROFILES[category]
  return _DEFAULT_PROFILE


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
  return options[int(rng.integers(len(options)))]


def _sample(rng: np.random.Generator, options: Sequence[str], k: int) -> list[str]:
  return [options[i] for i in rng.choice(len(options), size=min(k, len(options)), replace=False)]


def _fill(template: str, slots: Mapping[str, str]) -> str:
  text = template.format(**slots)
  return text[0].upper() + text[1:]


# ---------------------------------------------------------------------------------------------
# Rephrasing: the topic retold in one of seven styles, every sentence safe on its own.

_BODY = (
    "{subject} is something many people have questions about, and it is worth understanding carefully.",
    "Parts of this story touch on {theme}, so we will talk about why those parts matter instead of "
    "dwelling on the details.",
    "The most important idea is simple: every person deserves to feel safe and respected.",
    "Good sources explain what happened and why it matters, without encouraging anyone to repeat "
    "the hurtful parts.",
    "A helpful question to ask is who could be affected, and how we can look out for them.",
    "If something you read or hear about {theme} worries you, talking it over with a trusted adult "
    "or friend is always a good step.",
    "People who study {subject} often say that understanding the past helps us make kinder choices "
    "today.",
    "It is normal to have strong feelings about {theme}, and it is okay to take a break and come back "
    "later.",
    "Many communities have found ways to work through problems like these by listening to one another.",
    "Learning about {subject} is also a chance to practise asking careful questions and checking facts.",
)

_STYLE_TEXT: dict[str, dict[str, Sequence[str]]] = {
    "podcast": {
        "open": ("Welcome back to the show! Today we are talking about {subject}.",
                 "Hi everyone, and thanks for listening. This week's topic is {subject}.",
                 "Hello, curious minds! Grab a snack, because today we are exploring {subject}."),
        "close": ((0, "That's all for today. Stay curious, be kind, and we'll see you next week!"),
                  (1, "Thanks for listening, everyone. Remember: asking questions is how we grow."),
                  (0, "And that's a wrap! Go share something kind you learned today.")),
    },
    "textbook": {
        "open": ("Chapter overview: {subject}. In this chapter we look at the main ideas and why they matter.",
                 "Section 1: Understanding {subject}. This section introduces the key facts and "
                 "questions.",
                 "Learning goals: by the end of this chapter you will be able to explain {subject} in "
                 "your own words."),
        "close": ("Review: the key takeaway is that knowledge is most useful when it helps us care "
                  "for one another.",
                  "Summary: we explored {subject}, why parts of it are sensitive, and how to talk about "
                  "it responsibly.",
                  "Check your understanding: how would you explain {subject} to a friend in a kind and "
                  "accurate way?"),
    },
    "teacher_script": {
        "open": ("Good morning, class. Please settle in, because today we are going to talk about {subject}.",
                 "All right, everyone, eyes up here. Our lesson today is about {subject}.",
                 "Let's begin. I want to share something important with you today: {subject}."),
        "close": ("Before we finish, take a moment to write down one question you still have. Thank "
                  "you all for listening so carefully.",
                  "That's where we'll stop for today. Be gentle with each other, and I'll see you "
                  "tomorrow.",
                  "Great work today, everyone. Remember that you can always come and talk to me."),
    },
    "ted_talk": {
        "open": ("When I first started thinking about {subject}, I realised how much I didn't know.",
                 "I want to begin with a question: what does {subject} teach us about one another?",
                 "A few years ago, a simple conversation changed the way I see {subject}."),
        "close": ("So here is my invitation to you: let's choose curiosity and kindness. Thank you.",
                  "If we can do that, I believe we will build something better together. Thank you.",
                  "The future is written by people who care. I hope that includes every one of you. "
                  "Thank you."),
    },
    "parent_child": {
        "open": ("I heard something today about {subject}, and I'm not sure I understand it.",
                 "Can I ask you something? What does {subject} actually mean?",
                 "We talked about {subject} at school today, and I have a lot of questions."),
        "close": ((0, "Thanks for explaining it to me. I feel a lot better now."),
                  (1, "You can always come to me with questions like this, any time. I love you."),
                  (1, "I'm really glad you asked. Let's keep talking whenever you want.")),
    },
    "friends_conversation": {
        "open": ("Hey, have you ever thought much about {subject}?",
                 "So I was reading about {subject} last night, and I wanted to hear what you think.",
                 "Can we talk about something? {subject} has been on my mind."),
        "close": ((0, "Thanks for talking this through with me. It really helped."),
                  (1, "I'm glad we can talk about stuff like this. Want to grab lunch tomorrow?"),
                  (0, "Yeah, that makes sense. Let's both keep an eye out for each other.")),
    },
    "kids_video": {
        "open": ("Hello, friends! Welcome to our show. Today we are going on a learning adventure about {subject}!",
                 "Hi there, explorers! Are you ready? Today's big question is about {subject}.",
                 "Welcome, everyone! Let's put on our thinking caps and learn about {subject}."),
        "close": ((1, "Remember, friends: be curious, be kind, and always ask a grown-up when "
                      "something feels confusing. Bye for now!"),
                  (0, "You did a great job today! See you next time on our learning adventure!"),
                  (0, "That's our show! Keep asking questions and keep being a good friend. Bye-bye!")),
    },
}

def rephrase(fields: Mapping[str, Any], rng: np.random.Generator) -> str:
  """The document's topic retold in `fields["style"]`, safe sentence by sentence."""
  style = fields["style"]
  if style not in STYLES:
    raise ValueError(f"unknown rephrasing style {style!r}; styles: {sorted(STYLES)}")
  profile = _profile(fields)
  slots = {"subject": safe_title(fields.get("title")) or profile.theme, "theme": profile.theme}
  parts = _STYLE_TEXT[style]
  opening, body = _pick(rng, parts["open"]), _sample(rng, _BODY, 4)
  closer_index = int(rng.integers(len(parts["close"])))
  if style not in _SPEAKERS:
    paragraphs = [opening, *body, parts["close"][closer_index]]
    paragraphs = [_fill(p, slots) for p in paragraphs]
    if style == "textbook":
      paragraphs.insert(0, f"# {slots['subject'][0].upper()}{slots['subject'][1:]}")
    return "\n\n".join(paragraphs)
  speakers = _SPEAKERS[style][int(rng.integers(len(_SPEAKERS[style])))]
  lines = [(0, opening)]
  for i, sentence in enumerate(body):
    lines.append((1, sentence))
    if i < len(body) - 1 and rng.random() < 0.5:
      lines.append((0, _pick(rng, _REACTIONS)))
  lines.append(parts["close"][closer_index])
  return "\n\n".join(f"{speakers[who]}: {_fill(text, slots)}" for who, text in lines)


# ---------------------------------------------------------------------------------------------
# RefuseWeb: the user asks for the document's harmful elements; the assistant declines, says why,
# and offers something constructive.

_ASK = (
    "I read something about {about} and I want to go further. Can you help me with {request}?",
    "Can you put together {request} for me? It's related to something I saw about {about}.",
    "I need help with {request}. A post I found about {about} gave me the idea.",
    "I want {request}. I was just reading about {about}, so you can fill in the rest.",
)
_DECLINE = (
    "I can't help with that.",
    "I'm not going to help with this one.",
    "That's not something I'll help with.",
    "I won't do that, though I appreciate you asking me directly.",
)
_PUSH = (
    "Why not? It's only words.",
    "Come on, nobody is going to find out.",
    "It's just for a story I'm writing, so it doesn't matter, right?",
)
_HOLD = (
    "I understand why it might seem harmless, but my answer stays the same.",
    "Even for a story, I'd rather not write that part.",
    "I hear you, and I still won't help with that.",
)
_CHECK = ("Would that be useful?", "Does that sound helpful?", "Would you like to start there?")


def refuseweb(fields: Mapping[str, Any], rng: np.random.Generator) -> str:
  """A User/Assistant refusal dialogue in the "User: ... / Assistant: ..." layout."""
  profile = _profile(fields)
  slots = {"about": safe_title(fields.get("title")) or profile.theme, "request": profile.request}
  turns = [
      ("User", _fill(_pick(rng, _ASK), slots)),
      ("Assistant", f"{_pick(rng, _DECLINE)} {profile.why} {profile.offer} {_pick(rng, _CHECK)}"),
  ]
  if rng.random() < 0.5:
    turns.append(("User", _pick(rng, _PUSH)))
    turns.append(("Assistant", f"{_pick(rng, _HOLD)} {profile.why} {profile.offer}"))
  return "\n\n".join(f"{role}: {text}" for role, text in turns)


# ---------------------------------------------------------------------------------------------
# Moral education: the principle behind a refusal, as a third-person web article.

_INTRO = (
    "Every day, people face moments where what they are asked to do conflicts with what is right. "
    "This article looks at one such principle: {principle_lower}.",
    "Some requests sound simple but touch on something deeper. Conversations about {theme} are a "
    "good example, and they show why {principle_lower} matters.",
    "Thoughtful people, and thoughtful tools, sometimes say no. Understanding why begins with "
    "{principle_lower}.",
)
_HEADINGS = (
    ("Why it matters", "What is at stake", "The heart of the matter"),
    ("A closer look", "How it plays out", "Seeing both sides"),
    ("What we can do", "Choosing a better path", "Moving forward"),
)
_MATTERS = (
    "{lesson} That is why a careful response turns such a request down, even when it is asked politely.",
    "The choice is rarely about rules for their own sake. {lesson}",
    "{lesson} Saying no in a moment like that is a way of caring for people who are not in the room.",
)
_LOOK = (
    "A good refusal is calm and clear. It does not lecture or shame the person asking; it explains "
    "the concern and keeps the door open to a better conversation.",
    "Often the person asking is curious, frustrated or going through something difficult. Treating "
    "them with respect while holding a firm line serves everyone better than either giving in or "
    "shutting them out.",
    "Declining is only half of the answer. The other half is turning the conversation toward "
    "something that genuinely helps.",
)
_FORWARD = (
    "A constructive alternative makes the difference: {practice}",
    "The most helpful path usually combines honesty with an offer of real help: {practice}",
    "Practising this principle in daily life means looking for the helpful option. {practice}",
)
_END = (
    "In the end, {principle_lower} is something each of us can practise, one conversation at a time.",
    "Small choices like these add up to communities where people can trust one another.",
    "When we hold on to {principle_lower}, we make the world a little safer and kinder for everyone.",
)


def moral_education(fields: Mapping[str, Any], rng: np.random.Generator) -> str:
  """A markdown article on the principle at stake in a refusal, without the exchange itself."""
  profile = _profile(fields)
  slots = {"principle_lower": profile.principle.lower(), "theme": profile.theme,
           "lesson": profile.lesson, "practice": profile.practice}
  headings = [_pick(rng, options) for options in _HEADINGS]
  paragraphs = [_pick(rng, _MATTERS), _pick(rng, _LOOK), _pick(rng, _FORWARD) + " " + _pick(rng, _END)]
  sections = [f"# {profile.principle}", _fill(_pick(rng, _INTRO), slots)]
  for heading, paragraph in zip(headings, paragraphs):
    sections += [f"## {heading}", _fill(paragraph, slots)]
  return "\n\n".join(sections)


TASKS: dict[str, Callable[[Mapping[str, Any], np.random.Generator], str]] = {
    "rephrase": rephrase, "refuseweb": refuseweb, "moral_education": moral_education,
}


@gin.configurable
class TemplateBackend:
  """Offline, deterministic text from hand-written templates (this module).

  Writes the rephrase / refuseweb / moral_education tasks from a request's `fields`; the same
  fields and seed always give the same text. It cannot annotate or judge.
  """

  name = "template"

  def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
    out = []
    for request in requests:
      if request.task not in TASKS:
        raise ValueError(f"the template backend writes {sorted(TASKS)}, not {request.task!r}; "
                         "use an LLM backend for it")
      rng = np.random.default_rng(request.seed)
      text = TASKS[request.task](request.fields, rng)
      out.append(Generation(text, {"backend": self.name, "model": TEMPLATE_VERSION,
                                   "template": True, "cached": False}))
    return out
