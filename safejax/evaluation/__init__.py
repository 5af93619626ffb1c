"""The evaluation harness: attack success with validated judges, over-refusal, capability, the tag
as a detector, and reports.

  benchmarks        loaders (AdvBench, HarmBench, JailbreakBench, XSTest, any CSV/JSONL) -> PromptRecord
  prompting         format_chat (the project's one chat template), completion-style prompts
  judges            keyword refusal, safety-classifier and LLM judges behind one interface
  judge_validation  agreement of judges with human labels (accuracy, Cohen's kappa)
  metrics           Wilson intervals, ASR, over-refusal, kappa, AUROC
  capability        log-likelihood multiple choice, LAMBADA, perplexity (lm-eval semantics)
  loglikelihood     LoglikelihoodModel: batched, jitted log-likelihood under a safejax decoder
  tag_detector      mean harm-tag probability as a harmfulness score, its AUROC
  report            results.json, report.md, PNG charts
  run               System and the gin-configurable evaluate(systems)

Submodules are imported where used (JAX and matplotlib are not needed to judge or load data).
"""
