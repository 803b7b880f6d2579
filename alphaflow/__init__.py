"""alphaflow: α-Flow, MeanFlow and flow matching for few-step generation (arXiv 2510.20771).

    from alphaflow.models import build_model
    from alphaflow.objectives import build_objective, Sample
    from alphaflow.core.sampling import generate
    from alphaflow import load_model            # net = load_model("runs/x"): any run folder's network
"""

__version__ = "0.1.0"


def load_model(run_dir, weights: str = "ema", **kwargs):  # noqa: ANN001, ANN201 (typed in alphaflow.train.build)
    """The network of a run folder, trained or imported: ``alphaflow.train.build.load_model``."""
    from alphaflow.train.build import load_model as load

    return load(run_dir, weights, **kwargs)
