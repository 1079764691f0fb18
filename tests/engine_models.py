"""Model factories for the engine tests, loaded through zoo's ``python:<module>:<function>``."""
import time

import torch

from score_models import DiffusionModel, GaussianMixture, zoo


def exploding(schedule):
    """An eps-network whose output grows without bound: samplers diverge within a few steps."""
    return DiffusionModel(lambda x, t: x * 1e30 + 1e30, schedule, prediction="eps", sample_shape=(2,))


def broken(schedule):
    """A network that raises: the cell must be recorded as failed and the sweep go on."""
    def net(x, t):
        raise RuntimeError("network exploded on purpose")
    return DiffusionModel(net, schedule, prediction="eps", sample_shape=(2,))


def slow_ring8(schedule):
    """The exact ring8 mixture with a 2 ms sleep per call, so a sweep lasts long enough to kill."""
    exact = zoo.load("gmm:ring8", schedule=schedule)

    def net(x, t):
        time.sleep(0.002)
        return exact.net(x, t)

    model = DiffusionModel(net, schedule, prediction=exact.prediction, sample_shape=(2,))
    model.net_time_dtype = torch.float64
    return model


def image_mixture(schedule):
    """A 1x4x4 "image" model whose network is an exact Gaussian mixture (means in [-1, 1]) but
    which is no GaussianMixture: the metrics treat it as a trained image model."""
    g = torch.Generator().manual_seed(44)
    exact = GaussianMixture(torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64) * 1.2 - 0.6, 0.2, schedule=schedule)
    model = DiffusionModel(exact.net, schedule, prediction=exact.prediction, sample_shape=(1, 4, 4))
    model.net_time_dtype = torch.float64
    model.sample_data = exact.sample_data
    model.exact = exact
    return model
