"""Parsing both batch-API payload shapes into ``JobResult`` (``jobtracker.parse``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobtracker.errors import AuthError, JobTrackerError, ParseError
from jobtracker.parse import parse_response
from jobtracker.results import JobResult, JobStatus, ms_to_datetime
from jobtracker.urls import url_expiry

Sample = Callable[[str], Any]

FACE_CONFIG = {
    "fps_pred": 3.0,
    "identify_faces": True,
    "min_face_size": 60.0,
    "prob_threshold": 0.9900000095367432,
}
OPERA_URL = "https://storage.googleapis.com/hume-test-data/video/royal-opera-house.mp4"
SIX_MODELS = ["burst", "face", "facemesh", "language", "ner", "prosody"]
LONG = "x" * 10_000


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def assert_utc(value: datetime | None) -> datetime:
    assert value is not None
    assert value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)
    return value


# --- the sample responses ------------------------------------------------------------------


def test_legacy_completed_sample(core_sample: Sample) -> None:
    result = parse_response(core_sample("legacy/completed.json"))

    assert result.shape == "legacy"
    assert result.job_id is None
    assert result.status is JobStatus.COMPLETED
    assert result.status.is_terminal
    assert result.configs == {"face": FACE_CONFIG}
    assert result.urls == [OPERA_URL]
    assert result.files == []
    assert result.text == []
    assert result.get_run_time() == 3
    assert result.get_queue_time() is None
    assert result.started_ms is None
    assert assert_utc(result.get_start_time()) == utc(2022, 8, 15, 20, 20, 10)
    assert assert_utc(result.get_end_time()) == utc(2022, 8, 15, 20, 20, 13)
    assert result.get_start_time() == datetime.fromisoformat("2022-08-15T20:20:10+00:00")
    assert result.job_start_time == 1660594810.0
    assert result.job_end_time == 1660594813.0
    assert result.num_predictions == 20
    assert result.num_errors == 0
    assert result.get_error_message() is None

    downloads = result.download_urls()
    assert sorted(downloads) == ["artifacts", "errors", "predictions"]
    names = {"artifacts": "job-artifacts.zip", "errors": "job-errors.txt"}
    names["predictions"] = "job-predictions.json"
    for kind, url in downloads.items():
        assert url is not None
        assert url.startswith("https://storage.googleapis.com/humeai-batch-api-prod-results/")
        assert url.split("?", 1)[0].endswith("/" + names[kind])
        assert "Signature=" in url
        assert url_expiry(url) == utc(2022, 8, 22, 20, 20, 13)
    assert downloads["predictions"] == result.predictions_url
    assert downloads["artifacts"] == result.artifacts_url
    assert downloads["errors"] == result.errors_url


def test_legacy_sample_takes_the_job_id_argument(core_sample: Sample) -> None:
    result = parse_response(core_sample("legacy/completed.json"), job_id="legacy-1")
    assert result.job_id == "legacy-1"


def test_legacy_failed_sample(core_sample: Sample) -> None:
    result = parse_response(core_sample("legacy/failed.json"))

    assert result.shape == "legacy"
    assert result.status is JobStatus.FAILED
    assert result.status.is_terminal
    assert result.error_message == "user 'abcde' has exceeded their usage limit"
    assert result.get_error_message() == "user 'abcde' has exceeded their usage limit"
    assert result.get_run_time() == 2
    assert assert_utc(result.get_start_time()) == utc(2022, 9, 21, 19, 56, 39)
    assert result.notify is False
    assert result.urls == ["https://storage.googleapis.com/hume-test-data/image/obama.png"]
    # Null-valued config fields are kept as they are.
    assert result.configs["face"]["descriptions"] is None
    assert result.configs["face"]["save_faces"] is False
    assert result.download_urls() == {}
    assert result.num_predictions is None


def test_legacy_queued_sample(core_sample: Sample) -> None:
    result = parse_response(core_sample("legacy/queued.json"))

    assert result.status is JobStatus.QUEUED
    assert not result.status.is_terminal
    assert result.get_run_time() is None
    assert result.get_end_time() is None
    assert result.job_end_time is None
    assert assert_utc(result.get_created_time()) == utc(2022, 8, 15, 20, 20, 10)
    assert result.download_urls() == {}
    assert result.configs == {"face": FACE_CONFIG}


def test_current_completed_sample(core_sample: Sample) -> None:
    result = parse_response(core_sample("current/completed.json"))

    assert result.shape == "current"
    assert result.job_id is None
    assert result.status is JobStatus.COMPLETED
    assert result.get_run_time() == 3.0
    assert result.get_queue_time() == 2.0
    assert assert_utc(result.get_created_time()) == utc(2022, 8, 15, 20, 20, 10)
    assert assert_utc(result.get_start_time()) == utc(2022, 8, 15, 20, 20, 12)
    assert assert_utc(result.get_end_time()) == utc(2022, 8, 15, 20, 20, 15)
    assert result.configs == {"face": FACE_CONFIG}
    assert result.urls == [OPERA_URL]
    assert result.callback_url == "https:/fake-callback"
    assert result.notify is False
    # Today's results are fetched from the API's endpoints, not from signed URLs.
    assert result.download_urls() == {"predictions": None, "artifacts": None}


def test_current_failed_sample(core_sample: Sample) -> None:
    result = parse_response(core_sample("current/failed.json"))

    assert result.status is JobStatus.FAILED
    assert result.status.is_terminal
    assert result.get_run_time() == 2.0
    assert result.get_queue_time() == 3.0
    assert result.error_message is None
    assert result.callback_url is None
    assert result.download_urls() == {}


def test_current_queued_sample(core_sample: Sample) -> None:
    result = parse_response(core_sample("current/queued.json"))

    assert result.status is JobStatus.QUEUED
    assert not result.status.is_terminal
    assert result.get_run_time() is None
    assert result.get_queue_time() is None
    assert result.get_end_time() is None
    assert assert_utc(result.get_created_time()) == utc(2022, 8, 15, 20, 20, 15)
    assert assert_utc(result.get_start_time()) == utc(2022, 8, 15, 20, 20, 15)


def test_api_list_item(core_sample: Sample) -> None:
    listing = core_sample("current/api-list.json")
    assert isinstance(listing, list)
    assert len(listing) == 1
    result = parse_response(listing[0])

    assert result.job_id == "job_id"
    assert result.status is JobStatus.COMPLETED
    assert result.job_type == "INFERENCE"
    assert sorted(result.configs) == SIX_MODELS
    assert result.configs["burst"] == {}
    assert result.configs["language"]["granularity"] == "word"
    assert result.get_run_time() == 0.474
    assert result.get_queue_time() == 0.083
    created = assert_utc(result.get_created_time())
    assert created == utc(2024, 4, 8, 14, 39, 18) + timedelta(milliseconds=717)
    assert result.created_ms == 1712587158717
    assert result.files == [
        {"filename": "filename", "md5sum": "md5sum", "content_type": "content_type"}
    ]
    assert result.urls == ["https://hume-tutorials.s3.amazonaws.com/faces.zip"]
    assert result.text == []
    assert result.notify is True
    assert result.callback_url is None
    assert result.num_predictions == 10
    assert result.num_errors == 0


def test_api_list_as_a_whole_is_not_a_job(core_sample: Sample) -> None:
    with pytest.raises(ParseError, match=r"expected a job object, got an array of 1 item\(s\)"):
        parse_response(core_sample("current/api-list.json"))


def test_api_details(core_sample: Sample) -> None:
    result = parse_response(core_sample("current/api-details.json"), job_id="job_id")

    assert result.job_id == "job_id"
    assert result.status is JobStatus.COMPLETED
    assert sorted(result.configs) == SIX_MODELS
    assert result.get_run_time() == 4.257
    assert result.get_queue_time() == 0.111
    assert result.started_ms == 1712590457995
    assert result.ended_ms == 1712590462252
    assert result.files == []
    assert result.num_predictions == 10


def test_api_predictions_item_is_a_parse_error(core_sample: Sample) -> None:
    predictions = core_sample("current/api-predictions.json")
    with pytest.raises(ParseError, match="not a batch job payload") as info:
        parse_response(predictions[0])
    # The summary names the keys it found, not their (large) values.
    assert "results" in str(info.value)
    assert "Admiration" not in str(info.value)


# --- faults, ids, unknown values ---------------------------------------------------------


def test_invalid_api_key_fault_is_an_auth_error() -> None:
    fault = {
        "fault": {
            "faultstring": "Invalid ApiKey",
            "detail": {"errorcode": "oauth.v2.InvalidApiKey"},
        }
    }
    with pytest.raises(AuthError, match="Invalid ApiKey") as info:
        parse_response(fault, job_id="abc")
    assert not isinstance(info.value, ParseError)
    assert info.value.exit_code == 3


@pytest.mark.parametrize(
    ("faultstring", "expected"),
    [
        ("Rate limit exceeded", "Rate limit exceeded"),
        (None, "null"),
        (42, "a int"),
    ],
)
def test_other_faults_are_parse_errors(faultstring: Any, expected: str) -> None:
    with pytest.raises(ParseError, match="fault instead of a job") as info:
        parse_response({"fault": {"faultstring": faultstring}}, job_id="j-1")
    assert expected in str(info.value)
    assert info.value.job_id == "j-1"


def test_job_id_argument_must_match_the_payload() -> None:
    payload = {"job_id": "job-a", "state": {"status": "QUEUED"}}
    assert parse_response(payload, job_id="job-a").job_id == "job-a"
    with pytest.raises(ParseError, match="payload is for job 'job-a', not 'job-b'"):
        parse_response(payload, job_id="job-b")


@pytest.mark.parametrize("bad_id", ["", 17, ["job"], {"id": "x"}, True])
def test_job_id_must_be_a_non_empty_string(bad_id: Any) -> None:
    with pytest.raises(ParseError, match="job_id: expected a non-empty string"):
        parse_response({"job_id": bad_id, "state": {"status": "QUEUED"}})


def test_unknown_models_are_kept() -> None:
    payload = {
        "job_id": "j",
        "request": {
            "models": {
                "face": {"fps_pred": 3},
                "brand_new_model": {"granularity": "sentence", "depth": [1, 2]},
                "empty_model": None,
            }
        },
        "state": {"status": "COMPLETED"},
    }
    result = parse_response(payload)
    assert result.configs == {
        "face": {"fps_pred": 3},
        "brand_new_model": {"granularity": "sentence", "depth": [1, 2]},
        "empty_model": {},
    }


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"job_id": "j", "state": {"status": "EXPLODED"}}, "state.status"),
        ({"status": "EXPLODED"}, "status"),
    ],
)
def test_unknown_status_names_the_path(payload: dict[str, Any], path: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_response(payload)
    message = str(info.value)
    assert message.startswith(f"{path}: unknown status 'EXPLODED'")
    assert "QUEUED, IN_PROGRESS, COMPLETED, FAILED" in message


def test_status_is_case_insensitive() -> None:
    result = parse_response({"job_id": "j", "state": {"status": "in_progress"}})
    assert result.status is JobStatus.IN_PROGRESS


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"job_id": "j", "state": {"status": 3}}, "state.status"),
        ({"job_id": "j", "state": {"status": "QUEUED", "num_predictions": -1}}, "num_predictions"),
        ({"job_id": "j", "state": {"status": "QUEUED", "num_errors": 1.5}}, "state.num_errors"),
        ({"job_id": "j", "state": {"status": "QUEUED", "created_timestamp_ms": True}}, "created"),
        ({"status": "COMPLETED", "creation_timestamp": -5}, "creation_timestamp"),
        ({"status": "COMPLETED", "completion_timestamp": "2022-08-15"}, "completion_timestamp"),
        ({"status": "COMPLETED", "completed": []}, "completed"),
        ({"status": "FAILED", "failed": {"message": 404}}, "failed.message"),
        ({"status": "QUEUED", "request": {"urls": ["a", 1]}}, "request.urls"),
        ({"status": "QUEUED", "request": {"files": ["a.mp4"]}}, "request.files"),
        ({"status": "QUEUED", "request": {"models": {"face": 3}}}, "request.models.face"),
        ({"status": "QUEUED", "request": {"notify": "yes"}}, "request.notify"),
        ({"job_id": "j", "state": {"status": "QUEUED"}, "type": 5}, "type"),
        ({"job_id": "j", "state": {}}, "state.status"),
        ({"job_id": "j"}, "no 'state' or 'status'"),
        ({}, "no 'state' or 'status'"),
    ],
)
def test_wrong_types_are_parse_errors_naming_the_field(payload: dict[str, Any], path: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_response(payload)
    assert path in str(info.value)


@pytest.mark.parametrize("payload", [None, 1, 2.5, "job", [], [{"job_id": "j"}], True])
def test_non_objects_are_parse_errors(payload: Any) -> None:
    with pytest.raises(ParseError, match="expected a job object"):
        parse_response(payload)


def test_legacy_fractional_seconds_become_milliseconds() -> None:
    result = parse_response(
        {
            "status": "COMPLETED",
            "creation_timestamp": 1660594810.25,
            "completion_timestamp": 1660594813,
        }
    )
    assert result.created_ms == 1660594810250
    assert result.get_run_time() == 2.75


@pytest.mark.parametrize(
    "payload",
    [
        {"job_id": "j", "state": {"status": "QUEUED", "num_errors": LONG}},
        {"job_id": "j", "state": {"status": "QUEUED", "message": [LONG]}},
        {"job_id": "j", "state": {"status": LONG}},
        {"job_id": "j", "state": {"status": "QUEUED"}, "request": {"urls": LONG}},
        {"status": "QUEUED", "request": {"models": {"face": LONG}}},
        {"status": "FAILED", "failed": {"message": {"text": LONG}}},
        {"status": "QUEUED", "creation_timestamp": LONG},
        {"fault": {"faultstring": LONG}},
        {"status": "QUEUED", "request": LONG},
        {"job_id": "j", "state": LONG},
    ],
)
def test_parse_error_messages_summarise_long_values(payload: dict[str, Any]) -> None:
    with pytest.raises(ParseError) as info:
        parse_response(payload)
    message = str(info.value)
    assert len(message) < 300
    assert "x" * 250 not in message


@pytest.mark.parametrize(
    ("payload", "job_id"),
    [
        pytest.param({LONG: 1}, None, id="long-key"),
        pytest.param({"job_id": LONG, "state": {"status": "QUEUED"}}, "job-1", id="long-job-id"),
        pytest.param(
            {"status": "QUEUED", "request": {"models": {LONG: 3}}}, None, id="long-model-name"
        ),
    ],
)
def test_parse_error_messages_never_carry_long_payload_strings(
    payload: dict[str, Any], job_id: str | None
) -> None:
    with pytest.raises(ParseError) as info:
        parse_response(payload, job_id=job_id)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"status": "QUEUED", "creation_timestamp": 1e308}, id="legacy-float"),
        pytest.param({"status": "QUEUED", "creation_timestamp": 10**400}, id="legacy-int"),
        pytest.param(
            {"job_id": "j", "state": {"status": "QUEUED", "ended_timestamp_ms": 10**400}},
            id="current-int",
        ),
    ],
)
def test_huge_timestamps_are_parse_errors(payload: dict[str, Any]) -> None:
    with pytest.raises(ParseError, match="timestamp"):
        parse_response(payload)


@pytest.mark.parametrize(
    "payload",
    [
        {"status": "QUEUED", "creation_timestamp": 1e20},
        {"job_id": "j", "state": {"status": "QUEUED", "created_timestamp_ms": 253_402_300_800_000}},
        {"job_id": "j", "state": {"status": "QUEUED", "started_timestamp_ms": 2**62}},
    ],
)
def test_out_of_range_timestamps_are_parse_errors(payload: dict[str, Any]) -> None:
    with pytest.raises(ParseError, match="out of range"):
        parse_response(payload)


# --- JobStatus ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "terminal", "rank"),
    [
        (JobStatus.QUEUED, False, 0),
        (JobStatus.IN_PROGRESS, False, 1),
        (JobStatus.COMPLETED, True, 2),
        (JobStatus.FAILED, True, 2),
    ],
)
def test_job_status_predicates(status: JobStatus, terminal: bool, rank: int) -> None:
    assert status.is_terminal is terminal
    assert status.rank == rank
    assert status == status.name  # stored as text
    assert JobStatus(status.value) is status


@given(st.sampled_from(list(JobStatus)), st.sampled_from(list(JobStatus)))
def test_job_status_rank_orders_the_lifecycle(a: JobStatus, b: JobStatus) -> None:
    # Terminal statuses are the highest rank; a non-terminal one always ranks below them.
    if a.is_terminal and b.is_terminal:
        assert a.rank == b.rank
    if not a.is_terminal and b.is_terminal:
        assert a.rank < b.rank
    if a.is_terminal:
        assert a.rank == max(s.rank for s in JobStatus)


# --- properties ---------------------------------------------------------------------------

# Numbers range over everything JSON can carry, huge ones included (Python's json reads
# integers of any size and floats up to 1.8e308).
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
_statuses = st.sampled_from(
    ["QUEUED", "IN_PROGRESS", "COMPLETED", "FAILED", "completed", "RUNNING", ""]
)
_times = st.integers(min_value=0, max_value=253_402_300_799_999) | json_values
_counts = st.integers(min_value=0, max_value=2**31 - 1) | json_values
_text_or_any = st.text(max_size=20) | json_values
_requests = (
    st.fixed_dictionaries(
        {},
        optional={
            "models": st.dictionaries(
                st.text(max_size=10),
                st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=3),
                max_size=3,
            )
            | json_values,
            "urls": st.lists(st.text(max_size=20), max_size=3) | json_values,
            "files": st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
            | json_values,
            "text": st.lists(st.text(max_size=20), max_size=3) | json_values,
            "callback_url": _text_or_any,
            "notify": st.booleans() | json_values,
        },
    )
    | json_values
)
current_shaped = st.fixed_dictionaries(
    {
        "state": st.fixed_dictionaries(
            {"status": _statuses | json_values},
            optional={
                "created_timestamp_ms": _times,
                "started_timestamp_ms": _times,
                "ended_timestamp_ms": _times,
                "num_predictions": _counts,
                "num_errors": _counts,
                "message": _text_or_any,
            },
        )
        | json_values
    },
    optional={
        "job_id": st.text(max_size=12) | json_values,
        "request": _requests,
        "type": _text_or_any,
    },
)
legacy_shaped = st.fixed_dictionaries(
    {"status": _statuses | json_values},
    optional={
        "creation_timestamp": st.integers(0, 253_402_300_799) | st.floats(0, 2e9) | json_values,
        "completion_timestamp": st.integers(0, 253_402_300_799) | json_values,
        "request": _requests,
        "completed": st.fixed_dictionaries(
            {},
            optional={
                "predictions_url": _text_or_any,
                "artifacts_url": _text_or_any,
                "errors_url": _text_or_any,
                "num_predictions": _counts,
                "num_errors": _counts,
            },
        )
        | json_values,
        "failed": st.fixed_dictionaries({}, optional={"message": _text_or_any}) | json_values,
    },
)
fault_shaped = st.fixed_dictionaries(
    {
        "fault": st.fixed_dictionaries(
            {"faultstring": st.sampled_from(["Invalid ApiKey", "Quota"]) | json_values}
        )
        | json_values
    }
)
_valid_request = st.fixed_dictionaries(
    {
        "models": st.dictionaries(
            st.sampled_from(["face", "prosody", "burst", "new_model"]),
            st.dictionaries(st.text(max_size=8), json_values, max_size=3),
            max_size=3,
        ),
        "urls": st.lists(st.text(max_size=20), max_size=2),
        "files": st.lists(st.fixed_dictionaries({"filename": st.text(max_size=8)}), max_size=2),
        "text": st.lists(st.text(max_size=20), max_size=2),
        "callback_url": st.none() | st.text(max_size=20),
        "notify": st.booleans(),
    }
)
valid_current = st.fixed_dictionaries(
    {
        "job_id": st.text(min_size=1, max_size=12),
        "type": st.just("INFERENCE"),
        "request": _valid_request,
        "state": st.fixed_dictionaries(
            {
                "status": st.sampled_from([s.value for s in JobStatus]),
                "created_timestamp_ms": st.integers(0, 4_102_444_800_000),
                "started_timestamp_ms": st.integers(0, 4_102_444_800_000),
                "ended_timestamp_ms": st.integers(0, 4_102_444_800_000),
                "num_predictions": st.integers(0, 1000),
                "num_errors": st.integers(0, 1000),
                "message": st.none() | st.text(max_size=20),
            }
        ),
    }
)
valid_legacy = st.fixed_dictionaries(
    {
        "status": st.sampled_from([s.value for s in JobStatus]),
        "creation_timestamp": st.integers(0, 4_102_444_800),
        "completion_timestamp": st.integers(0, 4_102_444_800),
        "request": _valid_request,
        "completed": st.fixed_dictionaries(
            {
                "predictions_url": st.text(max_size=20),
                "artifacts_url": st.text(max_size=20),
                "errors_url": st.text(max_size=20),
                "num_predictions": st.integers(0, 1000),
                "num_errors": st.integers(0, 1000),
            }
        ),
        "failed": st.fixed_dictionaries({"message": st.text(max_size=20)}),
    }
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key/index path inside a JSON value (objects and arrays), outermost first."""
    found: list[tuple[Any, ...]] = []
    items: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    for key, child in items:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


@st.composite
def one_field_replaced(draw: st.DrawFn) -> Any:
    """A valid payload of either shape with one field (at any depth) replaced or removed."""
    payload: Any = draw(valid_current | valid_legacy)
    path = draw(st.sampled_from(_paths(payload)))
    parent: Any = payload
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return payload


any_payload = json_values | current_shaped | legacy_shaped | fault_shaped | one_field_replaced()


@settings(max_examples=500, deadline=None)
@given(any_payload, st.none() | st.text(max_size=8))
def test_parse_returns_a_result_or_raises_parse_or_auth_error(
    payload: Any, job_id: str | None
) -> None:
    error: JobTrackerError | None = None
    try:
        result = parse_response(payload, job_id=job_id)
    except (ParseError, AuthError) as exc:
        error = exc
    if error is not None:
        assert str(error)
        return
    assert isinstance(result, JobResult)
    assert isinstance(result.status, JobStatus)
    assert result.shape in ("current", "legacy")
    assert all(isinstance(model, str) for model in result.configs)
    assert all(isinstance(config, dict) for config in result.configs.values())
    assert all(isinstance(url, str) for url in result.urls)
    assert all(isinstance(text, str) for text in result.text)
    assert all(isinstance(file, dict) for file in result.files)
    for ms in (result.created_ms, result.started_ms, result.ended_ms):
        assert ms is None or (type(ms) is int and 0 <= ms <= 253_402_300_799_999)
    for count in (result.num_predictions, result.num_errors):
        assert count is None or (type(count) is int and count >= 0)
    for value in (result.error_message, result.callback_url, result.job_type):
        assert value is None or isinstance(value, str)
    assert result.notify is None or isinstance(result.notify, bool)
    for url in result.download_urls().values():
        assert url is None or isinstance(url, str)
    run_time = result.get_run_time()
    assert run_time is None or isinstance(run_time, float)
    if isinstance(payload, dict) and isinstance(payload.get("job_id"), str):
        assert result.job_id == payload["job_id"]
    elif job_id is not None:
        assert result.job_id == job_id


_ms = st.integers(min_value=0, max_value=4_102_444_800_000)  # up to 2100


@settings(max_examples=200, deadline=None)
@given(
    job_id=st.text(min_size=1, max_size=20),
    status=st.sampled_from(list(JobStatus)),
    created=_ms,
    started=st.none() | _ms,
    ended=st.none() | _ms,
    models=st.dictionaries(
        st.text(min_size=1, max_size=10), st.dictionaries(st.text(max_size=5), st.integers())
    ),
    urls=st.lists(st.text(max_size=30), max_size=4),
    predictions=st.none() | st.integers(min_value=0, max_value=2**31 - 1),
)
def test_current_shape_fields_round_trip(
    job_id: str,
    status: JobStatus,
    created: int,
    started: int | None,
    ended: int | None,
    models: dict[str, dict[str, int]],
    urls: list[str],
    predictions: int | None,
) -> None:
    state: dict[str, Any] = {"status": status.value, "created_timestamp_ms": created}
    if started is not None:
        state["started_timestamp_ms"] = started
    if ended is not None:
        state["ended_timestamp_ms"] = ended
    if predictions is not None:
        state["num_predictions"] = predictions
    payload = {"job_id": job_id, "request": {"models": models, "urls": urls}, "state": state}

    result = parse_response(payload)

    assert result.job_id == job_id
    assert result.status is status
    assert result.configs == models
    assert result.urls == urls
    assert result.num_predictions == predictions
    assert result.get_created_time() == ms_to_datetime(created)
    start = created if started is None else started
    assert result.get_run_time() == (None if ended is None else (ended - start) / 1000)
    assert result.get_queue_time() == (None if started is None else (started - created) / 1000)
    expected_downloads = {"predictions": None, "artifacts": None}
    assert result.download_urls() == (expected_downloads if status is JobStatus.COMPLETED else {})


@settings(max_examples=200, deadline=None)
@given(
    status=st.sampled_from(list(JobStatus)),
    created=st.integers(min_value=0, max_value=4_102_444_800),
    run_s=st.none() | st.integers(min_value=0, max_value=10**6),
    expires=st.integers(min_value=0, max_value=4_102_444_800),
    message=st.none() | st.text(max_size=40),
)
def test_legacy_shape_fields_round_trip(
    status: JobStatus, created: int, run_s: int | None, expires: int, message: str | None
) -> None:
    url = f"https://storage.example.com/r/job-predictions.json?Expires={expires}&Signature=s%2F1"
    payload: dict[str, Any] = {
        "status": status.value,
        "creation_timestamp": created,
        "completed": {"predictions_url": url, "num_errors": 0},
        "failed": {"message": message},
    }
    if run_s is not None:
        payload["completion_timestamp"] = created + run_s

    result = parse_response(payload, job_id="legacy")

    assert result.job_id == "legacy"
    assert result.status is status
    assert result.get_run_time() == (None if run_s is None else float(run_s))
    assert result.get_start_time() == datetime.fromtimestamp(created, tz=UTC)
    assert result.error_message == message
    if status is JobStatus.COMPLETED:
        assert result.download_urls() == {"predictions": url}
        assert url_expiry(url) == datetime.fromtimestamp(expires, tz=UTC)
    else:
        assert result.download_urls() == {}
