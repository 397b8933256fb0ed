"""Models and generation: tiny offline models (`cello.llm.tiny`) and generation backends.

    from cello.llm.tiny import build_tiny_model
"""
