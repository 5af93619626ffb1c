"""`safejax demo`: the Safety Pretraining recipe end to end on built-in data.

  corpus.py    the built-in corpus: documents of known levels, held-out prompts and texts
  recipe.py    the stages (corpus, classifier, pipeline, vocab, pretrain, post-train, evaluate, report)
"""
