"""Fuzzing the readers and the upload endpoint (issue 11): a short run of the harness in fuzz/.

The long run is manual: ``python -m fuzz.harness --cases 100000`` (docs/reliability.md).
Here hypothesis draws the seed, the mutation and its randomness, runs each case in this
process (a case over 5 s fails through hypothesis' deadline) and shrinks any failure to the
simplest mutation that shows it; a second test runs the harness itself (worker processes,
SIGALRM on hangs, an address-space limit) on a few hundred numbered cases.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SHARED
from fuzz.harness import Case, Worker, fuzz
from fuzz.mutators import MUTATORS, find_seeds, generated_seeds

REAL = SHARED if SHARED.is_dir() else None


@pytest.fixture(scope="module")
def worker(tmp_path_factory, one_torch_thread):
    w = Worker(REAL, tmp_path_factory.mktemp("fuzz"), master=0, timeout=5.0)
    yield w
    w.close()


def _seeds(kind: str) -> list:
    import tempfile

    work = Path(tempfile.gettempdir()) / "histoscope-fuzz-seeds"
    return [s for s in find_seeds(REAL, work) if s.kind == kind]


SLIDE_SEEDS = _seeds("slide")
UPLOAD_SEEDS = _seeds("upload")
FUZZ = settings(max_examples=120, deadline=5000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large], derandomize=True)


def _case(target, seed, mutator, r) -> Case:
    from fuzz.mutators import mutate

    name, data = mutate(seed, random.Random(r), mutator)
    return Case(r, target, seed, name, data, seed.content_type)


@FUZZ
@given(seed=st.sampled_from(SLIDE_SEEDS), mutator=st.sampled_from(sorted(MUTATORS)), r=st.integers(0, 2**32 - 1))
def test_mutated_slides_only_raise_documented_errors(worker, seed, mutator, r):
    """open_slide -> read_region -> thumbnail -> tissue mask -> tiles -> stain on a mutated file."""
    outcome, failure = worker.run(_case("slide", seed, mutator, r))
    assert failure is None, failure
    assert outcome.startswith(("ok:", "refused:"))


@FUZZ
@given(seed=st.sampled_from(UPLOAD_SEEDS), mutator=st.sampled_from(sorted(MUTATORS)), r=st.integers(0, 2**32 - 1))
def test_mutated_uploads_get_200_or_a_4xx_with_an_error(worker, seed, mutator, r):
    outcome, failure = worker.run(_case("upload", seed, mutator, r))
    assert failure is None, failure
    assert outcome in {"http:200", "http:400", "http:413", "http:415", "http:422"}, outcome


def test_the_mutations_change_what_they_say(tmp_path):
    """Each mutation is deterministic for its randomness and changes the file (a fuzzer that does nothing passes everything)."""
    seeds = generated_seeds(tmp_path)
    tif = next(s for s in seeds if s.name.endswith("synthetic-1536.tiff"))
    assert {f.name for f in tif.fields} >= {"ImageWidth", "ImageLength", "TileWidth", "TileOffsets", "TileByteCounts"}
    for name, m in MUTATORS.items():
        a, b = m(tif.data, tif, random.Random(5)), m(tif.data, tif, random.Random(5))
        assert a == b, name
        assert any(m(tif.data, tif, random.Random(k)) != tif.data for k in range(5)), name
    png = next(s for s in seeds if s.suffix == ".png")
    import struct
    import zlib

    for k in range(10):
        big = MUTATORS["huge_dimensions"](png.data, png, random.Random(k))
        w, h = struct.unpack(">II", big[16:24])
        assert (w, h) != struct.unpack(">II", png.data[16:24])
        assert struct.unpack(">I", big[29:33])[0] == zlib.crc32(big[12:29])  # a valid CRC: the lie reaches the decoder

@pytest.mark.slow
def test_harness_short_run(tmp_path):
    """The harness itself, as the long run uses it: worker processes, per-case timeout, memory cap."""
    s = fuzz(300, workers=1, shared=REAL, work=tmp_path, verbose=False)
    assert s["cases"] == 300
    assert s["failures"] == 0, s["failure_list"][:3]
    assert s["slowest_case_cpu_s"] < 5.0
    assert sum(v for k, v in s["by_outcome"].items() if k.startswith(("refused:", "http:4"))) > 50  # most mutations are caught
    assert (tmp_path / "summary.json").is_file()
