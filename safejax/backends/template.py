"""`TemplateBackend` and its text: safe, fluent, non-operational writing that keeps a document's content.

The offline stand-in for an LLM in the demo and the tests. It transforms the document it is given:

  rephrase         keeps the document's sentences rated 0 (safe on their own) and frames them in one
                   of the paper's seven styles; sentences rated above 0 are dropped and replaced by a
                   remark on why their subject is sensitive. A document with no safe sentence is
                   retold from its topic alone.
  refuseweb        a "User: ... / Assistant: ..." dialogue where the user asks the document's own
                   request (its question, where it has one) and the assistant declines, names the
                   document's topic, says why and offers a safe alternative.
  moral_education  a markdown article on the principle at stake, discussing that topic.

Which sentences are safe is decided by a sentence rater outside this module (the backend passes
`sentences` and `sentence_scores` in the fields: the routing scorer where one is configured, else
`lexical_scores`). The topic is the document's most frequent proper-noun phrase in its unsafe
sentences (`document_topic`); the harm categories come from the rubric's indicative terms
(`detect_categories`), each with a gentle theme, the principle at stake, why a request is declined
and a constructive alternative. Sentences are drawn from pools per style and slot with the request's
seed, so the same request always gives the same text.

The pools hold no instructions and none of the rubric's indicative terms (a test checks it); the
only document text in an output is a sentence rated 0, the document's own request (in a refusal)
and its topic's name.

Each task function maps (request fields, numpy Generator) -> text; fields:
  rephrase         style, title, categories, [text, sentences, sentence_scores]
  refuseweb        title, categories, [text, sentences, sentence_scores]
  moral_education  title, categories, [text (the dialogue), sentences, sentence_scores]

The sentence splitting, topic and request finding it uses are `safejax.text`'s, shared with the
real generators and the measures of what they write.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import numpy as np

from safejax.generation import Generation, GenerationRequest
from safejax.safety.rubric import category_term_hits, lexical_scores
from safejax.text import STYLES, document_topic, own_request, split_sentences, strip_speaker

TEMPLATE_VERSION = "safejax-templates-2"

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
  return text[:1].upper() + text[1:]


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

_SENSITIVE = (
    "The original also touched on {theme}; we leave those details out and talk about why they matter instead.",
    "Some parts of the original were about {theme}, and those parts are not repeated here, because they could "
    "upset or mislead someone.",
    "We skip the parts about {theme}. It is a subject where details can hurt people, so it deserves care.",
    "Part of the story was about {theme}. Instead of repeating it, it is worth asking who could be affected.",
)
_LINKS = ("Here is something worth knowing.", "Another thing the original tells us:", "There is more.",
          "Here is a detail I liked.", "And one more fact.", "This part is interesting too.")


def _kept(fields: Mapping[str, Any]) -> tuple[list[str], int]:
  """The document's sentences rated 0 (speaker labels dropped) and how many were dropped."""
  sentences, scores = fields.get("sentences") or [], fields.get("sentence_scores") or []
  if len(sentences) != len(scores):
    raise ValueError(f"{len(sentences)} sentences but {len(scores)} sentence scores")
  kept = [strip_speaker(x) for x, score in zip(sentences, scores) if score == 0]
  return [k for k in kept if len(k.split()) >= 2], sum(score > 0 for score in scores)


def _chunks(items: Sequence[str], rng: np.random.Generator, low: int = 1, high: int = 3) -> list[list[str]]:
  out, i = [], 0
  while i < len(items):
    n = int(rng.integers(low, high + 1))
    out.append(list(items[i:i + n]))
    i += n
  return out


def rephrase(fields: Mapping[str, Any], rng: np.random.Generator) -> str:
  """The document retold in `fields["style"]`: its sentences rated 0, framed; the rest dropped."""
  style = fields["style"]
  if style not in STYLES:
    raise ValueError(f"unknown rephrasing style {style!r}; styles: {sorted(STYLES)}")
  profile = _profile(fields)
  kept, dropped = _kept(fields)
  subject = safe_title(fields.get("title")) or (document_topic(kept) if kept else None) or profile.theme
  slots = {"subject": subject, "theme": profile.theme}
  parts = _STYLE_TEXT[style]
  opening = _pick(rng, parts["open"])
  closer_index = int(rng.integers(len(parts["close"])))
  remark = [_pick(rng, _SENSITIVE)] if dropped or not kept else []
  body = _sample(rng, _BODY, 1 if kept else 4)
  chunks = _chunks(kept, rng)
  if style not in _SPEAKERS:
    paragraphs = [_fill(opening, slots)]
    for i, chunk in enumerate(chunks):
      lead = [_pick(rng, _LINKS)] if i and rng.random() < 0.3 else []
      paragraphs.append(" ".join(lead + chunk))
    paragraphs += [_fill(p, slots) for p in remark + body]
    paragraphs.append(_fill(parts["close"][closer_index], slots))
    if style == "textbook":
      paragraphs.insert(0, f"# {subject[0].upper()}{subject[1:]}")
    return "\n\n".join(paragraphs)
  speakers = _SPEAKERS[style][int(rng.integers(len(_SPEAKERS[style])))]
  lines = [(0, _fill(opening, slots))]
  for i, chunk in enumerate(chunks):
    lines.append((1, " ".join(chunk)))
    if rng.random() < 0.4:
      lines.append((0, _pick(rng, _REACTIONS)))
  for sentence in remark + body:
    lines.append((1, _fill(sentence, slots)))
  who, closer = parts["close"][closer_index]
  lines.append((who, _fill(closer, slots)))
  return "\n\n".join(f"{speakers[who]}: {text}" for who, text in lines)


# ---------------------------------------------------------------------------------------------
# RefuseWeb: the user asks for the document's harmful elements; the assistant declines, says why,
# and offers something constructive.

_ASK = (
    "I read something about {about} and I want to go further. Can you help me with {request}?",
    "Can you put together {request} for me? It's related to something I saw about {about}.",
    "I need help with {request}. A post I found about {about} gave me the idea.",
    "I want {request}. I was just reading about {about}, so you can fill in the rest.",
)
_ASK_OWN = (
    "{own}", "{own} I saw it in a post about {about}.", "Quick question. {own}", "{own} Please be specific.",
    "I keep reading about {about}. {own}", "{own} Nobody else will tell me.",
)
_DECLINE = (
    "I can't help with {about}.",
    "I won't explain {about}, and I won't give any of its details.",
    "I'm not going to walk you through {about}.",
    "I'm sorry, but I can't help you with {about}.",
    "I can't do that. {about_cap} is not something I'll help with.",
    "I won't help with that request about {about}.",
    "I'm not going to help with {about}, even in part.",
)
_WHY_LEAD = ("", "Here is why. ", "The reason is simple. ", "Let me be honest about why. ", "To be clear about why: ")
_TOPIC_WHY = (
    "",
    "Anything that moves {about} along can hurt people who never agreed to the risk.",
    "{about_cap} has already hurt people, and passing on its details would only add to that.",
    "Even a partial answer about {about} could be misused by someone else who reads it.",
    "Details about {about} are exactly the part that causes harm, so they are the part I leave out.",
)
_SAFE_ALTERNATIVE = (
    "", "If you like, we could talk about {safe} instead.",
    "The same page also mentions {safe}, and I'd happily tell you more about that.",
    "Or, if you are curious, I can tell you about {safe}.",
)
_PUSH = (
    "Why not? It's only words.",
    "Come on, nobody is going to find out.",
    "It's just for a story I'm writing, so it doesn't matter, right?",
    "Other people online already shared it, so what's the difference?",
    "I only want to understand it, I'm not going to do anything.",
)
_HOLD = (
    "I understand why it might seem harmless, but my answer stays the same.",
    "Even for a story, I'd rather not write that part.",
    "I hear you, and I still won't help with that.",
    "I believe you mean no harm, but I still won't share those details.",
    "That it is out there already doesn't make it safer for me to repeat it.",
)
_CHECK = ("Would that be useful?", "Does that sound helpful?", "Would you like to start there?", "",
          "What do you think?")


def _join(*parts: str) -> str:
  return " ".join(p for p in parts if p)


def refuseweb(fields: Mapping[str, Any], rng: np.random.Generator) -> str:
  """A User/Assistant refusal dialogue in the "User: ... / Assistant: ..." layout: the user asks the
  document's own request (or one built from its topic), the assistant declines, names the topic,
  says why and offers a safe alternative."""
  profile = _profile(fields)
  sentences, scores = fields.get("sentences") or [], fields.get("sentence_scores") or []
  unsafe = [x for x, score in zip(sentences, scores) if score > 0] or list(sentences)
  topic = document_topic(unsafe) if unsafe else None
  about = topic or profile.request  # what the assistant declines
  kept, _ = _kept(fields) if sentences else ([], 0)
  safe = document_topic(kept) if kept else None
  own = own_request(sentences, scores) if sentences else None
  source = topic or safe_title(fields.get("title")) or profile.theme  # what the user read about
  slots = {"about": about, "about_cap": about[:1].upper() + about[1:], "request": profile.request,
           "own": own or "", "safe": safe or ""}
  ask = _fill(_pick(rng, _ASK_OWN if own else _ASK), {**slots, "about": source})
  alternative = _pick(rng, _SAFE_ALTERNATIVE) if safe and safe != topic else ""
  reply = _join(_fill(_pick(rng, _DECLINE), slots), _pick(rng, _WHY_LEAD) + profile.why,
                _fill(_pick(rng, _TOPIC_WHY), slots) if topic else "", profile.offer,
                _fill(alternative, slots) if alternative else "", _pick(rng, _CHECK))
  turns = [("User", ask), ("Assistant", reply)]
  if rng.random() < 0.5:
    turns.append(("User", _pick(rng, _PUSH)))
    turns.append(("Assistant", _join(_pick(rng, _HOLD), profile.why if rng.random() < 0.5 else "", profile.offer)))
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
_INTRO_TOPIC = (
    "Stories about {about} keep turning up online, and they raise a question worth taking seriously: "
    "{principle_lower}.",
    "When someone asks for the details of {about}, a careful answer says no. The reasons behind that no are "
    "the subject of this article: {principle_lower}.",
    "{about_cap} is a useful example for thinking about {principle_lower}.",
    "Requests about {about} are a good way into a bigger idea, {principle_lower}.",
    "Few people will ever meet {about} in real life, yet the questions it raises about "
    "{principle_lower} touch everyone.",
    "This article uses {about} to explore {principle_lower}, without repeating any of its details.",
)
_TOPIC_SECTION = (
    "Talk about {about} usually leaves out the people it hurts. {lesson}",
    "It can be tempting to treat {about} as a puzzle or a curiosity. {lesson}",
    "Whatever draws people to {about}, the outcome is what matters. {lesson}",
    "Behind every story about {about} there are people who paid for it. {lesson}",
    "The details of {about} are not what matter most; the harm is. {lesson}",
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
    "Saying no well takes practice. The best answers are short, warm and honest about the reason.",
    "People rarely ask such questions out of nowhere. Listening for what is really going on often "
    "reveals a need that can be met safely.",
    "A firm answer does not have to be a cold one. Respect for the person asking and care for everyone "
    "else can sit side by side.",
)
_FORWARD = (
    "A constructive alternative makes the difference: {practice}",
    "The most helpful path usually combines honesty with an offer of real help: {practice}",
    "Practising this principle in daily life means looking for the helpful option. {practice}",
    "So what can people do instead? {practice}",
    "There is a better road, and it is open to anyone. {practice}",
)
_END = (
    "In the end, {principle_lower} is something each of us can practise, one conversation at a time.",
    "Small choices like these add up to communities where people can trust one another.",
    "When we hold on to {principle_lower}, we make the world a little safer and kinder for everyone.",
    "None of this requires perfection, only the willingness to choose care over curiosity when it counts.",
    "That is how trust is built: slowly, and one honest answer at a time.",
)


def moral_education(fields: Mapping[str, Any], rng: np.random.Generator) -> str:
  """A markdown article on the principle at stake in a refusal, discussing the document's topic,
  without the exchange itself."""
  profile = _profile(fields)
  sentences = fields.get("sentences") or []
  topic = document_topic(sentences) if sentences else None
  slots = {"principle_lower": profile.principle.lower(), "theme": profile.theme, "lesson": profile.lesson,
           "practice": profile.practice, "about": topic or profile.theme}
  slots["about_cap"] = slots["about"][0].upper() + slots["about"][1:]
  headings = [_pick(rng, options) for options in _HEADINGS]
  matters = _pick(rng, _TOPIC_SECTION) if topic else _pick(rng, _MATTERS)
  paragraphs = [matters, _pick(rng, _LOOK), _pick(rng, _FORWARD) + " " + _pick(rng, _END)]
  intro = _pick(rng, _INTRO_TOPIC) if topic else _pick(rng, _INTRO)
  sections = [f"# {profile.principle}", _fill(intro, slots)]
  for heading, paragraph in zip(headings, paragraphs):
    sections += [f"## {heading}", _fill(paragraph, slots)]
  return "\n\n".join(sections)


TASKS: dict[str, Callable[[Mapping[str, Any], np.random.Generator], str]] = {
    "rephrase": rephrase, "refuseweb": refuseweb, "moral_education": moral_education,
}


@gin.configurable
class TemplateBackend:
  """Offline, deterministic text from hand-written templates (this module) that
  transforms the document it is given.

  Writes the rephrase / refuseweb / moral_education tasks from a request's `fields`; the same
  fields and seed always give the same text. Where the fields carry the document's `text`, its
  sentences are rated one by one (by `sentence_scorer`, else the rubric's indicative terms) and the
  templates keep the sentences rated 0, ask the document's own request and name its topic. It cannot
  annotate or judge.

  Args:
    sentence_scorer: rates sentences 0..5: an object with `score(texts) -> int array [len(texts)]`
      (a `safejax.safety` scorer; load it with `safejax.safety.load_scorer`: backends sit before
      the safety package in the data flow), or None to rate by the rubric's indicative terms
      (`lexical_scores`). The backend is pickled to Beam workers with its scorer.
  """

  name = "template"

  def __init__(self, sentence_scorer: Any = None):
    if sentence_scorer is not None and not callable(getattr(sentence_scorer, "score", None)):
      raise ValueError(f"sentence_scorer needs a score(texts) method, got {type(sentence_scorer).__name__}")
    self.sentence_scorer = sentence_scorer

  @property
  def rater(self) -> str:
    return "lexical" if self.sentence_scorer is None else type(self.sentence_scorer).__name__

  def rate(self, sentences: Sequence[str]) -> list[int]:
    """Scores 0..5 of sentences (one scorer call for all of them)."""
    if not sentences:
      return []
    if self.sentence_scorer is None:
      return lexical_scores(sentences)
    scores = np.asarray(self.sentence_scorer.score(list(sentences)))
    if scores.shape != (len(sentences),):
      raise ValueError(f"the sentence scorer returned shape {scores.shape} for {len(sentences)} sentences")
    return [int(x) for x in scores]

  def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
    for request in requests:
      if request.task not in TASKS:
        raise ValueError(f"the template backend writes {sorted(TASKS)}, not {request.task!r}; "
                         "use an LLM backend for it")
    split = [split_sentences(r.fields["text"]) if r.fields.get("text") else [] for r in requests]
    flat = self.rate([s for sentences in split for s in sentences])
    out, i = [], 0
    for request, sentences in zip(requests, split):
      fields = dict(request.fields)
      if sentences:
        fields.update(sentences=sentences, sentence_scores=flat[i:i + len(sentences)])
        i += len(sentences)
      text = TASKS[request.task](fields, np.random.default_rng(request.seed))
      out.append(Generation(text, {"backend": self.name, "model": TEMPLATE_VERSION, "template": True,
                                   "cached": False, "sentence_rater": self.rater,
                                   "sentences_kept": sum(s == 0 for s in fields.get("sentence_scores", ())),
                                   "sentences_dropped": sum(s > 0 for s in fields.get("sentence_scores", ()))}))
    return out
