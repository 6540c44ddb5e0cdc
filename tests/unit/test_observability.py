"""flowplan's own Counter and Histogram (libs.observability) against the OpenTelemetry SDK's
synchronous instruments they replaced on the hot paths: the same measurements must give the same
/metrics lines, names, labels and values, so dashboards and alerts do not notice the change."""

import re

from libs.observability import LATENCY_BUCKETS_S, Counter, Histogram, install, meter, prometheus_text


def _lines(text: str, name: str) -> list[str]:
    return sorted(line for line in text.splitlines() if re.match(rf"(# (HELP|TYPE) )?{name}(_\w+)?[ {{]", line))


def test_counter_exposes_what_the_sdk_counter_did() -> None:
    install("unit")
    ours = Counter("unit", "flowplan_unit_ours_calls", description="calls by route and status")
    theirs = meter("unit").create_counter("flowplan_unit_sdk_calls", description="calls by route and status")
    adds = [
        (1, {"route": "/v1/chat", "status": "200"}),
        (1, {"route": "/v1/chat", "status": "200"}),
        (2.5, {"route": "/v1/messages", "status": "429"}),
        (1, {"status": "200", "route": "/v1/chat"}),  # the same labels in another order: one series
        (0, {"route": "/v1/embeddings", "status": "200"}),  # a zero still makes its series visible
        (3, None),
    ]
    for amount, attributes in adds:
        ours.add(amount, attributes)
        theirs.add(amount, attributes)
    text = prometheus_text().decode()
    expected = [line.replace("flowplan_unit_sdk_calls", "flowplan_unit_ours_calls") for line in
                _lines(text, "flowplan_unit_sdk_calls")]  # fmt: skip
    assert len(expected) == 2 + 4, expected
    assert _lines(text, "flowplan_unit_ours_calls") == expected


def test_histogram_exposes_what_the_sdk_histogram_did() -> None:
    install("unit")
    ours = Histogram("unit", "flowplan_unit_ours_seconds", description="time per call")
    theirs = meter("unit").create_histogram(
        "flowplan_unit_sdk_seconds", unit="s", description="time per call",
        explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
    )  # fmt: skip
    assert _lines(prometheus_text().decode(), "flowplan_unit_ours_seconds") == []  # nothing recorded, no series
    values = [0.0001, 0.0005, 0.0007, 0.003, 0.003, 0.2, 1.0, 7.5, 42.0]  # on bounds, between them and above all
    for value in values:
        ours.record(value)
        theirs.record(value)
    text = prometheus_text().decode()
    expected = [line.replace("flowplan_unit_sdk_seconds", "flowplan_unit_ours_seconds") for line in
                _lines(text, "flowplan_unit_sdk_seconds")]  # fmt: skip
    assert len(expected) == 2 + len(LATENCY_BUCKETS_S) + 1 + 2, expected
    assert _lines(text, "flowplan_unit_ours_seconds") == expected
