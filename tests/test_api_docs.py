"""docs/API.md's examples run as written: every ```python block, in order, in one namespace."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "API.md"


def test_api_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5, "docs/API.md lost its examples"
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name}, example {i + 1}", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    # what the examples print: data shapes, finite metrics, a report, an identical reloaded model
    assert printed[0] == "10 1 torch.Size([512, 1, 28, 28])"
    assert "'loss'" in printed[1] and "'same_class_negatives': 0.0" in printed[1]
    assert printed[2].endswith("torch.Size([4, 10])")
    clean, aa, worst = map(float, printed[3].split())
    assert 0 <= worst <= aa <= clean <= 1
    assert printed[4] == "True"
    assert namespace["report"]["adaptive_applied"] is None  # standard suite: no adaptive attacks
