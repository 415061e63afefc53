"""Classification heads (registered in mmpretrain MODELS)."""
