"""The per-cell FID, KID and MMD (reference side computed once, symmetric eigensolver, one matmul
per kernel matrix) give the values of torch-fidelity's functions and of the previous MMD formula
to 1e-9 relative, as functions and through the metric classes."""
import pytest
import torch
import numpy as np
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric

from benchmarks.metrics import FID, KID, REFERENCE_SEED, CellInfo, frechet_distance
from benchmarks.metrics.distances import MMD, mmd_from_reference, mmd_reference, offdiagonal_sum
from benchmarks.metrics.features import feature_statistics, frechet_reference, kid_from_reference, kid_reference

SIZES = [(n, d) for d in (2, 16, 192) for n in (360, 1000)]


def features(n, d, seed, scales=None, shift=0.0):
    """n Gaussian features in d dimensions, standard deviations ``scales`` along fixed rotated axes."""
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(99), dtype=torch.float64))
    scales = torch.logspace(0, -1, d, dtype=torch.float64) if scales is None else scales
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (z * scales) @ rotation.T + shift


def torch_fidelity_fid(x, y):
    return fid_statistics_to_metric(fid_features_to_statistics(x), fid_features_to_statistics(y),
                                    verbose=False)["frechet_inception_distance"]


def nuclear_norm_fid(x, y):
    """The Frechet distance without forming covariances: tr (S_x S_y)^(1/2) is the sum of the
    singular values of Xc Yc^T / sqrt((n - 1)(m - 1)) (Xc, Yc: centred features), each found to
    round-off of the largest, so it stays accurate where a covariance is (nearly) singular."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    cross = torch.linalg.svdvals(xc @ yc.T / ((len(x) - 1) * (len(y) - 1)) ** 0.5).sum()
    diff = x.mean(0) - y.mean(0)
    return float(diff @ diff + (xc * xc).sum() / (len(x) - 1) + (yc * yc).sum() / (len(y) - 1) - 2 * cross)


def previous_mmd(x, y):
    """The MMD^2 formula before squared distances by one matmul: torch.cdist, then squared."""
    dyy = torch.cdist(y, y)
    h = float(dyy[torch.triu_indices(len(y), len(y), 1).unbind()].median())
    k = lambda d: torch.exp(-d.pow(2) / (2 * h**2))
    kxx, kyy, kxy = k(torch.cdist(x, x)), k(dyy), k(torch.cdist(x, y))
    n, m = len(x), len(y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
                 - 2 * kxy.mean())


def relative(a, b):
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("n,d", [(360, 16), (1000, 192)])
def test_feature_statistics_are_torch_fidelitys_bit_for_bit(n, d):
    x = features(n, d, 4, shift=0.3)
    ours, theirs = feature_statistics(x), fid_features_to_statistics(x)
    assert np.array_equal(ours["mu"], theirs["mu"]) and np.array_equal(ours["sigma"], theirs["sigma"])


@pytest.mark.parametrize("n,d", SIZES)
def test_frechet_distance_equals_torch_fidelity(n, d):
    y = features(n, d, 1)
    for x in (features(n, d, 2, shift=0.05), features(n, d, 3, torch.logspace(0, -1, d) * 1.2, 0.2)):
        expected = torch_fidelity_fid(x, y)
        statistics = feature_statistics(y)
        assert relative(frechet_distance(x, y), expected) < 1e-9
        assert relative(frechet_distance(x, None, statistics), expected) < 1e-9
        assert relative(frechet_distance(x, None, frechet_reference(statistics)), expected) < 1e-9


@pytest.mark.parametrize("n,d", [(360, 16), (1000, 192)])
def test_frechet_distance_with_singular_and_ill_conditioned_covariances(n, d):
    # a constant feature on both sides (a dead unit): both covariances exactly singular
    y, x = features(n, d, 1), features(n, d, 2, shift=0.1)
    y[:, 0] = x[:, 0] = 0.5
    assert relative(frechet_distance(x, y), torch_fidelity_fid(x, y)) < 1e-9
    # condition number 1e3: still torch-fidelity's value to 1e-9
    scales = torch.logspace(0, -1.5, d, dtype=torch.float64)
    y, x = features(n, d, 1, scales), features(n, d, 2, scales * 1.1, 0.1)
    assert relative(frechet_distance(x, y), torch_fidelity_fid(x, y)) < 1e-9
    # Condition numbers of 1e6 and up, or fewer samples than dimensions: the square roots of
    # eigenvalues at round-off level (~1e-16 of the largest) add ~1e-8 each, in torch-fidelity's
    # value as in ours; both stay within 1e-6 of a value that does not form covariances.
    for scales, size in ((torch.logspace(0, -6, d, dtype=torch.float64), n), (torch.ones(d, dtype=torch.float64), d // 2)):
        y, x = features(size, d, 1, scales), features(size, d, 2, scales * 1.1, 0.1)
        accurate = nuclear_norm_fid(x, y)
        assert relative(torch_fidelity_fid(x, y), accurate) < 1e-6
        assert relative(frechet_distance(x, y), accurate) < 1e-6


@pytest.mark.parametrize("n,d", SIZES)
def test_kid_equals_torch_fidelity_with_one_subset(n, d):
    y = features(n, d, 1)
    reference = kid_reference(y)
    # the pixel-like case (features in [0, 1], the same distribution: KID near 0) and a shifted one
    cases = [(torch.rand(n, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64),
              torch.rand(n, d, generator=torch.Generator().manual_seed(6), dtype=torch.float64)),
             (features(n, d, 2, shift=0.1), y)]
    for x, ref in cases:
        expected = kid_features_to_metric(x, ref, kid_subsets=1, kid_subset_size=n, verbose=False, rng_seed=7)
        assert expected["kernel_inception_distance_std"] == 0.0
        value = kid_from_reference(x, reference if ref is y else kid_reference(ref))
        assert relative(value, expected["kernel_inception_distance_mean"]) < 1e-9


@pytest.mark.parametrize("n,d", SIZES)
def test_mmd_equals_the_previous_formula(n, d):
    y = features(n, d, 1)
    for x in (features(n, d, 2), features(n, d, 3, shift=0.3)):
        assert relative(mmd_from_reference(x, mmd_reference(y)), previous_mmd(x, y)) < 1e-9


def test_offdiagonal_sum_counts_each_distinct_pair_of_any_block_split():
    x = torch.randn(37, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full = torch.exp(-torch.cdist(x, x) ** 2)
    expected = float(full.sum() - full.diagonal().sum())
    for block in (1, 5, 36, 37, 256):
        value = offdiagonal_sum(len(x), lambda rows, cols: torch.exp(-torch.cdist(x[rows], x[cols]) ** 2), block)
        assert relative(float(value), expected) < 1e-12


def cell(model, key, n, tmp_path, cache):
    return CellInfo(model=model, model_key=key, sampler="heun", options={}, seed=0, n_samples=n,
                    device=torch.device("cpu"), reference={"extractor": "pixels", "cache_dir": str(tmp_path)},
                    cache=cache)


def run_metric(cls, info, samples, batch=128):
    metric = cls(info)
    for i in range(0, len(samples), batch):
        metric.update(i // batch, samples[i:i + batch], samples[i:i + batch])
    return metric.result()


def pixels(x):
    from benchmarks.metrics import to_uint8_images

    return (to_uint8_images(x).reshape(len(x), -1).float() / 255).double()


def test_fid_kid_and_mmd_metrics_equal_torch_fidelity_and_the_previous_formula(tmp_path):
    from score_models import zoo

    model = zoo.load("gmm:image3x8x8", schedule="edm")
    n = 360
    data = model.sample_data(n, generator=torch.Generator().manual_seed(REFERENCE_SEED), dtype=torch.float64)
    cache = {}
    for seed, noise in ((1, 0.0), (2, 0.2)):  # two cells sharing the cache: the second reuses the reference side
        x = model.sample_data(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        x = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        fx, fy = pixels(x.float()), pixels(data.float())
        fid = run_metric(FID, cell(model, "image", n, tmp_path, cache), x.float())["fid"]
        assert relative(fid, torch_fidelity_fid(fx, fy)) < 1e-9
        kid = run_metric(KID, cell(model, "image", n, tmp_path, cache), x.float())
        expected = kid_features_to_metric(fx, fy, kid_subsets=1, kid_subset_size=n, verbose=False,
                                          rng_seed=REFERENCE_SEED % 2**31)
        assert relative(kid["kid"], expected["kernel_inception_distance_mean"]) < 1e-9
        assert kid["kid_std"] == expected["kernel_inception_distance_std"] == 0.0
        mmd = run_metric(MMD, cell(model, "image", n, tmp_path, cache), x)["mmd"]
        assert relative(mmd, previous_mmd(x.reshape(n, -1), data.reshape(n, -1))) < 1e-9
    assert any(k[0] == "kid_reference" for k in cache if isinstance(k, tuple))


def test_kid_with_fewer_samples_than_reference_data_keeps_torch_fidelitys_subsets(tmp_path):
    from score_models import zoo

    model = zoo.load("gmm:image3x8x8", schedule="edm")
    x = model.sample_data(200, generator=torch.Generator().manual_seed(1))
    info = cell(model, "image", 200, tmp_path, {})
    info.reference["n_data"] = 300
    kid = run_metric(KID, info, x)
    data = model.sample_data(300, generator=torch.Generator().manual_seed(REFERENCE_SEED), dtype=torch.float64)
    expected = kid_features_to_metric(pixels(x), pixels(data.float()), kid_subsets=1, kid_subset_size=200,
                                      verbose=False, rng_seed=REFERENCE_SEED % 2**31)
    assert kid == {"kid": expected["kernel_inception_distance_mean"], "kid_std": expected["kernel_inception_distance_std"]}


def test_fid_and_kid_of_one_cell_extract_each_batch_once(tmp_path, monkeypatch):
    """The sweep hands FID and KID the same batch in turn: one extraction serves both, and the
    values equal those of separate extractions."""
    import benchmarks.metrics.features as features
    from score_models import zoo

    model = zoo.load("gmm:image3x8x8", schedule="edm")
    x = model.sample_data(256, generator=torch.Generator().manual_seed(5)).float()
    separate = {**run_metric(FID, cell(model, "image", 256, tmp_path, {}), x),
                **run_metric(KID, cell(model, "image", 256, tmp_path, {}), x)}
    calls = []
    real = features._extract
    monkeypatch.setattr(features, "_extract", lambda extractor, images, *a: calls.append(len(images)) or real(extractor, images, *a))
    cache = {}
    fid, kid = FID(cell(model, "image", 256, tmp_path, cache)), KID(cell(model, "image", 256, tmp_path, cache))
    for i in range(0, 256, 128):
        batch = x[i:i + 128]
        fid.update(i // 128, batch, batch)
        kid.update(i // 128, batch, batch)
    calls_for_samples = len(calls)
    assert {**fid.result(), **kid.result()} == separate
    assert calls_for_samples == 2  # two batches, not four


@pytest.mark.parametrize("d", [2, 16, 192])
def test_sliced_wasserstein_equals_torch_sorted_projections(d):
    """numpy sorts the projections (faster): the value is exactly torch.sort's."""
    from benchmarks.metrics.distances import sliced_wasserstein

    g = torch.Generator().manual_seed(d)
    x, y = torch.randn(1000, d, generator=g, dtype=torch.float64), 0.5 + torch.randn(1000, d, generator=g, dtype=torch.float64)
    dirs = torch.randn(d, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    expected = float(((torch.sort(x @ dirs, dim=0)[0] - torch.sort(y @ dirs, dim=0)[0]) ** 2).mean().sqrt())
    assert sliced_wasserstein(x, y) == expected
