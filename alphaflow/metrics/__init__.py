"""Evaluation metrics on feature statistics.

FID and FDD are the same Fréchet distance between Gaussians fitted to features; they differ only
in the feature extractor (Inception-v3 pool features for FID, DINOv2 for FDD). On the embedded
default a small digits classifier, trained once deterministically and cached, gives the features.

    from alphaflow.metrics import FeatureStats, frechet_distance, digits_extractor
    extract = digits_extractor()                       # [B, 1, 8, 8] in [-1, 1] -> [B, 64]
    d2 = frechet_distance(FeatureStats.from_features(extract(real)), FeatureStats.from_features(extract(fake)))

    fid = inception_extractor("pt_inception-2015-12-05-6726825d.pth")   # [B, 3, H, W] -> [B, 2048]
    fdd = dinov2_extractor("dinov2-large/")                            # [B, 3, H, W] -> [B, 1024]
"""

from alphaflow.metrics.dinov2 import Dinov2Features, dinov2_extractor
from alphaflow.metrics.features import (EXTRACTORS, METRIC_NAMES, DigitsClassifier, FeatureExtractor,
                                        digits_extractor)
from alphaflow.metrics.frechet import FeatureStats, StatsAccumulator, frechet_distance
from alphaflow.metrics.inception import FIDInceptionV3, InceptionFeatures, inception_extractor

__all__ = ["EXTRACTORS", "METRIC_NAMES", "DigitsClassifier", "Dinov2Features", "FIDInceptionV3", "FeatureExtractor",
           "FeatureStats", "InceptionFeatures", "StatsAccumulator", "digits_extractor", "dinov2_extractor",
           "frechet_distance", "inception_extractor"]
