"""The in-process ``transformers`` backend (``backend``) and what only it uses: ragged batches
(``ragged``), the prefix cache (``prefix_cache``) and packed CPU linear layers (``cpu_linear``)."""
