"""Analysis toolkit: pure functions on arrays/tensors."""
