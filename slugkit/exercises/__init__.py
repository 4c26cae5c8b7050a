"""Checkers for the notebook exercises: write a SLUG step yourself, compare it with slugkit's.

- :func:`check_average_gradients` — one gradient pass, averaged over batches (notebook 02).
- :func:`check_layer_metrics` — importance, alignment and the Pareto mask (notebook 03).
- :func:`check_binary_search` — the step-size binary search (notebook 04).
- :func:`check_forget_retain_accuracy` — forget top-1 / top-5 and retain top-1 (notebook 05).
- :func:`check_integrated_gradients` — Integrated Gradients by the midpoint rule (notebook 06).

A checker runs your function on small cases with known answers and returns a :class:`Feedback`
(``passed`` plus messages that say what is wrong and how to fix it); it displays itself in a notebook.
The reference answers live in :mod:`slugkit.exercises.solutions`, out of the notebooks.
"""
from .attribution import check_integrated_gradients
from .evaluation import check_forget_retain_accuracy
from .feedback import Feedback
from .gradients import check_average_gradients
from .layers import check_layer_metrics
from .step_size import check_binary_search

__all__ = ["Feedback", "check_average_gradients", "check_layer_metrics", "check_binary_search",
           "check_forget_retain_accuracy", "check_integrated_gradients"]
