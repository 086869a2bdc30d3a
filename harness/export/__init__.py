"""`hyperbench export`: run folders turned into experiment-tracker runs (MLflow, W&B offline).
Run folders stay canonical; an export is a view of them, made again at will."""
