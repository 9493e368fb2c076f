"""Evaluation metrics for the thesis's experiments (DESIGN.md §1, chapter 4 "each measured").

- :mod:`.distribution`: Fréchet distance (FID), KID, CMMD on any feature arrays;
- :mod:`.features`: feature extractors from local weight files + an open registry;
- :mod:`.image`: PSNR / SSIM (whole, inside, outside a mask) and inpainting seam error;
- :mod:`.perceptual`: untrained LPIPS-like filter-bank distance and a real-LPIPS hook;
- :mod:`.adherence`: ControlNet condition adherence (edges, depth, normals, keypoints);
- :mod:`.clip_score`: CLIP-style score and text retrieval accuracy from embeddings;
- :mod:`.bootstrap`: percentile bootstrap confidence intervals on per-sample values.
"""

from .adherence import (DepthErrors, EdgeScores, KeypointScores, NormalErrors, align_depth,
                        depth_errors, edge_f1, keypoint_scores, normal_angular_error)
from .bootstrap import BootstrapCI, bootstrap_ci, paired_bootstrap_ci
from .clip_score import clip_score, similarity_ranks, text_retrieval_accuracy
from .distribution import (CMMD_SCALE, CMMD_SIGMA, FeatureStatistics, KIDResult, cmmd,
                           feature_statistics, frechet_distance, gaussian_frechet_distance,
                           kernel_inception_distance, mmd2_unbiased, polynomial_kernel, rbf_kernel)
from .features import (CLIPImageFeatures, FeatureExtractor, InceptionFIDFeatures, extract_features,
                       get_feature_extractor, list_feature_extractors, register_feature_extractor)
from .image import psnr, region_scores, seam_error, ssim
from .perceptual import FilterBankDistance, PerceptualDistance, TorchmetricsLPIPS, filter_bank_distance

__all__ = [
    "DepthErrors", "EdgeScores", "KeypointScores", "NormalErrors", "align_depth", "depth_errors",
    "edge_f1", "keypoint_scores", "normal_angular_error",
    "BootstrapCI", "bootstrap_ci", "paired_bootstrap_ci",
    "clip_score", "similarity_ranks", "text_retrieval_accuracy",
    "CMMD_SCALE", "CMMD_SIGMA", "FeatureStatistics", "KIDResult", "cmmd", "feature_statistics",
    "frechet_distance", "gaussian_frechet_distance", "kernel_inception_distance", "mmd2_unbiased",
    "polynomial_kernel", "rbf_kernel",
    "CLIPImageFeatures", "FeatureExtractor", "InceptionFIDFeatures", "extract_features",
    "get_feature_extractor", "list_feature_extractors", "register_feature_extractor",
    "psnr", "region_scores", "seam_error", "ssim",
    "FilterBankDistance", "PerceptualDistance", "TorchmetricsLPIPS", "filter_bank_distance",
]
