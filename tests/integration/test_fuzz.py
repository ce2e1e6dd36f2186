"""Property-based fuzzing of the real served model (issue 12, item 2: no 5xx from any image).

Hypothesis draws hostile uploads (tests/fuzz_strategies.py) and posts them to the suite's `bbt serve`: every
answer must be a 200 with the contract's JSON (faces inside the image, the image's upright size) or a 4xx
`{"error": ...}`; valid images of a supported format within the limits must classify, and what is over the
limits or of another format must be refused. Runs are reproducible (derandomized, no example database);
benchmarks/fuzz.py runs the same strategies with thousands of cases.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bbt.config import load_params
from tests import fuzz_strategies as fuzz
from tests.conftest import Server

pytestmark = pytest.mark.integration

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])


@dataclass
class Target:
    client: httpx.Client
    limits: fuzz.Limits
    photos: list[tuple[str, bytes]]

    @property
    def pixels(self) -> list[bytes]:
        return [data for _, data in self.photos]

    def check(self, case: fuzz.Case) -> None:
        found = fuzz.problems(case, case.send(self.client))
        assert not found, f"{case!r}: {'; '.join(found)}"


@pytest.fixture(scope="module")
def target(bento_server: Server) -> Iterator[Target]:
    serve = load_params(bento_server.project.root / "params.yaml").serve
    limits = fuzz.Limits(int(serve.max_megapixels * 1_000_000), int(serve.max_upload_mb * 1024 * 1024))
    photos = fuzz.dataset_photos(bento_server.project.root / "data" / "raw")
    assert len(photos) >= 20, "the dataset's photos are the mutations' seeds"
    with httpx.Client(base_url=bento_server.url, timeout=120) as client:
        yield Target(client, limits, photos)


@settings(FUZZ, max_examples=600)
@given(data=st.data())
def test_every_supported_format_and_mode_classifies_at_its_own_size(target: Target, data: st.DataObject) -> None:
    target.check(data.draw(fuzz.images(target.limits, target.pixels)))


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_images_up_to_the_pixel_limit_classify_and_over_it_are_refused(target: Target,
                                                                        data: st.DataObject) -> None:
    target.check(data.draw(fuzz.large_images(target.limits)))


@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_exif_orientation_turns_the_answer_and_a_corrupt_block_is_ignored(target: Target,
                                                                           data: st.DataObject) -> None:
    target.check(data.draw(fuzz.exif_images(target.limits, target.pixels)))


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_other_formats_are_refused(target: Target, data: st.DataObject) -> None:
    target.check(data.draw(fuzz.other_formats(target.limits)))


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_headers_claiming_too_many_pixels_are_refused(target: Target, data: st.DataObject) -> None:
    target.check(data.draw(fuzz.lying_headers(target.limits)))


@settings(FUZZ, max_examples=600)
@given(data=st.data())
def test_damaged_photos_are_classified_or_refused(target: Target, data: st.DataObject) -> None:
    target.check(data.draw(fuzz.mutated_photos(target.limits, target.photos)))


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_legacy_data_urls_are_classified_or_refused(target: Target, data: st.DataObject) -> None:
    target.check(data.draw(fuzz.legacy_requests(target.limits, target.photos)))


@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_malformed_requests_are_answered_or_refused_in_json(target: Target, data: st.DataObject) -> None:
    target.check(data.draw(fuzz.malformed_requests(target.photos)))
