"""Progress bars of the driver's long steps: on stderr, counting to the total, the per-clip lines kept on stdout."""

from __future__ import annotations

from pipeline.data import check
from pipeline.data.synthetic import SyntheticSpec, generate_mmit


def test_generation_and_check_show_bars_that_reach_the_total(tmp_path, capsys):
    root = generate_mmit(tmp_path / "mmit", SyntheticSpec(num_train=4, num_val=2, frames=8, size=32))
    err = capsys.readouterr().err
    assert "generating mmit" in err and "6/6" in err

    assert check.main([str(root), "--num-segments", "4"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 5 and all(line.startswith("decoded ") for line in lines[:4])
    assert lines[-1] == "checked 4 clips: 4 decoded, 0 skipped"
    assert "checking" in err and "4/4" in err and "decoded " not in err
