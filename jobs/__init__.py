"""vigil's entry points: the ``vigil`` CLI, training, scoring, demo."""
