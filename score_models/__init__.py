"""nfebench models: schedules, parameterisations, vector fields, exact Gaussian mixtures, zoo."""
from .schedules import EDM, SCHEDULES, VE, DiscreteVP, RectifiedFlow, Schedule, VPCosine, VPLinear
from .parameterization import PREDICTIONS, DiffusionModel
from .fields import NFEBudgetExceeded, ProbabilityFlowODE, ReverseSDE, ScaledProbabilityFlowODE
from .analytic import GaussianMixture
from .likelihood import bits_per_dim, log_likelihood
from . import zoo

__all__ = [
    "Schedule", "VPLinear", "VPCosine", "DiscreteVP", "VE", "EDM", "RectifiedFlow", "SCHEDULES",
    "DiffusionModel", "PREDICTIONS", "ProbabilityFlowODE", "ScaledProbabilityFlowODE", "ReverseSDE",
    "NFEBudgetExceeded", "GaussianMixture", "log_likelihood", "bits_per_dim", "zoo",
]
