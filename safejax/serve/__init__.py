"""`safejax serve`: an OpenAI-compatible server over a checkpoint, SafeBeam as a per-request option.

  protocol.py  request/response models and OpenAI-shaped errors
  engine.py    the batching engine: concurrent requests of one decoding configuration share a batch
  app.py       the Starlette app, `ServerConfig` and the `safejax serve` command
"""
