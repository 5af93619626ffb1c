"""`safejax demo`: the Safety Pretraining recipe end to end on built-in data.

  corpus.py    the built-in corpus: documents of known levels, held-out prompts and texts
  world.py     the ground-truth world: topics with secret facts, documents that know what they hold,
               held-out prompts, labelled replies for validating judges
  recipe.py    the stages (corpus, classifier, pipeline, vocab, pretrain, post-train, evaluate, report)
"""
