"""Model factories for the engine tests, loaded through zoo's ``python:<module>:<function>``."""
import time

import torch

from score_models import DiffusionModel, zoo


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
