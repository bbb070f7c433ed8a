"""``timm-sknet release``: convert, validate, gate, publish and read back the authors' weights in one resumable
command (``pipeline.py``), with its work folder (``workdir.py``), its steps (``steps.py``) and what it asks of the Hub
(``hub.py``)."""
