"""KG embeddings (TuckER via pykeen) and the neighbour table; the Markov-chain and EPR trajectory baselines."""

from __future__ import annotations

import numpy as np
import pytest

from mobscale.errors import InputDataError
from mobscale.model.kg_embed import bs_embeddings, knn_neighbours, train_tucker
from mobscale.model.mobility_baselines import EPRMobility, MarkovChainMobility


def _kg(n_bs=10):
    rows = []
    for b in range(n_bs):
        rows += [(f"bs:{b}", "BaseLocateAt", f"region:{b // 5}"), (f"bs:{b}", "BaseBorderBy", f"bs:{(b + 1) % n_bs}"),
                 (f"bs:{b}", "ServedBy", f"poi:food:{b % 3}")]
    return zip(*rows)


def test_tucker_is_seeded_and_maps_bs_entities():
    h, r, t = _kg()
    ent1, e1, loss1 = train_tucker(h, r, t, dim=8, relation_dim=4, epochs=3, seed=7)
    h, r, t = _kg()
    ent2, e2, loss2 = train_tucker(h, r, t, dim=8, relation_dim=4, epochs=3, seed=7)
    assert ent1 == ent2 and np.array_equal(e1, e2) and loss1 == loss2
    assert e1.shape == (len(ent1), 8) and np.isfinite(e1).all()
    emb, found = bs_embeddings(ent1, e1, np.array([3, 0, 42]))
    assert found.tolist() == [True, True, False]
    assert np.array_equal(emb[0], e1[ent1["bs:3"]])
    np.testing.assert_allclose(emb[2], e1[[ent1[f"bs:{b}"] for b in (3, 0)]].mean(0), rtol=1e-6)


def test_tucker_rejects_empty_graph():
    with pytest.raises(InputDataError, match="no triples"):
        train_tucker([], [], [], epochs=1)


def test_knn_neighbours_respect_distance_threshold_and_pad():
    rng = np.random.default_rng(0)
    xy = np.array([[0, 0], [0, 1], [0, 2], [0, 3], [10, 10]], dtype=float)
    emb = rng.normal(size=(5, 4))
    nb = knn_neighbours(emb, xy, k=2, max_distance_km=1.5)
    assert nb.shape == (5, 2)
    assert nb[4].tolist() == [-1, -1]  # isolated: nothing within 1.5 km
    assert set(nb[0][nb[0] >= 0]) == {1}  # only one candidate within reach
    for i in range(4):
        for j in nb[i][nb[i] >= 0]:
            assert np.hypot(*(xy[i] - xy[j])) <= 1.5 and j != i
    # without threshold: the K nearest in embedding space
    nb2 = knn_neighbours(emb, xy, k=2)
    d = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert nb2.tolist() == np.argsort(d, 1)[:, :2].tolist()


def test_markov_chain_recovers_transitions():
    # a deterministic cycle 0 -> 1 -> 2 -> 0 with occasional stays
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(50):
        r = [int(rng.integers(3))]
        for _ in range(39):
            r.append(r[-1] if rng.random() < 0.3 else (r[-1] + 1) % 3)
        rows.append(r)
    traj = np.array(rows)
    mc = MarkovChainMobility(smoothing=0.0).fit(traj)
    out = mc.sample(200, 40, seed=1)
    assert out.shape == (200, 40) and out.min() >= 0 and out.max() <= 2
    steps = out[:, 1:] - out[:, :-1]
    assert set(np.unique(steps % 3)) <= {0, 1}  # never goes backwards
    stay = float((steps == 0).mean())
    assert abs(stay - 0.3) < 0.03
    assert np.array_equal(out, mc.sample(200, 40, seed=1))


def test_markov_chain_backs_off_to_popularity_for_unseen_rows():
    traj = np.array([[0, 1, 2, 3]])  # location 3 has no outgoing transitions
    mc = MarkovChainMobility(smoothing=1.0).fit(traj, n_locations=4)
    out = mc.sample(500, 6, seed=0)
    assert out.max() < 4 and out.min() >= 0


def test_epr_fit_and_sample():
    xy = np.random.default_rng(0).random((30, 2)) * 10
    # generate training data with known rho, gamma, then fit them back
    gen = EPRMobility(rho=0.6, gamma=0.21)
    gen.fit(np.random.default_rng(1).integers(0, 30, (40, 48)), xy)
    gen.rho, gen.gamma = 0.6, 0.21
    gen.stays = np.array([1, 2, 3, 4])
    data = gen.sample(400, 96, seed=2)
    fit = EPRMobility().fit(data, xy)
    assert abs(fit.rho - 0.6) < 0.12 and abs(fit.gamma - 0.21) < 0.12
    out = fit.sample(20, 48, seed=3)
    assert out.shape == (20, 48) and out.min() >= 0 and out.max() < 30
    assert np.array_equal(out, fit.sample(20, 48, seed=3))


def test_baselines_reject_bad_input():
    with pytest.raises(InputDataError):
        MarkovChainMobility().fit(np.array([[0, -1, 2]]))
    with pytest.raises(InputDataError):
        EPRMobility().fit(np.array([[0, 5]]), np.zeros((3, 2)))
