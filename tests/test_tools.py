"""The evaluation and analysis tools run end to end on a tiny synthetic set (no PyTorch, no real data)."""
import csv
from pathlib import Path

import numpy as np
import pytest

import musica_ref as m
from tools import analyses, evaluate, peak_memory, time_predict

from conftest import EXAMPLE, EXAMPLE_BOX, synthetic_folder


def test_evaluate_and_analyses_on_a_synthetic_set(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason='the figures need the plots extra: pip install ".[plots]"')
    (tmp_path / "faces").mkdir()
    folder = synthetic_folder(tmp_path / "faces", n=12)
    w = tmp_path / "w.h5"
    m.save_weights(w, m.random_weights(m.custom_variant(5, [0, 2, 4]), seed=2))
    evaluate.main(["--weights", str(w), "--data", str(folder), "--csv", str(tmp_path / "r.csv"),
                   "--ced", str(tmp_path / "ced.png"), "--batch", "5"])
    out = capsys.readouterr().out
    assert "NME_box" in out and "mean iterations 3.000" in out
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(rows) == 12 and all(np.isfinite(float(r["nme_box"])) for r in rows)
    assert (tmp_path / "ced.png").stat().st_size > 0
    evaluate.main(["--weights", str(w), "--data", str(folder), "--method", "mean-shape"])
    assert "mean shape in the box" in capsys.readouterr().out
    an = tmp_path / "an"
    analyses.main(["early-exit", "--weights", str(w), "--data", str(folder), "--out", str(an)])
    analyses.main(["attention", "--weights", str(w), "--data", str(folder), "--out", str(an), "--limit", "3"])
    analyses.main(["estimate", "--weights", str(w), "--data", str(folder), "--out", str(an)])
    for f in ("fig2-musica5x3.png", "fig7.png", "early-exit.txt", "fig6-musica5x3.png", "estimate.txt"):
        assert (an / f).stat().st_size > 0, f
    text = (an / "early-exit.txt").read_text()
    assert "all iterations" in text and "halving the average iterations" in text


def test_early_exit_simulation_rule():
    est = np.array([[0.05, 0.02, 0.01], [0.01, 0.03, 0.02], [0.09, 0.08, 0.07]])
    np.testing.assert_array_equal(analyses.stop_iteration(est, 0.0), [2, 2, 2])
    np.testing.assert_array_equal(analyses.stop_iteration(est, 0.025), [1, 0, 2])
    np.testing.assert_array_equal(analyses.stop_iteration(est, 1.0), [0, 0, 0])


def test_regions_and_hidden_fill_name_what_they_need(tmp_path):
    folder = synthetic_folder(tmp_path, n=4)                   # 5 points, no poses
    w = tmp_path / "w.h5"
    m.save_weights(w, m.random_weights(m.custom_variant(5, [0, 2, 4]), seed=2))
    with pytest.raises(SystemExit, match="needs a 68-point set with poses"):
        analyses.main(["regions", "--weights", str(w), "--data", str(folder), "--out", str(tmp_path / "an")])
    with pytest.raises(SystemExit):                             # argparse: regions without --weights
        analyses.main(["regions", "--data", str(folder)])


def test_nose_position_tells_the_far_side():
    face = np.zeros((2, 68, 2))
    face[:, 0, 0], face[:, 16, 0] = 10.0, 90.0
    face[0, 30, 0], face[1, 30, 0] = 50.0, 30.0                # frontal; turned, image-left side receding
    np.testing.assert_allclose(analyses.nose_position(face), [0.5, 0.25])


def test_hidden_fill_beats_the_mean_shape_on_real_faces(shared_data, tmp_path, capsys):
    analyses.main(["hidden-fill", "--data", str(shared_data / "train_merl_aflw.h5"), "--limit", "3000",
                   "--out", str(tmp_path)])
    lines = (tmp_path / "hidden-fill.txt").read_text().splitlines()
    ours = float(lines[2].split(":")[1].split("%")[0])
    mean = float(lines[3].split(":")[1].split("%")[0])
    assert ours < 0.7 * mean, lines


def test_time_predict_without_fresh_processes(capsys):
    """--fresh 0 times the warm calls only (it used to fail on an empty list); bad counts are refused."""
    w = str(Path(__file__).resolve().parents[1] / "weights" / "musica19.h5")
    time_predict.main(["--weights", w, "--repeats", "2", "--fresh", "0"])
    out = capsys.readouterr().out
    assert "warm predict" in out and "over 2 calls" in out and "new process" not in out
    for bad in (["--repeats", "0"], ["--fresh", "-1"]):
        with pytest.raises(SystemExit):
            time_predict.main(["--weights", w, *bad])


def test_time_predict_split_times_the_kernels_and_puts_them_back(capsys):
    """--split wraps the kernels a predict calls with timers for its calls only: the Python share it prints
    is a fraction of the predict, and the kernels are the originals afterwards."""
    import musica_ref.kernels as k
    before = {name: getattr(k, name) for name in time_predict.PREDICT_KERNELS}
    w = str(Path(__file__).resolve().parents[1] / "weights" / "musica19.h5")
    time_predict.main(["--weights", w, "--repeats", "2", "--fresh", "0", "--split"])
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warm predict split")][0]
    share = int(line.split("(")[2].split("%")[0])
    assert 0 < share < 100, line
    assert all(getattr(k, name) is f for name, f in before.items())


def test_evaluate_boxes_and_choose_tf_on_a_synthetic_set(tmp_path, capsys):
    """The box-convention table and the failure-threshold choice end to end (no detector, no real data)."""
    from tools import choose_tf, evaluate_boxes
    (tmp_path / "faces").mkdir()
    folder = synthetic_folder(tmp_path / "faces", n=10)
    w = tmp_path / "w.h5"
    m.save_weights(w, m.random_weights(m.custom_variant(5, [0, 2, 4]), seed=2), dtype=np.float16)
    evaluate_boxes.main(["--weights", str(w), "--data", str(folder), "--no-dlib", "--refine", "1"])
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.split()}
    for name in ("tight", "square1.2", "square1.4", "shrunk0.85"):
        assert lines[name][1] == "10" and np.isfinite(float(lines[name][2]))   # faces, NME_box
    assert lines["tight"][4] == "1.000"                                          # its own ratio
    # the conventions are what the docstring says
    b = (10.0, 20.0, 50.0, 100.0)                                              # w 40, h 80
    assert evaluate_boxes.SYNTHETIC["square1.2"](b) == (-18.0, 4.0, 78.0, 100.0)
    assert evaluate_boxes.SYNTHETIC["square1.4"](b) == pytest.approx((-26.0, -8.0, 86.0, 104.0))
    assert evaluate_boxes.SYNTHETIC["shrunk0.85"](b) == pytest.approx((13.0, 26.0, 47.0, 94.0))
    choose_tf.main(["--weights", str(w), "--val", str(folder), "--test", str(folder), "--textures", "14",
                    "--write"])
    out = capsys.readouterr().out
    tf = m.load_weights(w).default_tf
    assert tf is not None and f"Tf = {tf:.4f}" in out and "non-face boxes flagged" in out
    import h5py
    with h5py.File(w) as f:                                                    # still stored as float16
        assert f["iteration_0/recurrent/weight"].dtype == np.float16


def test_peak_memory_runs_end_to_end(capsys):
    peak_memory.main(["--size", "700", "--face", "400", "--model", "musica19", "--format", "png"])
    out = capsys.readouterr().out
    assert "700 x 700 png, --box, --overlay" in out and "machine:" in out
    with pytest.raises(SystemExit):
        peak_memory.main(["--size", "700", "--face", "100"])


def test_the_test_cache_is_keyed_by_the_kernel_sources(tmp_path, monkeypatch):
    from tools import numba_cache
    (tmp_path / "musica_ref" / "kernels").mkdir(parents=True)
    (tmp_path / "musica_ref" / "kernels.py").write_text("a = 1\n")
    (tmp_path / "musica_ref" / "model.py").write_text("b = 1\n")
    monkeypatch.setattr(numba_cache, "ROOT", tmp_path)
    first = numba_cache.keyed_cache_dir()
    (tmp_path / "musica_ref" / "model.py").write_text("b = 2\n")               # not a kernel source
    assert numba_cache.keyed_cache_dir() == first
    (tmp_path / "musica_ref" / "kernels" / "fc.py").write_text("c = 1\n")       # a kernel in another module
    assert numba_cache.keyed_cache_dir() != first
    import os
    assert os.environ["NUMBA_CACHE_DIR"]                                        # set by tests/conftest.py


def test_track_bench_runs_on_real_faces(shared_data, capsys):
    pytest.importorskip("dlib", reason='the benchmark detects faces: pip install ".[detect]"')
    from tools import track_bench
    track_bench.main(["--data", str(shared_data / "test_aflw2000.h5"), "--faces", "1", "--frames", "8",
                      "--no-dlib-ert"])
    out = capsys.readouterr().out
    assert "| tracker |" in out and "| detect + predict |" in out and "jitter" in out and "lag" in out


def test_track_warm_start_runs_and_its_full_way_is_the_tracker(shared_data, capsys):
    """The experiment's 'full' way is what predict gives on the same box, bit for bit."""
    pytest.importorskip("dlib", reason='the experiment picks faces the detector finds: pip install ".[detect]"')
    from tools import track_warm_start
    model = m.MuSiCa.load("musica19")
    image = m.load_image(EXAMPLE)
    got, states = track_warm_start.run_from(model, image, EXAMPLE_BOX, None, None, 0)
    np.testing.assert_array_equal(got, model.predict(image, EXAMPLE_BOX).landmarks)
    assert sorted(states) == [0, 1, 2] and not states[0].any()
    track_warm_start.main(["--data", str(shared_data / "val_merl_aflw.h5"), "--faces", "1", "--frames", "4"])
    out = capsys.readouterr().out
    assert "| full (the Tracker) |" in out and "| from iteration 2, previous state |" in out


def test_compile_time_reports_the_first_predict(capsys):
    """With the tests' warm cache the child loads the kernels (an empty cache would compile for 30 s)."""
    import os
    from tools import compile_time
    compile_time.main(["--model", "musica19", "--top", "3", "--cache", os.environ["NUMBA_CACHE_DIR"]])
    out = capsys.readouterr().out
    assert "first predict of one face (musica19), that cache:" in out and "machine:" in out


def test_compile_time_and_ab_predict_refuse_a_folder_that_is_not_a_checkout(tmp_path):
    from tools import ab_predict, compile_time
    for main, args in ((compile_time.main, ["--against", str(tmp_path)]), (ab_predict.main, [str(tmp_path)])):
        with pytest.raises(SystemExit, match="not a checkout of this project"):
            main(args)


def test_ab_predict_compares_a_tree_with_itself(capsys):
    """One round of this tree against itself (the tests' warm cache: nothing compiles): both medians and their
    ratio are reported."""
    from pathlib import Path
    from tools import ab_predict
    root = Path(__file__).resolve().parent.parent
    ab_predict.main([str(root), "--rounds", "1", "--calls", "3", "--threads", "1", "--weights", "musica19"])
    out = capsys.readouterr().out
    assert "round 1: this 1t" in out and "1 thread(s): this" in out and "this / other" in out and "machine:" in out
    ab_predict.main([str(root), "--paired", "--calls", "3", "--threads", "1", "--weights", "musica19"])
    out = capsys.readouterr().out
    assert "1 thread(s): this" in out and "one process" in out and "machine:" in out
    ab_predict.main([str(root), "--paired", "--calls", "2", "--threads", "1", "--weights", "musica19", "--batch", "2"])
    out = capsys.readouterr().out
    assert "of predict_batch, 2 faces" in out and "this / other" in out
    ab_predict.main([str(root), "--stages", "--calls", "3", "--threads", "1", "--weights", "musica19"])
    out = capsys.readouterr().out
    for kernel in ("resample_many", "normalise_pyramid", "level_patch_features", "fully_connected"):
        assert kernel in out
    assert "19 patches" in out and "machine:" in out
