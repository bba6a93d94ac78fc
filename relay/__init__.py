"""Message ingestion and live delivery: the code behind the five entry modules at the top level.

One folder per process (``ingestion``, ``listing``, ``worker``, ``live``) over
shared layers (``web``, then ``broker``/``storage``/``metrics``, then
``records``/``settings``/``logs``). The README's architecture section draws
it; the import-linter contract in ``pyproject.toml`` enforces it (the tests run
``lint-imports``): a layer never imports one above it, and no process folder
imports another.
"""
