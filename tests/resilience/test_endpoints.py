"""The endpoint set: membership, picks, and Envoy's outlier ejection, with a fake clock."""

from __future__ import annotations

import random

import pytest

from zmeshlib.policy.model import OutlierDetection
from zmeshlib.resilience import EndpointSet, Outcome

ERR, OK = Outcome.ERROR, Outcome.SUCCESS


def _set(n: int, **outlier: object) -> EndpointSet:
    od = OutlierDetection(**outlier) if outlier else OutlierDetection()  # type: ignore[arg-type]
    es = EndpointSet("least_request", od, random.Random(1))
    es.update({f"e{i}": {} for i in range(n)}, 0.0)
    return es


def _fail(es: EndpointSet, endpoint: str, times: int, now: float) -> list[object]:
    events: list[object] = []
    for _ in range(times):
        es.started(endpoint, now)
        events += es.finished(endpoint, ERR, 0.01, now)
    return events


def test_membership_follows_the_registry_and_reports_who_left():
    es = EndpointSet()
    assert es.pick(0.0) is None
    es.update({"a": {"version": "v1"}, "b": {}}, 0.0)
    assert sorted(es.endpoints) == ["a", "b"] and es.endpoints["a"].labels == {"version": "v1"}
    assert es.update({"b": {}, "c": {}}, 1.0) == ["a"]
    assert sorted(es.endpoints) == ["b", "c"]


def test_a_pick_prefers_endpoints_not_tried_and_may_reuse_one_when_all_were():
    es = _set(3)
    assert es.pick(0.0, exclude=["e0", "e1"]) == "e2"
    assert es.pick(0.0, exclude=["e0", "e1", "e2"]) in {"e0", "e1", "e2"}


def test_in_flight_counts_follow_started_and_finished():
    es = _set(2)
    es.started("e0", 0.0)
    es.started("e0", 0.0)
    assert es.endpoints["e0"].in_flight == 2
    es.finished("e0", OK, 0.01, 0.1)
    es.finished("e0", Outcome.CANCELLED, 0.0, 0.1)
    assert es.endpoints["e0"].in_flight == 0
    es.finished("gone", OK, 0.0, 0.1)  # an endpoint that left meanwhile: nothing


def test_ejection_at_the_threshold_and_not_before():
    es = _set(3, consecutive_errors=3, max_ejection_percent=50)
    assert _fail(es, "e0", 2, 1.0) == []
    es.started("e0", 1.0)
    es.finished("e0", OK, 0.01, 1.0)  # a success resets the streak
    assert _fail(es, "e0", 2, 1.0) == []
    (event,) = _fail(es, "e0", 1, 1.0)
    assert (event.kind, event.endpoint, event.until, event.times) == ("ejected", "e0", 31.0, 1)
    assert es.ejected() == ["e0"]
    assert all(es.pick(2.0) != "e0" for _ in range(50))
    assert _fail(es, "e0", 10, 2.0) == []  # already ejected: errors do not stack ejections


def test_connect_failures_count_and_cancellations_do_not():
    es = _set(2, consecutive_errors=2, max_ejection_percent=50)
    es.started("e0", 0.0)
    es.finished("e0", Outcome.CONNECT_FAILURE, 0.0, 0.0)
    es.started("e0", 0.0)
    es.finished("e0", Outcome.CANCELLED, 0.0, 0.0)
    assert es.ejected() == []
    es.started("e0", 0.0)
    es.finished("e0", Outcome.CONNECT_FAILURE, 0.0, 0.0)
    assert es.ejected() == ["e0"]


def test_ejection_time_grows_with_each_ejection_up_to_the_cap():
    es = _set(2, consecutive_errors=1, base_ejection_time=30, max_ejection_time=70, interval=10)
    lengths = []
    now = 0.0
    for _ in range(4):
        (event,) = _fail(es, "e0", 1, now)
        lengths.append(event.until - now)
        now = event.until  # its ejection is over; the next sweep returns it
        es.tick(now + 10)
        assert es.ejected() == []
        now += 10
    assert lengths == [30, 60, 70, 70]  # base x n, capped at max_ejection_time


def test_envoys_default_max_ejection_time():
    assert OutlierDetection(base_ejection_time=30).effective_max_ejection_time == 300
    assert OutlierDetection(base_ejection_time=600).effective_max_ejection_time == 600


def test_returns_happen_only_at_the_interval_sweep():
    es = _set(2, consecutive_errors=1, base_ejection_time=5, interval=10)
    _fail(es, "e0", 1, 0.0)  # ejected until 5.0; the first sweep is at 10.0
    assert es.next_timer() == 10.0
    assert es.tick(7.0) == [] and es.ejected() == ["e0"]  # over, but no sweep yet
    (event,) = es.tick(10.0)
    assert (event.kind, event.endpoint) == ("returned", "e0")
    assert es.stats["ejections"] == 1 and es.stats["returns"] == 1


def test_a_healthy_interval_lowers_the_ejection_multiplier():
    es = _set(2, consecutive_errors=1, base_ejection_time=5, interval=10)
    _fail(es, "e0", 1, 0.0)
    es.tick(10.0)  # returned; times_ejected stays 1 this sweep
    assert es.endpoints["e0"].times_ejected == 1
    es.tick(20.0)  # a whole interval without errors
    assert es.endpoints["e0"].times_ejected == 0
    (event,) = _fail(es, "e0", 1, 21.0)
    assert event.times == 1 and event.until == 26.0  # base again, not 2 x base


def test_the_max_ejection_percent_caps_ejections():
    es = _set(10, consecutive_errors=1, max_ejection_percent=20, always_eject_one=False)
    for i in range(5):
        _fail(es, f"e{i}", 1, 0.0)
    assert es.ejected() == ["e0", "e1"]  # 100 x 3 / 10 > 20: the third waits


def test_always_eject_one_with_two_or_three_replicas():
    for n in (2, 3):
        strict = _set(n, consecutive_errors=1, max_ejection_percent=10, always_eject_one=False)
        _fail(strict, "e0", 1, 0.0)
        assert strict.ejected() == []  # 10% of 2 or 3 ejects nothing
        lenient = _set(n, consecutive_errors=1, max_ejection_percent=10)
        _fail(lenient, "e0", 1, 0.0)
        _fail(lenient, "e1", 1, 0.0)
        assert lenient.ejected() == ["e0"]  # one, never more


def test_below_min_health_balancing_ignores_ejections():
    es = _set(2, consecutive_errors=1, max_ejection_percent=100, min_health_percent=60)
    _fail(es, "e0", 1, 0.0)
    assert es.ejected() == ["e0"]  # 1 of 2 healthy: 50% < 60%: panic
    picks = {es.pick(1.0) for _ in range(100)}
    assert picks == {"e0", "e1"} and es.stats["panics"] == 100
    no_panic = _set(2, consecutive_errors=1, max_ejection_percent=100, min_health_percent=0)
    _fail(no_panic, "e0", 1, 0.0)
    _fail(no_panic, "e1", 1, 0.0)
    assert no_panic.pick(1.0) is None  # everyone ejected, panic off: nobody


def test_without_outlier_detection_nothing_is_ejected():
    es = EndpointSet("round_robin", None, random.Random(1))
    es.update({"a": {}, "b": {}}, 0.0)
    _fail(es, "a", 50, 0.0)
    assert es.ejected() == [] and es.next_timer() is None
    assert {es.pick(0.0) for _ in range(4)} == {"a", "b"}


def test_a_new_policy_keeps_what_is_known_and_turning_detection_off_returns_everyone():
    es = _set(2, consecutive_errors=1, max_ejection_percent=50)
    _fail(es, "e0", 1, 0.0)
    es.configure("peak_ewma", OutlierDetection(consecutive_errors=1, max_ejection_percent=50))
    assert es.ejected() == ["e0"]
    es.configure("least_request", None)
    assert es.ejected() == []


def test_latency_ewma_takes_peaks_at_once_and_decays_towards_faster_samples():
    es = _set(1)
    for latency, now in [(0.010, 0.0), (0.200, 1.0)]:
        es.started("e0", now)
        es.finished("e0", OK, latency, now)
    assert es.endpoints["e0"].ewma == 0.200  # the peak, at once
    es.started("e0", 11.0)
    es.finished("e0", OK, 0.010, 11.0)  # ten seconds later: one decay time
    assert es.endpoints["e0"].ewma == pytest.approx(0.200 * 0.3679 + 0.010 * 0.6321, rel=1e-3)


def test_ejections_and_returns_are_told_as_they_happen():
    told = []
    es = EndpointSet(
        "least_request",
        OutlierDetection(consecutive_errors=1, base_ejection_time=5, interval=10),
        random.Random(1),
        on_event=told.append,
    )
    es.update({"a": {}, "b": {}}, 0.0)
    _fail(es, "a", 1, 0.0)
    es.tick(10.0)
    assert [(e.kind, e.endpoint) for e in told] == [("ejected", "a"), ("returned", "a")]
