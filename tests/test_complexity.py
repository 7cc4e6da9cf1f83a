"""Table 1's FLOPs and parameter columns against the paper (counted on the meta device)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from complexity import measure  # noqa: E402


@pytest.fixture(scope="module")
def rows():
    return {row["method"]: row for row in measure(513, with_memory=False)}


@pytest.mark.parametrize(
    "method,tolerance",
    [("ResNet-101", 0.01), ("EMANet(256)", 0.01), ("EMANet(512)", 0.01),
     ("DeeplabV3", 0.05), ("DeeplabV3+", 0.05), ("PSANet", 0.05)],
)
def test_flops_and_params_match_the_paper(rows, method, tolerance):
    row = rows[method]
    assert row["flops_g"] == pytest.approx(row["paper_flops_g"], rel=tolerance)
    assert row["params_m"] == pytest.approx(row["paper_params_m"], rel=tolerance)


def test_emanet512_reproduces_the_reference_count_exactly(rows):
    # REFERENCE: the 3x3 conv in front of the unit plus the unit give 43.06 G and 9.997 M.
    assert rows["EMANet(512)"]["flops_g"] == 43.06
    assert rows["EMANet(512)"]["params_m"] == 9.997


def test_non_local_costs_more_than_ema_at_the_same_width(rows):
    assert rows["Non-local"]["flops_g"] > rows["EMANet(512)"]["flops_g"]


def test_json_output_has_the_paper_method_names():
    result = subprocess.run(
        [sys.executable, "scripts/complexity.py", "--json", "--no-memory", "--size", "129"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    rows = json.loads(result.stdout)
    assert [row["method"] for row in rows][:6] == [
        "ResNet-101", "DeeplabV3", "DeeplabV3+", "PSANet", "EMANet(256)", "EMANet(512)",
    ]
    assert set(rows[0]) == {"method", "flops_g", "params_m", "memory_m"}
