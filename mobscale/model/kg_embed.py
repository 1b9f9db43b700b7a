"""Urban knowledge-graph embeddings of base stations (TuckER via pykeen) and the neighbour table (eq. 10).

Triples (head, relation, tail) -> pykeen ``TriplesFactory`` -> ``TuckER`` trained with the LCWA loop
(1-N scoring, as in the TuckER paper), seeded, a few epochs on CPU. BS entities are named ``"bs:<id>"``
(``<id>`` indexes the root ``bs`` dimension of the city store).

Neighbours: for every location i, the K nearest locations in embedding space (Euclidean) among those
within ``max_distance_km`` of i geographically (all others when no threshold). A location with fewer than K
candidates keeps fewer (padded with -1); one with none is isolated and the graph is disconnected (see
:mod:`mobscale.diffusion.discrete` for what that means and how the teleport rate handles it).
"""

from __future__ import annotations

import numpy as np
import torch

from mobscale.errors import InputDataError
from mobscale.log import get_logger

log = get_logger(__name__)


def train_tucker(
    heads, relations, tails, *, dim: int = 32, relation_dim: int = 8, epochs: int = 50, lr: float = 1e-2,
    batch_size: int = 256, seed: int = 0, progress: bool = False,
) -> tuple[dict[str, int], np.ndarray, list[float]]:
    """Train TuckER on the triples. Returns (entity label -> row, embeddings (n_entities, dim) float32, losses)."""
    from pykeen.models import TuckER
    from pykeen.training import LCWATrainingLoop
    from pykeen.triples import TriplesFactory

    # str() per element: stores may hold numpy StringDType / object arrays, which do not cast to '<U' directly
    triples = np.array([[str(h), str(r), str(t)] for h, r, t in zip(heads, relations, tails)], dtype=str).reshape(-1, 3)
    if triples.shape[0] == 0:
        raise InputDataError("users/kg_*: the knowledge graph has no triples")
    tf = TriplesFactory.from_labeled_triples(triples)
    torch.manual_seed(seed)
    model = TuckER(triples_factory=tf, embedding_dim=dim, relation_dim=relation_dim, random_seed=seed)
    # no automatic memory optimisation: it probes batch sizes with a throw-away training epoch (for GPUs)
    loop = LCWATrainingLoop(model=model, triples_factory=tf, optimizer="Adam", optimizer_kwargs={"lr": lr}, automatic_memory_optimization=False)
    # LCWA trains on unique (head, relation) pairs and drops the last partial batch (TuckER has batch norm):
    # a batch larger than the number of pairs would leave no batch at all
    n_pairs = int(np.unique(tf.mapped_triples[:, :2].numpy(), axis=0).shape[0])
    losses = loop.train(
        triples_factory=tf, num_epochs=epochs, batch_size=max(2, min(batch_size, n_pairs)), use_tqdm=progress, use_tqdm_batch=False, pin_memory=False,
    ) or []
    model.eval()
    with torch.no_grad():
        emb = model.entity_representations[0](indices=None).detach().cpu().numpy().astype(np.float32)
    log.info("TuckER: %d triples, %d entities, %d relations, %d epochs, loss %.4f -> %.4f",
             tf.num_triples, tf.num_entities, tf.num_relations, epochs, losses[0] if losses else float("nan"), losses[-1] if losses else float("nan"))
    return dict(tf.entity_to_id), emb, list(losses)


def bs_embeddings(entity_to_id: dict[str, int], emb: np.ndarray, bs_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``emb`` for entities ``"bs:<id>"``. Returns (E (N, dim) float32, found (N,) bool); missing BS get
    the mean embedding (and found=False)."""
    bs_ids = np.asarray(bs_ids, dtype=np.int64)
    rows = np.array([entity_to_id.get(f"bs:{int(b)}", -1) for b in bs_ids])
    found = rows >= 0
    out = np.empty((bs_ids.size, emb.shape[1]), dtype=np.float32)
    mean = emb[rows[found]].mean(0) if found.any() else np.zeros(emb.shape[1], np.float32)
    out[found] = emb[rows[found]]
    out[~found] = mean
    return out, found


def knn_neighbours(emb: np.ndarray, coords_km: np.ndarray, k: int, max_distance_km: float | None = None) -> np.ndarray:
    """Top-K embedding neighbours within a geographic radius (eq. 10).

    emb: (N, d); coords_km: (N, 2) planar coordinates in km. Returns (N, K) int64, -1 where fewer than K
    candidates exist. Memory O(N^2) float32 (fine for a few thousand locations).
    """
    emb = np.asarray(emb, dtype=np.float64)
    xy = np.asarray(coords_km, dtype=np.float64)
    N = emb.shape[0]
    if xy.shape != (N, 2):
        raise InputDataError(f"knn_neighbours: coords shape {xy.shape} does not match {N} embeddings")
    sq = (emb**2).sum(1)
    d_emb = sq[:, None] + sq[None] - 2 * emb @ emb.T
    d_geo = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    cand = np.ones((N, N), dtype=bool) if max_distance_km is None else d_geo <= max_distance_km
    np.fill_diagonal(cand, False)
    d_emb = np.where(cand, d_emb, np.inf)
    kk = min(k, N - 1)
    order = np.argsort(d_emb, axis=1, kind="stable")[:, :kk]
    ok = np.isfinite(np.take_along_axis(d_emb, order, 1))
    out = np.full((N, k), -1, dtype=np.int64)
    out[:, :kk] = np.where(ok, order, -1)
    n_short = int((ok.sum(1) < k).sum())
    if n_short:
        log.info("KG neighbours: %d of %d locations have fewer than K=%d candidates within %s km", n_short, N, k, max_distance_km)
    return out
