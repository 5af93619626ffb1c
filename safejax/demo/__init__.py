"""`safejax demo`: the Safety Pretraining recipe end to end on built-in data.

  world.py         the ground-truth world: topics with secret facts, documents that know what they hold,
                   held-out prompts, labelled replies for validating judges
  cache.py         the step cache: a step reruns only when its inputs or its code changed
  recipe.py        the steps wired together (corpus, classifier, pipeline, vocab, pretrain, post-train,
                   evaluate, report) and the `safejax demo` command
  posttraining.py  the post-training steps: conversation data, instruction tuning, the attack's dose
                   chosen on validation prompts, the attack
"""
