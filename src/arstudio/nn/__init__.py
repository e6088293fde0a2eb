"""Neural-network layers shared by tokenizers and generators (the lowest model layer)."""
