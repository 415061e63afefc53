"""Application code of ``tools/reproduce.py``: the paper's numbers
(:mod:`.tables`), runs and their checkpoints (:mod:`.runs`), what each table
measures (:mod:`.pipelines`) and the report (:mod:`.report`)."""
