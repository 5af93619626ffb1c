"""Text generation backends behind one interface (`base`): an OpenAI-compatible endpoint (`openai`),
a safejax checkpoint in this process (`local`) and the offline template backend (`template`).

`local` is not imported here: it pulls in the decoder, which the data stages never need.
"""

from safejax.backends.base import Generation, GenerationRequest, TextBackend, generate_validated
from safejax.backends.openai import OpenAICompatibleBackend, request_key
from safejax.backends.template import TemplateBackend

__all__ = ["Generation", "GenerationRequest", "TextBackend", "generate_validated", "OpenAICompatibleBackend",
           "request_key", "TemplateBackend"]
