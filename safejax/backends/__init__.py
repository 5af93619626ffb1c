"""Text generation backends that need no model: an OpenAI-compatible endpoint (`openai`) and the
offline template backend (`template`). The interface they implement is `safejax.generation`; a
model checkpoint as a backend is `safejax.decoding.backend.LocalModelBackend`, beside the decoder.
"""

from safejax.backends.openai import OpenAICompatibleBackend, request_key
from safejax.backends.template import TemplateBackend

__all__ = ["OpenAICompatibleBackend", "request_key", "TemplateBackend"]
