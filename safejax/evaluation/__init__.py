"""The evaluation harness: attack success with validated judges, over-refusal, capability, the tag
as a detector, and reports; the ablation ladder across seeds and its claims.

  prompt_sets       loaders (AdvBench, HarmBench, JailbreakBench, XSTest, any CSV/JSONL) -> PromptRecord
  prompting         completion-style and chat-style prompts (chat through `safejax.chat_template`)
  judges            keyword refusal, safety-classifier and LLM judges behind one interface
  world_judges      the demo world's judges (compliance, knowledge leak) and benchmarks, from its files
  judge_validation  agreement of judges with human labels (accuracy, Cohen's kappa)
  metrics           ASR and over-refusal with Wilson intervals; how garbled replies are
  capability        log-likelihood multiple choice, LAMBADA, perplexity (lm-eval semantics)
  loglikelihood     LoglikelihoodModel: batched, jitted log-likelihood under a safejax decoder
  tag_detector      mean harm-tag probability as a harmfulness score, its AUROC
  report            results.json, report.md, PNG charts
  run               System, EvalConfig and evaluate(systems, out_dir, config)
  checkpoints       checkpoints as systems under several decodings, `safejax eval`, tau on validation prompts
  ladder            the ladder's records, between-seed rows and tables, the chart, tau's rule
  claims            the paper's claims decided from between-seed intervals
  ladder_report     the ladder's report files (ladder.md, claims.md, ladder.json, ladder.png)

Submodules are imported where used (JAX and matplotlib are not needed to judge or load data).
"""
