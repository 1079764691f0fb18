"""nfebench models: schedules, parameterisations, vector fields, exact Gaussian mixtures, zoo."""
from .schedules import EDM, SCHEDULES, VE, DiscreteVP, RectifiedFlow, Schedule, VPCosine, VPLinear
from .parameterization import PREDICTIONS, DiffusionModel
from .fields import NFEBudgetExceeded, ProbabilityFlowODE, ReverseSDE, ScaledProbabilityFlowODE
from .analytic import GaussianMixture
from . import zoo

__all__ = [
    "Schedule", "VPLinear", "VPCosine", "DiscreteVP", "VE", "EDM", "RectifiedFlow", "SCHEDULES",
    "DiffusionModel", "PREDICTIONS", "ProbabilityFlowODE", "ScaledProbabilityFlowODE", "ReverseSDE",
    "NFEBudgetExceeded", "GaussianMixture", "zoo",
]
