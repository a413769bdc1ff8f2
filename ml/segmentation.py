"""Customer segmentation: KMeans on value/behaviour features, named from the profiles,
with segment ids that stay stable across retrains.

* **Scaling.** Every feature is ``log1p``-transformed (counts, days and money are
  right-skewed) and standardised (``StandardScaler``).
* **Choice of k.** For k in ``k_min..k_max`` a ``KMeans`` (k-means++, ``n_init`` starts,
  fixed ``random_state``) is fitted on a fixed-seed sample of ``selection_sample`` rows;
  k is the one with the best mean silhouette on a sample of ``silhouette_sample`` of those
  rows, ties (within ``silhouette_tolerance``) going to the smaller k. The chosen k is then
  refitted on up to ``fit_sample`` rows (the scaler too), so a million customers cost a
  sample, not a million-row KMeans per k.
* **Determinism.** Rows are put in a canonical order (sorted by their feature values)
  before fitting, so the same customers in any row order give the same model.
* **Names.** Deterministic rules over each cluster's profile, read in this order: a
  *value tier* from the cluster centre of the monetary feature in the scaled space
  (z-score of log1p): "high-value" from ``high_value_z`` (and always the top cluster by value
  when it is above average), "low-value" up to ``low_value_z``; a *status* from the mean
  days since the last order ("active" up to ``active_days``, "at-risk" up to
  ``lapsed_days``, "lapsed" beyond: the lifecycle-stage thresholds of DESIGN.md §6);
  "engaged" when the web-engagement centre is at least ``engaged_z``; and a *kind* from
  tenure and orders ("newcomers" when the mean tenure is at most ``new_days``, "one-time
  buyers" under 1.5 mean orders, "loyal customers" from ``loyal_orders``, else "repeat
  buyers"). E.g. "high-value active engaged loyal customers", "low-value lapsed one-time
  buyers", "engaged newcomers". Tiers use z-scores rather than ratios to the mean because
  value and visits are heavily skewed: one big cluster of whales would make every other
  cluster "low-value". Clusters that get the same name are told apart by the feature on
  which they differ most ("..., more orders" / "..., fewer orders").
* **Stable ids.** On the first fit ids are 1..k in descending order of value. A retrain
  given the ``previous`` model maps its new centroids into the previous model's scaled
  space and matches them to the previous centroids with the Hungarian algorithm
  (``scipy.optimize.linear_sum_assignment``) on Euclidean distance; a match further than
  ``match_max_distance`` (in standard deviations) is not a match. Matched clusters keep
  their id; the others get new ids above every id used before (ids are never reused).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

#: The roles naming understands, and the words that tell two same-named clusters apart
#: when they differ most on that role (higher mean first, then lower).
ROLE_WORDS: dict[str, tuple[str, str]] = {
    "recency": ("less recent", "more recent"),
    "frequency": ("more orders", "fewer orders"),
    "monetary": ("higher value", "lower value"),
    "tenure": ("longer-standing", "newer"),
    "engagement": ("more web visits", "fewer web visits"),
}

DEFAULT_NAMING: dict[str, float] = {
    "new_days": 60,
    "active_days": 90,
    "lapsed_days": 180,
    "loyal_orders": 4,
    "high_value_z": 0.75,
    "low_value_z": -0.75,
    "engaged_z": 0.5,
}
#: Keys of a spec's ``params`` block (the constructor's settings).
SPEC_PARAMS = (
    "k_min",
    "k_max",
    "silhouette_sample",
    "silhouette_tolerance",
    "selection_sample",
    "fit_sample",
    "n_init",
    "random_state",
    "match_max_distance",
)
#: Below this many rows KMeans and the silhouette run on one thread: OpenMP workers that
#: spin-wait make small fits several times slower on a busy machine, not faster.
SINGLE_THREAD_ROWS = 50_000


@dataclass(eq=False)  # fitted state holds arrays and frames: compare models by to_dict()
class SegmentationModel:
    """log1p + StandardScaler + KMeans with k by silhouette, named, ids stable across fits."""

    features: tuple[str, ...]
    roles: Mapping[str, str | None] = field(default_factory=dict)
    k_min: int = 3
    k_max: int = 8
    silhouette_sample: int = 5000
    silhouette_tolerance: float = 0.005
    selection_sample: int = 20_000
    fit_sample: int = 100_000
    n_init: int = 10
    random_state: int = 42
    match_max_distance: float = 2.0
    naming: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_NAMING))
    # fitted state
    scaler: StandardScaler | None = None
    kmeans: KMeans | None = None
    label_ids: np.ndarray | None = None  # KMeans label -> segment id
    label_names: list[str] | None = None  # KMeans label -> segment name
    segments: pd.DataFrame | None = None
    silhouette_by_k: dict[int, float] = field(default_factory=dict)
    max_segment_id: int = 0
    id_matches: dict[int, float] = field(default_factory=dict)  # kept id -> match distance

    def __post_init__(self) -> None:
        """Check the configuration (features, roles, k range); raise ValueError if invalid."""
        self.features = tuple(self.features)
        if not self.features:
            raise ValueError("SegmentationModel needs at least one feature")
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"duplicate features in {list(self.features)}")
        unknown_roles = set(self.roles) - set(ROLE_WORDS)
        if unknown_roles:
            raise ValueError(f"unknown role(s) {sorted(unknown_roles)}; known: {list(ROLE_WORDS)}")
        bad = {r: f for r, f in self.roles.items() if f is not None and f not in self.features}
        if bad:
            raise ValueError(f"role feature(s) {bad} are not among the features {self.features}")
        if not 2 <= self.k_min <= self.k_max:
            raise ValueError(
                f"need 2 <= k_min <= k_max, got k_min={self.k_min}, k_max={self.k_max}"
            )
        self.naming = {**DEFAULT_NAMING, **dict(self.naming)}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> SegmentationModel:
        """Return an unfitted model configured from a ``models/segmentation.yaml`` spec."""
        params = dict(spec.get("params", {}))
        unknown = sorted(set(params) - set(SPEC_PARAMS))
        if unknown:
            raise ValueError(
                f"segmentation spec: unknown params {unknown}; known: {list(SPEC_PARAMS)}"
            )
        unknown = sorted(set(spec.get("naming", {})) - set(DEFAULT_NAMING))
        if unknown:
            raise ValueError(
                f"segmentation spec: unknown naming keys {unknown}; known: {list(DEFAULT_NAMING)}"
            )
        return cls(
            features=tuple(spec["features"]),
            roles=dict(spec.get("roles", {})),
            naming=dict(spec.get("naming", {})),
            **params,
        )

    # ------------------------------------------------------------------ fit

    def _matrix(self, features: pd.DataFrame) -> np.ndarray:
        """Return the log1p feature matrix of `features`, or raise ValueError naming bad data."""
        missing = [c for c in self.features if c not in features.columns]
        if missing:
            raise ValueError(
                f"segmentation features lack column(s) {missing}; they have "
                f"{list(features.columns)}"
            )
        frame = features[list(self.features)]
        try:
            values = frame.to_numpy(dtype="float64")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"segmentation features must be numeric: {exc}") from exc
        problems = []
        for i, name in enumerate(self.features):
            col = values[:, i]
            if not np.isfinite(col).all():
                problems.append(f"{name} has {int((~np.isfinite(col)).sum())} missing/infinite")
            elif (col < 0).any():
                problems.append(f"{name} has {int((col < 0).sum())} negative value(s)")
        if problems:
            raise ValueError(
                "segmentation features must be finite and >= 0 (fill missing values "
                "upstream): " + "; ".join(problems)
            )
        return np.log1p(values)

    def fit(
        self, features: pd.DataFrame, previous: SegmentationModel | None = None
    ) -> SegmentationModel:
        """Return self fitted on `features` (one row per customer); ids matched to `previous`."""
        if previous is not None:
            previous._check_fitted()
            if tuple(previous.features) != self.features:
                raise ValueError(
                    f"previous model uses features {list(previous.features)}, this one "
                    f"{list(self.features)}: ids cannot be matched (fit with previous=None "
                    "to start a new id series)"
                )
        logged = self._matrix(features)
        n = len(logged)
        if n < self.k_min + 1:
            raise ValueError(f"segmentation needs more than k_min={self.k_min} customers, got {n}")
        # Canonical row order: the same customers in any order give the same model.
        logged = logged[np.lexsort(logged.T[::-1])]
        rng = np.random.default_rng(self.random_state)

        def subsample(rows: np.ndarray, size: int) -> np.ndarray:
            """Return at most `size` of `rows`, a fixed-seed sample kept in canonical order."""
            if len(rows) <= size:
                return rows
            return rows[np.sort(rng.choice(len(rows), size, replace=False))]

        fit_rows = subsample(logged, self.fit_sample)
        self.scaler = StandardScaler().fit(fit_rows)
        scaled = self.scaler.transform(fit_rows)
        selection = subsample(scaled, self.selection_sample)
        sample = subsample(selection, self.silhouette_sample)
        n_distinct = len(np.unique(selection, axis=0))
        k_max = min(self.k_max, n_distinct - 1, len(sample) - 1)
        if k_max < self.k_min:
            raise ValueError(
                f"only {n_distinct} distinct customer profiles: cannot form k_min={self.k_min} "
                "segments"
            )
        fits: dict[int, KMeans] = {}
        self.silhouette_by_k = {}
        with threadpool_limits(limits=1 if len(selection) < SINGLE_THREAD_ROWS else None):
            for k in range(self.k_min, k_max + 1):
                km = KMeans(n_clusters=k, n_init=self.n_init, random_state=self.random_state)
                km.fit(selection)
                labels = km.predict(sample)
                single = len(np.unique(labels)) == 1
                score = -1.0 if single else float(silhouette_score(sample, labels))
                fits[k] = km
                self.silhouette_by_k[k] = score
        best = max(self.silhouette_by_k.values())
        k = min(k for k, s in self.silhouette_by_k.items() if s >= best - self.silhouette_tolerance)
        self.kmeans = fits[k]
        if len(scaled) > len(selection):  # the chosen k, refitted on all the fitting rows
            with threadpool_limits(limits=1 if len(scaled) < SINGLE_THREAD_ROWS else None):
                km = KMeans(n_clusters=k, n_init=self.n_init, random_state=self.random_state)
                self.kmeans = km.fit(scaled)

        labels = self.kmeans.predict(self.scaler.transform(logged))
        profile = self._profile(features_logged=logged, labels=labels)
        self.label_ids = self._assign_ids(profile, previous)
        self.label_names = self._names(profile)
        self.segments = self._segments_table(profile)
        return self

    def _profile(self, features_logged: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
        """Return per KMeans label: size and mean of each feature in original units."""
        original = pd.DataFrame(np.expm1(features_logged), columns=list(self.features))
        original["_label"] = labels
        k = self.kmeans.n_clusters
        grouped = original.groupby("_label")
        profile = grouped[list(self.features)].mean().reindex(range(k))
        profile["size"] = grouped.size().reindex(range(k)).fillna(0).astype("int64")
        return profile

    def _value_order(self, profile: pd.DataFrame) -> np.ndarray:
        """Return KMeans labels ordered by descending value (monetary, then frequency roles)."""
        keys = [self.roles.get("monetary"), self.roles.get("frequency")]
        keys = [k for k in keys if k] or [self.features[0]]
        # lexsort: last key is primary; negate for descending; label breaks exact ties
        columns = [np.arange(len(profile))] + [-profile[c].to_numpy() for c in reversed(keys)]
        return np.lexsort(columns)

    def _assign_ids(self, profile: pd.DataFrame, previous: SegmentationModel | None) -> np.ndarray:
        """Return the segment id of each KMeans label (matched to `previous` when given)."""
        k = len(profile)
        ids = np.zeros(k, dtype="int64")
        self.id_matches = {}
        if previous is None:
            for rank, label in enumerate(self._value_order(profile), start=1):
                ids[label] = rank
            self.max_segment_id = k
            return ids
        # new centroids -> log1p units -> the previous model's scaled space
        centroids = previous.scaler.transform(
            self.scaler.inverse_transform(self.kmeans.cluster_centers_)
        )
        old = previous.kmeans.cluster_centers_
        distance = np.linalg.norm(centroids[:, None, :] - old[None, :, :], axis=2)
        rows, cols = linear_sum_assignment(distance)
        next_id = previous.max_segment_id
        for row, col in zip(rows, cols, strict=True):
            if distance[row, col] <= self.match_max_distance:
                ids[row] = previous.label_ids[col]
                self.id_matches[int(ids[row])] = float(distance[row, col])
        for label in self._value_order(profile):  # unmatched: new ids, in value order
            if ids[label] == 0:
                next_id += 1
                ids[label] = next_id
        self.max_segment_id = max(next_id, int(ids.max()))
        return ids

    def _names(self, profile: pd.DataFrame) -> list[str]:
        """Return a unique human-readable name for each KMeans label from its profile."""
        rules = self.naming
        centers = pd.DataFrame(self.kmeans.cluster_centers_, columns=list(self.features))

        def role_means(role: str) -> np.ndarray | None:
            column = self.roles.get(role)
            return None if not column else profile[column].to_numpy(dtype="float64")

        def role_z(role: str) -> np.ndarray | None:
            column = self.roles.get(role)
            return None if not column else centers[column].to_numpy(dtype="float64")

        value = role_z("monetary")
        recency = role_means("recency")
        engagement = role_z("engagement")
        tenure = role_means("tenure")
        frequency = role_means("frequency")
        names: list[str] = []
        for label in range(len(profile)):
            words: list[str] = []
            if value is not None:
                top = int(np.argmax(value)) == label and value[label] > 0
                if top or value[label] >= rules["high_value_z"]:
                    words.append("high-value")
                elif value[label] <= rules["low_value_z"]:
                    words.append("low-value")
            is_new = tenure is not None and tenure[label] <= rules["new_days"]
            if recency is not None and not is_new:
                days = recency[label]
                words.append(
                    "active"
                    if days <= rules["active_days"]
                    else "at-risk"
                    if days <= rules["lapsed_days"]
                    else "lapsed"
                )
            if engagement is not None and engagement[label] >= rules["engaged_z"]:
                words.append("engaged")
            if is_new:
                words.append("newcomers")
            elif frequency is not None:
                orders = frequency[label]
                words.append(
                    "one-time buyers"
                    if orders < 1.5
                    else "loyal customers"
                    if orders >= rules["loyal_orders"]
                    else "repeat buyers"
                )
            else:
                words.append("customers")
            names.append(" ".join(words))
        return self._disambiguate(names, profile)

    def _disambiguate(self, names: list[str], profile: pd.DataFrame) -> list[str]:
        """Return `names` made unique by the role on which same-named clusters differ most."""
        out = list(names)
        centers = pd.DataFrame(self.kmeans.cluster_centers_, columns=list(self.features))
        role_of = {f: r for r, f in self.roles.items() if f}
        for name in sorted(set(names)):
            labels = [i for i, n in enumerate(names) if n == name]
            if len(labels) < 2:
                continue
            spread = centers.loc[labels].max() - centers.loc[labels].min()
            feature = str(spread.idxmax())  # first feature on exact ties: deterministic
            role = role_of.get(feature)
            high, low = ROLE_WORDS[role] if role else (f"higher {feature}", f"lower {feature}")
            order = sorted(labels, key=lambda i: (-profile.loc[i, feature], i))
            for rank, label in enumerate(order):
                if len(order) == 2:
                    out[label] = f"{name}, {high if rank == 0 else low}"
                else:
                    out[label] = f"{name}, {feature} tier {rank + 1} of {len(order)}"
        if len(set(out)) != len(out):  # tiers above make this unreachable; never return dupes
            out = [f"{n} (segment {i})" for n, i in zip(out, self.label_ids, strict=True)]
        return out

    def _segments_table(self, profile: pd.DataFrame) -> pd.DataFrame:
        """Return one row per segment: id, name, size, share and the feature means."""
        table = profile.copy()
        table.insert(0, "segment_id", self.label_ids)
        table.insert(1, "segment_name", self.label_names)
        table.insert(2, "share", table["size"] / table["size"].sum())
        size = table.pop("size")
        table.insert(2, "size", size)
        return table.sort_values("segment_id").reset_index(drop=True)

    # ------------------------------------------------------------------ predict

    def _check_fitted(self) -> None:
        """Raise RuntimeError unless the model has been fitted; return nothing."""
        if self.kmeans is None or self.scaler is None or self.label_ids is None:
            raise RuntimeError("SegmentationModel is not fitted: call fit(features) first")

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        """Return segment_id (int) and segment_name (str) per row, on the index of `features`."""
        self._check_fitted()
        if len(features) == 0:
            return pd.DataFrame(
                {"segment_id": pd.Series(dtype="int64"), "segment_name": pd.Series(dtype="str")},
                index=features.index,
            )
        labels = self.kmeans.predict(self.scaler.transform(self._matrix(features)))
        names = np.asarray(self.label_names, dtype=object)
        return pd.DataFrame(
            {"segment_id": self.label_ids[labels].astype("int64"), "segment_name": names[labels]},
            index=features.index,
        ).astype({"segment_name": "str"})

    @property
    def k(self) -> int:
        """Return the number of segments of the fitted model."""
        self._check_fitted()
        return int(self.kmeans.n_clusters)

    @property
    def silhouette(self) -> float:
        """Return the silhouette of the chosen k."""
        return self.silhouette_by_k[self.k]

    def to_dict(self) -> dict[str, Any]:
        """Return configuration, choice of k and segment profiles as a JSON-able dict."""
        self._check_fitted()
        return {
            "features": list(self.features),
            "roles": dict(self.roles),
            "k_min": self.k_min,
            "k_max": self.k_max,
            "random_state": self.random_state,
            "naming": dict(self.naming),
            "k": self.k,
            "silhouette": self.silhouette,
            "silhouette_by_k": {str(k): v for k, v in self.silhouette_by_k.items()},
            "max_segment_id": self.max_segment_id,
            "id_matches": {str(k): v for k, v in self.id_matches.items()},
            "segments": [
                {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                for row in self.segments.to_dict("records")
            ],
        }


def segment_sizes(assigned: pd.DataFrame) -> dict[str, int]:
    """Return the number of rows per segment name of a ``predict`` output, largest first."""
    counts = assigned["segment_name"].value_counts()
    return {str(k): int(v) for k, v in counts.items()}
