"""Segmentation: k found, clusters = groups, names from profiles, ids stable across retrains.

The synthetic customers come from four known groups, well separated in log space (each
feature log-normal around the group's centre, noise sd 0.12-0.15 on log1p), with the
feature columns the point-in-time training set provides.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from ml.segmentation import SegmentationModel, segment_sizes
from ml.specs import load_spec

GROUPS: dict[str, dict[str, float]] = {
    "loyal": {
        "days_since_last_order": 12,
        "count_orders": 14,
        "avg_order_value": 180,
        "days_since_first_order": 800,
        "sessions_90d": 25,
    },
    "lapsed": {
        "days_since_last_order": 420,
        "count_orders": 1,
        "avg_order_value": 35,
        "days_since_first_order": 420,
        "sessions_90d": 0.3,
    },
    "new": {
        "days_since_last_order": 8,
        "count_orders": 1,
        "avg_order_value": 60,
        "days_since_first_order": 8,
        "sessions_90d": 12,
    },
    "at_risk": {
        "days_since_last_order": 140,
        "count_orders": 3,
        "avg_order_value": 80,
        "days_since_first_order": 600,
        "sessions_90d": 2,
    },
}
EXPECTED_NAMES = {
    "loyal": "high-value active engaged loyal customers",
    "lapsed": "low-value lapsed one-time buyers",
    "new": "engaged newcomers",
    "at_risk": "at-risk repeat buyers",
}


def make_customers(
    sizes: dict[str, int], seed: int, noise: float = 0.12, groups=GROUPS
) -> pd.DataFrame:
    """Return a feature frame of customers drawn around each group's centre, with `group`."""
    rng = np.random.default_rng(seed)
    frames = []
    for group, n in sizes.items():
        centre = groups[group]
        cols = {
            k: np.maximum(np.expm1(np.log1p(v) + rng.normal(0, noise, n)), 0.0)
            for k, v in centre.items()
        }
        cols["count_orders"] = np.maximum(np.round(cols["count_orders"]), 1)
        cols["days_since_first_order"] = np.maximum(
            cols["days_since_first_order"], cols["days_since_last_order"]
        )
        cols["revenue"] = cols["count_orders"] * cols["avg_order_value"]
        frames.append(pd.DataFrame(cols).assign(group=group))
    out = pd.concat(frames, ignore_index=True)
    out.index = pd.Index([f"{seed}-{i:05d}" for i in range(len(out))], name="customer_key")
    return out


def spec_model(**overrides) -> SegmentationModel:
    """Return an unfitted model from models/segmentation.yaml with parameter overrides."""
    spec = load_spec("segmentation")
    spec["params"] = {**spec["params"], **overrides}
    return SegmentationModel.from_spec(spec)


SIZES = {"loyal": 300, "lapsed": 500, "new": 250, "at_risk": 350}


@pytest.fixture(scope="module")
def customers() -> pd.DataFrame:
    return make_customers(SIZES, seed=1)


@pytest.fixture(scope="module")
def model(customers: pd.DataFrame) -> SegmentationModel:
    return spec_model().fit(customers)


def group_to_segment(model: SegmentationModel, frame: pd.DataFrame) -> dict[str, tuple]:
    """Return, per true group, the single (segment_id, segment_name) its rows got."""
    assigned = model.predict(frame).join(frame["group"])
    pairs = assigned.groupby("group")[["segment_id", "segment_name"]].agg(set)
    out = {}
    for group, row in pairs.iterrows():
        assert len(row["segment_id"]) == 1, (group, row["segment_id"])
        out[group] = (next(iter(row["segment_id"])), next(iter(row["segment_name"])))
    return out


def test_k_is_the_true_number_of_groups_and_clusters_are_the_groups(model, customers) -> None:
    assert model.k == 4
    assert model.silhouette == max(model.silhouette_by_k.values())
    assert sorted(model.silhouette_by_k) == [3, 4, 5, 6, 7, 8]
    assigned = model.predict(customers)
    assert adjusted_rand_score(customers["group"], assigned["segment_id"]) == 1.0


def test_names_describe_the_profiles(model, customers) -> None:
    mapping = group_to_segment(model, customers)
    assert {g: name for g, (_, name) in mapping.items()} == EXPECTED_NAMES
    # the group with the highest value is the "high-value" one and gets id 1 (value order)
    assert mapping["loyal"] == (1, EXPECTED_NAMES["loyal"])
    assert model.segments["segment_name"].is_unique


def test_segments_profile_table(model, customers) -> None:
    seg = model.segments
    assert list(seg.columns[:4]) == ["segment_id", "segment_name", "size", "share"]
    assert list(seg.columns[4:]) == list(model.features)
    assert seg["segment_id"].tolist() == [1, 2, 3, 4]
    by_name = seg.set_index("segment_name")
    for group, name in EXPECTED_NAMES.items():
        assert by_name.loc[name, "size"] == SIZES[group]
        members = customers[customers["group"] == group]
        assert by_name.loc[name, "revenue"] == pytest.approx(members["revenue"].mean())
    assert seg["share"].sum() == pytest.approx(1.0)
    assert segment_sizes(model.predict(customers)) == {
        EXPECTED_NAMES[g]: n for g, n in sorted(SIZES.items(), key=lambda kv: -kv[1])
    }


def test_retrain_on_a_perturbed_resample_keeps_the_ids(model, customers) -> None:
    """Other customers from the same groups, other group sizes, more noise: same ids."""
    other = make_customers(
        {"new": 280, "at_risk": 320, "loyal": 330, "lapsed": 450}, seed=2, noise=0.15
    )
    retrained = spec_model().fit(other, previous=model)
    assert group_to_segment(retrained, other) == group_to_segment(model, customers)
    assert sorted(retrained.id_matches) == [1, 2, 3, 4]
    assert max(retrained.id_matches.values()) < 0.5  # centroids moved < 0.5 sd
    assert retrained.max_segment_id == 4


def test_row_order_does_not_matter(model, customers) -> None:
    shuffled = customers.sample(frac=1.0, random_state=7)
    again = spec_model().fit(shuffled)
    pd.testing.assert_frame_equal(again.segments, model.segments)
    assert again.silhouette_by_k == model.silhouette_by_k
    pd.testing.assert_frame_equal(again.predict(customers), model.predict(customers))


def test_fit_is_deterministic(model, customers) -> None:
    again = spec_model().fit(customers)
    assert again.to_dict() == model.to_dict()


def test_new_cluster_gets_a_new_id_and_ids_are_never_reused() -> None:
    three = {"loyal": 300, "lapsed": 500, "at_risk": 350}
    first = spec_model(n_init=4).fit(make_customers(three, seed=3))
    assert first.k == 3
    ids_before = {g: s for g, (s, _) in group_to_segment(first, make_customers(three, 3)).items()}
    assert sorted(ids_before.values()) == [1, 2, 3]

    four = make_customers(SIZES, seed=4)
    second = spec_model(n_init=4).fit(four, previous=first)
    mapping = group_to_segment(second, four)
    assert {g: mapping[g][0] for g in three} == ids_before  # old groups keep their ids
    assert mapping["new"] == (4, EXPECTED_NAMES["new"])  # the new group gets the next id

    # "new" disappears, then comes back: it gets id 5, not its old 4
    third_data = make_customers(three, seed=5)
    third = spec_model(n_init=4).fit(third_data, previous=second)
    assert {g: s for g, (s, _) in group_to_segment(third, third_data).items()} == ids_before
    assert third.max_segment_id == 4
    fourth_data = make_customers(SIZES, seed=6)
    fourth = spec_model(n_init=4).fit(fourth_data, previous=third)
    assert group_to_segment(fourth, fourth_data)["new"][0] == 5


def test_same_named_clusters_are_told_apart() -> None:
    """Two groups of lapsed one-time buyers, 250 and 3000 days ago: the same rules give the
    same name, so the feature on which they differ most in the scaled space (here tenure)
    tells them apart."""
    groups = {
        **GROUPS,
        "lapsed": {**GROUPS["lapsed"], "days_since_last_order": 250, "days_since_first_order": 250},
        "long_ago": {
            **GROUPS["lapsed"],
            "days_since_last_order": 3000,
            "days_since_first_order": 3000,
        },
    }
    sizes = {"loyal": 300, "lapsed": 400, "new": 250, "long_ago": 400}
    frame = make_customers(sizes, seed=8, groups=groups)
    fitted = spec_model(n_init=4).fit(frame)
    names = {g: n for g, (_, n) in group_to_segment(fitted, frame).items()}
    assert names == {
        "loyal": EXPECTED_NAMES["loyal"],
        "new": EXPECTED_NAMES["new"],
        "lapsed": "lapsed one-time buyers, newer",
        "long_ago": "lapsed one-time buyers, longer-standing",
    }


def test_without_roles_names_are_unique_tiers(customers) -> None:
    plain = SegmentationModel(features=("count_orders", "revenue"), n_init=4)
    plain.fit(customers)
    names = plain.segments["segment_name"].tolist()
    assert len(set(names)) == len(names) == plain.k
    assert all(n.startswith("customers, ") for n in names)


def test_a_constant_feature_is_harmless(customers) -> None:
    """Without web data every sessions_90d is 0: the fit still finds the groups, and no
    segment is called "engaged"."""
    no_web = customers.assign(sessions_90d=0.0)
    fitted = spec_model(n_init=4).fit(no_web)
    assert fitted.k == 4
    assert adjusted_rand_score(no_web["group"], fitted.predict(no_web)["segment_id"]) == 1.0
    assert not any("engaged" in n for n in fitted.segments["segment_name"])


def test_predict_keeps_the_index_and_types(model, customers) -> None:
    subset = customers.iloc[[5, 900, 17]]
    out = model.predict(subset)
    assert out.index.equals(subset.index)
    assert list(out.columns) == ["segment_id", "segment_name"]
    assert str(out["segment_id"].dtype) == "int64"
    assert all(isinstance(v, str) for v in out["segment_name"])
    empty = model.predict(customers.iloc[:0])
    assert empty.empty and list(empty.columns) == ["segment_id", "segment_name"]


def test_model_round_trips_through_pickle_and_json(model, customers) -> None:
    restored = pickle.loads(pickle.dumps(model))
    pd.testing.assert_frame_equal(restored.predict(customers), model.predict(customers))
    facts = json.loads(json.dumps(model.to_dict()))
    assert facts["k"] == 4 and len(facts["segments"]) == 4
    assert facts["segments"][0]["segment_name"] == EXPECTED_NAMES["loyal"]


def test_bad_input_is_rejected_clearly(model, customers) -> None:
    with pytest.raises(ValueError, match=r"lack column\(s\) \['sessions_90d'\]"):
        model.predict(customers.drop(columns="sessions_90d"))
    with_nan = customers.copy()
    with_nan.iloc[:3, with_nan.columns.get_loc("revenue")] = np.nan
    with pytest.raises(ValueError, match="revenue has 3 missing/infinite"):
        spec_model().fit(with_nan)
    negative = customers.assign(count_orders=-customers["count_orders"])
    with pytest.raises(ValueError, match=r"count_orders has 1400 negative value\(s\)"):
        model.predict(negative)
    with pytest.raises(ValueError, match="needs more than k_min=3 customers, got 3"):
        spec_model().fit(customers.iloc[:3])
    with pytest.raises(ValueError, match="only 2 distinct customer profiles"):
        spec_model().fit(pd.concat([customers.iloc[:1]] * 5 + [customers.iloc[400:401]] * 5))
    other = SegmentationModel(features=("count_orders", "revenue"))
    with pytest.raises(ValueError, match="ids cannot be matched"):
        other.fit(customers, previous=model)
    with pytest.raises(RuntimeError, match="not fitted"):
        SegmentationModel(features=("count_orders",)).predict(customers)
    spec = load_spec("segmentation")
    with pytest.raises(ValueError, match=r"unknown params \['k_maximum'\]"):
        SegmentationModel.from_spec({**spec, "params": {"k_maximum": 9}})
    with pytest.raises(ValueError, match=r"unknown naming keys \['vip_days'\]"):
        SegmentationModel.from_spec({**spec, "naming": {"vip_days": 9}})
    with pytest.raises(ValueError, match="not among the features"):
        SegmentationModel(features=("count_orders",), roles={"monetary": "revenue"})


def test_segments_of_the_sample_world_match_its_ground_truth(tmp_path) -> None:
    """On the generator's orders (no web features here), the segment named "lapsed" holds
    the largest share of customers who truly dropped out, "newcomers" the smallest."""
    from tests.ml.test_clv import WORLD_AS_OF, world_orders

    orders, truth = world_orders(tmp_path)
    visible = orders[orders["ordered_at"].dt.date <= WORLD_AS_OF]
    day = visible["ordered_at"].dt.tz_convert("UTC").dt.tz_localize(None).dt.floor("D")
    days = (pd.Timestamp(WORLD_AS_OF) - day).dt.days
    grouped = visible.assign(days=days).groupby("customer_id")
    features = pd.DataFrame(
        {
            "days_since_last_order": grouped["days"].min(),
            "count_orders": grouped.size(),
            "revenue": grouped["amount"].sum(),
            "avg_order_value": grouped["amount"].mean(),
            "days_since_first_order": grouped["days"].max(),
        }
    )
    spec = load_spec("segmentation")
    roles = {r: f for r, f in spec["roles"].items() if f in features.columns}
    model = SegmentationModel(features=tuple(features.columns), roles=roles, n_init=4)
    model.fit(features)
    assert model.segments["segment_name"].is_unique
    dropped = truth["dropout_at"] < pd.Timestamp(WORLD_AS_OF, tz="UTC")
    share = (
        model.predict(features)
        .join(dropped.rename("dropped"))
        .groupby("segment_name")["dropped"]
        .mean()
    )
    assert "lapsed" in share.idxmax(), share
    assert "newcomers" in share.idxmin(), share
