"""Downstream evaluation: fine-tune a pretrained checkpoint on GLUE or SuperGLUE and score it.

``finetune_suite`` (in ``finetune.py``) is the entry point; ``ntng finetune`` wraps it.
"""
