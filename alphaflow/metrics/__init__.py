"""Evaluation metrics on feature statistics.

FID and FDD are the same Fréchet distance between Gaussians fitted to features; they differ only
in the feature extractor (Inception-v3 pool features for FID, DINOv2 for FDD). On the embedded
default a small digits classifier, trained once deterministically and cached, gives the features.

    from alphaflow.metrics import FeatureStats, frechet_distance, digits_extractor
    extract = digits_extractor()                       # [B, 1, 8, 8] in [-1, 1] -> [B, 64]
    d2 = frechet_distance(FeatureStats.from_features(extract(real)), FeatureStats.from_features(extract(fake)))
"""

from alphaflow.metrics.features import EXTRACTORS, DigitsClassifier, FeatureExtractor, digits_extractor
from alphaflow.metrics.frechet import FeatureStats, StatsAccumulator, frechet_distance

__all__ = ["EXTRACTORS", "DigitsClassifier", "FeatureExtractor", "FeatureStats", "StatsAccumulator",
           "digits_extractor", "frechet_distance"]
