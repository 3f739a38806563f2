"""Backends over HTTP model APIs: ``client`` (retries, errors, server-sent events), ``chat_completions``
(OpenAI-style chat completions), and the ``openai``, ``tgi`` and ``engine`` / ``llamacpp`` backends."""
