"""Coalition utilities: the value of a set of providers, evaluated in batches and cached by bitmask."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.fl.models import Model, SoftmaxRegression

METRICS: tuple[str, ...] = ("accuracy", "neg_loss")
SHARES: tuple[str, ...] = ("coalition", "round")


def masks_from_ints(ints: np.ndarray, n: int) -> np.ndarray:
    """Boolean coalition masks ``(B, n)`` from integer bitmasks (bit ``i`` set: provider ``i`` is in)."""
    ints = np.asarray(ints, dtype=np.int64)
    return ((ints[:, None] >> np.arange(n, dtype=np.int64)) & 1).astype(bool)


def all_masks(n: int) -> np.ndarray:
    """All ``2**n`` coalitions as boolean masks ``(2**n, n)``, row ``k`` being bitmask ``k``."""
    return masks_from_ints(np.arange(1 << int(n), dtype=np.int64), int(n))


class Utility:
    """A cooperative game on ``n`` players, evaluated on many coalitions at once.

    Subclasses implement :meth:`_evaluate` on a batch of boolean masks; the
    public :meth:`values` answers from a cache keyed by the coalition's
    bitmask and evaluates only the coalitions it has not seen, in one batch.

    Attributes
    ----------
    n : int
        Number of players.
    evaluations : int
        Coalitions actually evaluated so far (cache misses).
    """

    n: int

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ConfigError(f"a game needs a positive number of players, got {n!r}")
        self.n = int(n)
        self.evaluations = 0
        self._cache: dict[bytes, float] = {}

    def _evaluate(self, masks: np.ndarray) -> np.ndarray:
        """Values of the coalitions ``masks`` (bool ``(B, n)``), float64 ``(B,)``; no caching."""
        raise NotImplementedError

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        """Evaluate coalitions without the cache (for callers that enumerate every coalition once)."""
        masks = self._check(masks)
        self.evaluations += masks.shape[0]
        return np.asarray(self._evaluate(masks), dtype=np.float64)

    def _check(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 2 or masks.shape[1] != self.n:
            raise ConfigError(f"coalition masks must have shape (B, {self.n}), got {masks.shape}")
        return masks

    def values(self, masks: np.ndarray) -> np.ndarray:
        """Values of the coalitions ``masks`` (bool ``(B, n)``), float64 ``(B,)``, cached by bitmask.

        Parameters
        ----------
        masks : numpy.ndarray
            One row per coalition, ``True`` where the player is in.

        Returns
        -------
        numpy.ndarray
            The value of each row.
        """
        masks = self._check(masks)
        return self._cached(masks, lambda rows: self.evaluate(masks[rows]))

    def _cached(self, masks: np.ndarray, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Values of ``masks`` from the cache, calling ``compute(rows)`` once for the rows not seen yet."""
        keys = [row.tobytes() for row in np.packbits(masks, axis=1)]
        out = np.empty(len(keys))
        missing: dict[bytes, int] = {}
        for b, k in enumerate(keys):
            v = self._cache.get(k)
            if v is None:
                missing.setdefault(k, b)
            else:
                out[b] = v
        if missing:
            rows = np.fromiter(missing.values(), dtype=np.int64, count=len(missing))
            vals = np.asarray(compute(rows), dtype=np.float64)
            for k, v in zip(missing, vals.tolist()):
                self._cache[k] = v
            for b, k in enumerate(keys):
                if k in missing:
                    out[b] = self._cache[k]
        return out

    def aggregation_weights(self) -> np.ndarray:
        """Aggregation weight of each player ``(n,)`` (all 1 unless the game aggregates by weight)."""
        return np.ones(self.n)

    def coefficients(self, masks: np.ndarray) -> np.ndarray:
        """Each member's coefficient in its coalition's aggregate ``(B, n)``: its aggregation weight over the coalition's."""
        cw = np.asarray(masks, dtype=bool) * self.aggregation_weights()
        tot = cw.sum(axis=1, keepdims=True)
        return np.divide(cw, tot, out=np.zeros_like(cw, dtype=np.float64), where=tot > 0)

    def seen(self) -> tuple[np.ndarray, np.ndarray]:
        """Every coalition evaluated so far through the cache and its value: bool ``(B, n)``, float64 ``(B,)``."""
        if not self._cache:
            return np.zeros((0, self.n), dtype=bool), np.zeros(0)
        packed = np.frombuffer(b"".join(self._cache), dtype=np.uint8).reshape(len(self._cache), -1)
        masks = np.unpackbits(packed, axis=1)[:, : self.n].astype(bool)
        return masks, np.fromiter(self._cache.values(), dtype=np.float64, count=len(self._cache))

    def new_walk(self, size: int) -> object:
        """State for walking ``size`` permutations in lockstep (see :meth:`walk_values`); None by default."""
        return None

    def walk_values(self, walk: object, rows: np.ndarray, players: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Values of the prefixes of walk rows ``rows`` after each added ``players[j]``; ``masks`` are those prefixes.

        The default evaluates ``masks`` through the cache; a utility may keep
        running sums in ``walk`` to make each step cheaper.
        """
        return self.values(masks)

    def value(self, members: Sequence[int]) -> float:
        """Value of the single coalition made of the players ``members``."""
        m = np.zeros((1, self.n), dtype=bool)
        m[0, list(members)] = True
        return float(self.values(m)[0])

    def grand(self) -> float:
        """Value of the grand coalition (every player)."""
        return float(self.values(np.ones((1, self.n), dtype=bool))[0])

    def empty(self) -> float:
        """Value of the empty coalition."""
        return float(self.values(np.zeros((1, self.n), dtype=bool))[0])


class FunctionUtility(Utility):
    """A game given by a vectorised function ``fn(masks) -> values`` (synthetic games, tests).

    Parameters
    ----------
    n : int
        Number of players.
    fn : callable
        Maps bool masks ``(B, n)`` to float values ``(B,)``.
    """

    def __init__(self, n: int, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        super().__init__(n)
        self._fn = fn

    def _evaluate(self, masks: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(masks), dtype=np.float64).reshape(masks.shape[0])


class AggregationUtility(Utility):
    """Value of a coalition of providers: quality of the round's starting model plus their aggregated updates.

    The model of coalition ``S`` is ``params + sum_{i in S} w_i u_i / sum_{i in S} w_i``
    (``share="coalition"``: FedAvg of the coalition's updates onto the round's
    starting model) or ``params + sum_{i in S} w_i u_i / sum_{i in N} w_i``
    (``share="round"``: each member adds the very term it has in the round's
    aggregate, so a short honest update, from few samples, is not valued for
    diluting longer ones); the empty coalition keeps ``params``. Its value is the accuracy (of the
    predicted class, the first largest logit as in ``Model.predict``, so a tie
    is one guess, not a hit), or minus the mean cross-entropy, on the
    validator's held-out data. For a
    :class:`~fedmarket.fl.models.SoftmaxRegression` the logits are linear in
    the parameters, so every coalition's logits are one matrix product of the
    coalition weights with the providers' precomputed logit deltas; other
    models build each coalition's parameters (one product) and run the model.
    The linear path holds logits in float32 (half the memory traffic); along
    permutation walks it keeps running sums, so a step adds one provider.

    Parameters
    ----------
    model : Model
        The job's model.
    params : numpy.ndarray
        The round's starting global parameters ``(n_params,)``.
    updates : numpy.ndarray
        The providers' deltas (submitted model minus ``params``), ``(n, n_params)``.
    X, y : numpy.ndarray
        The validator's held-out features and labels.
    weights : sequence of float, optional
        Aggregation weight of each provider (e.g. sample counts), ``>= 0``; default all 1.
    metric : {"accuracy", "neg_loss"}, optional
        What a coalition's model is worth (default accuracy).
    share : {"coalition", "round"}, optional
        What a member's update is weighted against (default the coalition's total weight).
    chunk_elems : int, optional
        Upper bound on the logits held in memory at once (floats), default 2**24.
    """

    def __init__(
        self,
        model: Model,
        params: np.ndarray,
        updates: np.ndarray,
        X: np.ndarray,
        y: np.ndarray,
        weights: Sequence[float] | None = None,
        *,
        metric: str = "accuracy",
        share: str = "coalition",  # or "round"
        chunk_elems: int = 1 << 24,
    ) -> None:
        U = np.asarray(updates, dtype=np.float64)
        if U.ndim != 2 or U.shape[0] < 1:
            raise ConfigError(f"updates must be a non-empty 2-D array (n, n_params), got shape {U.shape}")
        super().__init__(U.shape[0])
        if metric not in METRICS:
            raise ConfigError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
        if share not in SHARES:
            raise ConfigError(f"unknown share {share!r}; choose one of: {', '.join(SHARES)}")
        self.share = share
        params = model.check_params(params)
        if U.shape[1] != params.shape[0]:
            raise ConfigError(f"updates have {U.shape[1]} parameters, the model {params.shape[0]}")
        if not np.all(np.isfinite(U)):
            raise ConfigError("updates must be finite")
        w = np.ones(self.n) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (self.n,) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ConfigError(f"need {self.n} finite non-negative weights, got {w!r}")
        X = model.check_X(X)
        self.y = model.check_y(X, y)
        self.model, self.params, self.U, self.w, self.X = model, params, U, w, X
        self.metric = metric
        self.chunk_elems = int(chunk_elems)
        m, c = X.shape[0], model.n_classes
        self._linear = isinstance(model, SoftmaxRegression)
        if self._linear:
            # logits of every coalition = L0 + a @ L, laid out class-major (c, m) so the
            # reductions over classes run across contiguous rows; float32 halves the traffic
            k = model.n_features * c
            dW = U[:, :k].reshape(self.n, model.n_features, c).transpose(1, 0, 2).reshape(model.n_features, self.n * c)
            L = (X @ dW).reshape(m, self.n, c) + U[None, :, k:]  # one GEMM for every provider, (m, n, c)
            L0 = X @ params[:k].reshape(model.n_features, c) + params[k:]  # (m, c)
            self._L = np.ascontiguousarray(L.transpose(1, 2, 0), dtype=np.float32).reshape(self.n, c * m)
            self._L0 = np.ascontiguousarray(L0.T, dtype=np.float32).reshape(c * m)
        self._Lw: np.ndarray | None = None

    def new_walk(self, size: int) -> object:
        """Running weighted sums of logit deltas ``(size, c*m)`` and of weights, one per walked permutation."""
        if not self._linear:
            return None
        return [np.zeros((size, self._L.shape[1]), dtype=np.float32), np.zeros(size)]

    def walk_values(self, walk, rows, players, masks):
        """One lockstep step: add each player's weighted logit delta to its row's running sum, score only unseen prefixes."""
        if walk is None:
            return self.values(masks)
        S, W = walk
        if self._Lw is None:
            self._Lw = self._L * self.w[:, None].astype(np.float32)  # weighted logit deltas, built on first use
        for r, p in zip(rows.tolist(), players.tolist()):
            # in place, row by row: each row stays in cache, no (rows, c*m) gather or scatter temporaries
            np.add(S[r], self._Lw[p], out=S[r])
        W[rows] += self.w[players]
        m, c = self.X.shape[0], self.model.n_classes
        true_at = self.y * m + np.arange(m)  # the true class's logit in a class-major (c*m) row
        buf = np.empty(c * m, dtype=np.float32)

        def compute(sel: np.ndarray) -> np.ndarray:
            # row by row into one cache-resident buffer: no (B, c*m) copies of the running sums
            self.evaluations += sel.size
            out = np.empty(sel.size)
            for j, r in enumerate(rows[sel].tolist()):
                tot = W[r] if self.share == "coalition" else self.w.sum()
                np.multiply(S[r], np.float32(1.0 / tot) if tot > 0 else np.float32(0.0), out=buf)
                np.add(buf, self._L0, out=buf)
                out[j] = self._score(buf.reshape(1, c, m), buf[true_at].reshape(1, m))[0]
            return out

        return self._cached(self._check(masks), compute)

    def aggregation_weights(self) -> np.ndarray:
        """Each provider's aggregation weight ``(n,)``."""
        return self.w.copy()

    def coefficients(self, masks: np.ndarray) -> np.ndarray:
        """Each member's coefficient in its coalition's aggregate ``(B, n)`` (see ``share``)."""
        if self.share == "coalition":
            return super().coefficients(masks)
        return np.asarray(masks, dtype=bool) * (self.w / self.w.sum() if self.w.sum() > 0 else 0.0)

    def _score(self, logits: np.ndarray, true: np.ndarray) -> np.ndarray:
        """Metric of a batch of class-major logits ``(B, c, m)`` given the true-class logits ``(B, m)``."""
        if self.metric == "accuracy":
            # the class the model predicts is the first largest logit (`Model.predict`): a tie is not a hit
            # for every tied class (the all-zero model would score 1.0), only for the first of them
            return (logits.argmax(axis=1) == self.y).mean(axis=1, dtype=np.float64)
        top = logits.max(axis=1)
        lse = top + np.log(np.exp(logits - top[:, None, :]).sum(axis=1))
        return (true - lse).mean(axis=1, dtype=np.float64)

    def _evaluate(self, masks: np.ndarray) -> np.ndarray:
        A = self.coefficients(masks)
        m, c = self.X.shape[0], self.model.n_classes
        out = np.empty(masks.shape[0])
        step = max(1, self.chunk_elems // (m * c))
        rows = np.arange(m)
        for s in range(0, masks.shape[0], step):
            a = A[s : s + step]
            if self._linear:
                a32 = a.astype(np.float32)
                logits = (a32 @ self._L + self._L0).reshape(-1, c, m)
            else:
                P = self.params + a @ self.U
                logits = np.stack([self.model.logits(p, self.X).T for p in P])
            true = logits[:, self.y, rows]  # the true class's logit, taken from the same numbers
            out[s : s + step] = self._score(logits, true)
        return out
