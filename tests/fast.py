"""Overrides that make a shipped tiny config run in seconds: a small corpus, small evaluations."""

SMALL_DATA = [
    "data.synthetic.num_documents=600",
    "data.max_validation_sequences=32",
    "eval.train_eval_sequences=32",
]
