"""What every command shares with the user's files: one-line errors (``errors``), atomic and exclusive writes
(``files``) and generated pictures for checks without a dataset (``synthetic``). Nothing here imports torch."""
