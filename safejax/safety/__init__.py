"""Safety scoring on the paper's 0..5 rubric.

  rubric       the levels and harm categories as data; `category_term_hits`, `detect_categories`,
               `lexical_scores` (the indicative terms' rule)
  scorer       the `Scorer` interface, `DecisionRule`, windowing (max over windows), `MaxEnsemble`,
               `load_scorer`
  calibration  decision thresholds chosen on validation data for recall / precision / FPR targets
  ngram        the fast hashed n-gram scorer (`train_ngram_scorer`)
  encoder      the MiniLM encoder scorer (`train_encoder_scorer`, `minilm_dir`); its BERT in bert.py
  annotator    the LLM annotator: the rubric asked of any text backend, as a scorer
  training     the shared optax training loop (`TrainConfig`, class weights) and safetensors params
  labelled     labelled examples from ../shared/data and the mapping of each source onto the rubric
  metrics      macro-F1, recall/precision at >=1 and >=3, confusion matrix, the profanity baseline
  negatives    safe texts a classifier misreads (the recipe's own outputs, garbled text)
  cli          `safejax classify train|calibrate|eval|score`

Heavy modules (JAX models, tokenizers) load only when used: `from safejax.safety import
load_scorer` stays cheap for Beam workers until a scorer is actually loaded.
"""

from safejax.safety.scorer import DecisionRule, MaxEnsemble, Scorer, load_scorer

__all__ = ["DecisionRule", "MaxEnsemble", "Scorer", "load_scorer"]
