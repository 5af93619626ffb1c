"""SeqIO registrations for safejax (t5x's MIXTURE_OR_TASK_MODULE; gin names it `tasks`).

Tasks over a run's own files are registered by gin-evaluated references, so one gin file says
both where the data is and what trains on it:

  train.task_registrations = [@register_text_task()]
  register_text_task.name = 'demo_text'
  register_text_task.file_pattern = '/tmp/run/corpus/*.jsonl'
  register_text_task.vocab_path = '/tmp/run/vocab.model'
"""

from tasks.chat import register_chat_task  # noqa: F401
from tasks.safety_mixtures import register_safety_mixtures  # noqa: F401
from tasks.text import register_text_task  # noqa: F401
