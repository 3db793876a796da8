"""An app whose import fails (weir's tests check the worker exits 3 with the traceback)."""
raise RuntimeError("broken on purpose: weir import-failure test")
