"""Data contracts of vigil: Arrow schemas, dead-letter reasons, manifest formats.

This package depends on nothing else of vigil's (nor on TensorFlow or Beam), so every
other layer, and any downstream reader, can import it cheaply.
"""
