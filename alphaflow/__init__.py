"""alphaflow: α-Flow, MeanFlow and flow matching for few-step generation (arXiv 2510.20771).

    from alphaflow.models import build_model
    from alphaflow.objectives import build_objective, Sample
    from alphaflow.sampling import generate
"""

__version__ = "0.1.0"
