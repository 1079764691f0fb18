"""Quality metrics, each a registered name. A metric streams: it sees each batch of (noise,
samples) as it is produced and answers with named columns at the end of the cell, so a cell of
50,000 samples never holds 50,000 images. Where a metric does not apply it answers NaN.

- ``solver_error``: RMS per dimension between the sampler's endpoint and the exact PF-ODE
  endpoint from the same noise (GaussianMixture.exact_ode_solution, DOP853 at 1e-11), or for
  any other model a tight rk45 solve (rtol = atol = [run.reference] rtol, default 1e-6) from
  the same noise. Deterministic samplers only.
- ``sliced_wasserstein``: sliced 2-Wasserstein distance between samples and exact data samples
  (128 fixed random directions; Rabin et al. 2011), the same n on both sides. Low-dimensional
  models: it keeps the cell's samples.
- ``mmd``: unbiased squared MMD, Gaussian kernel with bandwidth = median pairwise distance of
  the reference set (Gretton et al. 2012). Low-dimensional models.
- ``fid`` / ``kid``: Frechet distance (Heusel et al. 2017) and kernel distance (Binkowski et al.
  2018) in the feature space of a torch-fidelity extractor ([run.reference] extractor, default
  ``inception-v3-compat``), torch-fidelity's formulas (its values to round-off) with the
  reference side computed once per model. Reference features are cached on disk keyed by
  dataset, split, extractor and n.
- ``inversion_error`` / ``reconstruction_error``: real data points (n = min(n_samples, 256))
  run to noise by the cell's sampler at its NFE budget (solvers.invert): RMS of the latent
  against the exact encoding (mixtures) or a tight rk45 inversion, with the NFE it counted
  (``inversion_nfe``); RMS of x0 against the round trip. Deterministic samplers only.
- ``straightness``: S(Z) of the model's probability-flow trajectories in rectified-flow
  coordinates (Liu et al. 2022), per dimension; 0 for straight paths. A property of the model,
  computed once per model.
- ``nll``: negative log-likelihood of real data points by the model's probability-flow ODE
  (nats per sample, bits/dim on image models), its NFE, and on the mixtures its error against
  the exact answer. Once per model and solver tolerance.
"""
from .base import METRICS, REFERENCE_SEED, CellInfo, Metric, register_metric
from .distances import MMD, SlicedWasserstein, exact_data, mmd_rbf, sliced_wasserstein
from .features import (CACHE_ENV, FID, INCEPTION_ENV, KID, cache_dir, frechet_distance, is_image_model,
                       make_extractor, to_uint8_images)
from .inversion import InversionError, ReconstructionError
from .solver_error import SolverError
from .straightness import Straightness, straightness
from .nll import NLL

__all__ = ["METRICS", "CellInfo", "Metric", "register_metric", "sliced_wasserstein", "mmd_rbf", "to_uint8_images",
           "frechet_distance", "make_extractor", "exact_data", "REFERENCE_SEED", "straightness"]

