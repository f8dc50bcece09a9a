"""Bad input to predict and to the command line: a clear error, never a crash or a NaN."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import musica_ref as m
from musica_ref import cli

from conftest import EXAMPLE, EXAMPLE_BOX, ROOT, random_model

BOX = (20, 20, 70, 80)


@pytest.fixture(scope="module")
def model():
    return random_model("musica19", 0)


@pytest.fixture(scope="module")
def rgb():
    return np.random.default_rng(5).integers(0, 256, (100, 90, 3), dtype=np.uint8)


def finite(r):
    assert np.all(np.isfinite(r.landmarks)) and np.all(np.isfinite(r.errors))


@pytest.mark.parametrize("image, words", [
    (np.zeros((0, 10, 3), np.uint8), "empty"), (np.zeros((10, 0), np.uint8), "empty"),
    (np.zeros((10, 10, 2), np.uint8), "shape"), (np.zeros((10,), np.uint8), "shape"),
    (np.zeros((4, 10, 10, 3), np.uint8), "shape"), (np.zeros((10, 10, 3), bool), "dtype"),
    (np.full((10, 10, 3), np.nan, np.float32), "NaN"), (np.full((10, 10), np.inf), "NaN or infinite"),
    (np.zeros((10, 10, 3), complex), "dtype"), ("not an image", "does not exist"),
    (b"\x00\x01", "dtype"), (np.full((10, 10, 3), 1e300), "beyond float32"), (np.full((10, 10), -1e39), "float32"),
])
def test_bad_images(model, image, words):
    with pytest.raises(m.InputError, match=words):
        model.predict(image, (2, 2, 8, 8))


def test_grayscale_rgba_16bit_and_float_images_work(model, rgb):
    ref = model.predict(rgb, BOX)
    gray = rgb[:, :, 0]
    g = model.predict(gray, BOX)
    np.testing.assert_array_equal(g.landmarks, model.predict(np.repeat(gray[:, :, None], 3, 2), BOX).landmarks)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(model.predict(rgba, BOX).landmarks, ref.landmarks)
    for img in (rgb.astype(np.uint16) * 257, rgb.astype(np.float64) / 255, rgb[:, :, :1]):
        finite(model.predict(img, BOX))


def test_input_is_not_modified(model, rgb):
    before = rgb.copy()
    model.predict(rgb, BOX)
    np.testing.assert_array_equal(rgb, before)


@pytest.mark.parametrize("box, words", [
    ((500, 500, 600, 600), "outside"), ((-50, -50, -10, -10), "outside"), ((10, 10, 10, 50), "zero or negative"),
    ((30, 30, 20, 50), "zero or negative"), ((np.nan, 1, 5, 5), "non-finite"), ((1, 2, 3), "4 numbers"),
    ((0, 0, 1e9, 50), "larger than"), ((0, 0, 5e-324, 5e-324), "smaller than"), ((0, 0, 1e-12, 5), None),
    ((0, 0, 10 ** 400, 50), "too large for a float64"),
])
def test_bad_boxes(model, rgb, box, words):
    if words is None:                                     # tiny on one side only: a valid (if odd) box
        finite(model.predict(rgb, box))
        return
    with pytest.raises(m.InputError, match=words):
        model.predict(rgb, box)


def test_constant_and_tiny_images_give_finite_results(model):
    finite(model.predict(np.zeros((50, 50, 3), np.uint8), BOX))         # std 0: normalised to zeros
    finite(model.predict(np.full((1, 1, 3), 200, np.uint8), (0, 0, 1, 1)))
    finite(model.predict(np.full((50, 50, 3), 9, np.uint8), (0, 0, 1000, 3)))   # extreme aspect ratio
    finite(model.predict(np.full((50, 50, 3), 9, np.uint8), (10, 10, 10 + 1e-6, 10 + 1e-6)))   # a speck


# --- the command line --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("w") / "w19.h5"
    assert cli.main(["random-weights", str(p), "--variant", "musica19", "--float16"]) == 0
    return p


def run(capsys, *args):
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_predict_box_out_overlay(capsys, tmp_path, weights_file):
    code, out, err = run(capsys, "predict", EXAMPLE, "--box", ",".join(map(str, EXAMPLE_BOX)),
                         "--weights", weights_file, "--out", tmp_path / "p.json", "--overlay", tmp_path / "o.png")
    assert code == 0, err
    doc = json.loads((tmp_path / "p.json").read_text())
    assert [im["image"] for im in doc["images"]] == [str(EXAMPLE)]
    (res,) = doc["images"][0]["faces"]
    assert np.asarray(res["landmarks"]).shape == (68, 2) and res["iterations"] == 3
    assert res["box"] == list(EXAMPLE_BOX) and res["score"] is None and out == ""
    assert Image.open(tmp_path / "o.png").size == Image.open(EXAMPLE).size
    # .pts output round-trips through read_pts (1-based on disk, 0-based in memory)
    code, _, err = run(capsys, "predict", EXAMPLE, "--box", "92,112,228,236", "--weights", weights_file,
                       "--out", tmp_path / "p.pts")
    assert code == 0, err
    np.testing.assert_allclose(m.read_pts(tmp_path / "p.pts"), res["landmarks"], atol=1e-3)
    # --pts takes the tight box of the points
    code, _, err = run(capsys, "predict", EXAMPLE, "--pts", tmp_path / "p.pts", "--weights", weights_file)
    assert code == 0, err


@pytest.mark.parametrize("content, words", [
    (None, "does not exist"), (b"", "not an image file"), (b"hello", "not an image file"),
    (EXAMPLE.read_bytes()[:3000], "could not be decoded"),             # a truncated PNG
])
def test_cli_bad_image_files(capsys, tmp_path, weights_file, content, words):
    path = tmp_path / "img.png"
    if content is not None:
        path.write_bytes(content)
    code, _, err = run(capsys, "predict", path, "--box", "1,1,5,5", "--weights", weights_file)
    assert code == 2 and words in err and "Traceback" not in err


def test_cli_image_modes(capsys, tmp_path, weights_file):
    rng = np.random.default_rng(0)
    files = {
        "gray.png": Image.fromarray(rng.integers(0, 256, (60, 70), dtype=np.uint8)),
        "rgba.png": Image.fromarray(rng.integers(0, 256, (60, 70, 4), dtype=np.uint8)),
        "g16.png": Image.fromarray(rng.integers(0, 65535, (60, 70), dtype=np.uint16)),
        "pal.png": Image.fromarray(rng.integers(0, 256, (60, 70, 3), dtype=np.uint8)).convert("P"),
    }
    for name, im in files.items():
        im.save(tmp_path / name)
        code, out, err = run(capsys, "predict", tmp_path / name, "--box", "10,10,50,55", "--weights",
                             weights_file, "--out", tmp_path / (name + ".json"))
        assert code == 0, (name, err)
        doc = json.loads((tmp_path / (name + ".json")).read_text())
        assert np.all(np.isfinite(doc["images"][0]["faces"][0]["landmarks"]))


@pytest.mark.parametrize("args, words", [
    (["--box", "1,2,3"], "four numbers"), (["--box", "a,b,c,d"], "four numbers"),
    (["--box", "10,10,5,5"], "zero or negative"), (["--box", "900,900,950,950"], "outside"),
    (["--box", "1,1,9,9", "--pts", "x.pts"], "not both"), (["--box", "1,1,9,9", "--out", "x.txt"], "FILE.json"),
    (["--box", "1,1,9,9", "--overlay", "x.gif"], ".png or .jpg"), (["--box", "1,1,9,9", "--ts", "-1"], "ts must be"),
    (["--box", "1,1,9,9", "--ts", "nan"], "NaN"), (["--box", "1,1,9,9", "--ts", "5"], "write 5%"),
    (["--box", "1,1,9,9", "--ts", "x%"], "percentage"), (["--box", "1,1,9,9", "--refine", "9"], "refine must"),
    (["--box", "1,1,9,9", "--model", "musica19"], "not both"),
])
def test_cli_bad_arguments(capsys, weights_file, args, words):
    code, _, err = run(capsys, "predict", EXAMPLE, "--weights", weights_file, *args)
    assert code == 2 and words in err, err


def test_cli_refuses_to_overwrite_inputs(capsys, tmp_path, weights_file):
    img = tmp_path / "face.png"
    img.write_bytes(EXAMPLE.read_bytes())
    before = img.read_bytes()
    code, _, err = run(capsys, "predict", img, "--box", "92,112,228,236", "--weights", weights_file,
                       "--overlay", img)
    assert code == 2 and "refusing to overwrite" in err and img.read_bytes() == before
    code, _, err = run(capsys, "random-weights", weights_file)
    assert code == 2 and "--force" in err


def test_cli_empty_model_or_weights_is_refused_not_replaced_by_the_default(capsys):
    code, _, err = run(capsys, "predict", EXAMPLE, "--box", "92,112,228,236", "--model", "")
    assert code == 2 and "unknown model ''" in err
    code, _, err = run(capsys, "predict", EXAMPLE, "--box", "92,112,228,236", "--weights", "")
    assert code == 2 and "--weights needs a weights file" in err


def test_cli_weights_errors(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(cli.WEIGHTS_ENV, str(tmp_path / "none.h5"))
    code, _, err = run(capsys, "predict", EXAMPLE, "--box", "92,112,228,236")
    assert code == 2 and "none.h5" in err and "does not exist" in err
    code, _, err = run(capsys, "predict", EXAMPLE, "--box", "92,112,228,236", "--weights", EXAMPLE)
    assert code == 2 and "not an HDF5 file" in err
    code, _, err = run(capsys, "info", tmp_path / "none.h5")
    assert code == 2 and "does not exist" in err


def test_cli_count_and_info(capsys, weights_file):
    code, out, _ = run(capsys, "count")
    assert code == 0
    for row in (" 68  68 |   96.567      95.833     95    95 yes", " 68  34 |   48.782      48.022     48    48 yes",
                " 68  19 |   27.700      26.928     26    26 yes", " 98  98 |  138.822     138.111    138   138 yes",
                " 98  49 |   69.956      69.207     69    69 yes"):
        assert row in out
    assert "recurrent_hidden" in out and "27,965,307" in out
    code, out, _ = run(capsys, "count", "--landmarks", "98", "--patches", "44")
    assert code == 0 and "N = 98 landmarks, P = 44 patches" in out
    code, _, err = run(capsys, "count", "--variant", "musica7")
    assert code == 2 and "unknown variant" in err
    code, out, _ = run(capsys, "count", "--landmarks", "68")
    assert code == 0 and "N = 68 landmarks, P = 68 patches" in out
    code, out, _ = run(capsys, "info", weights_file)
    assert code == 0 and "musica19" in out and "float16" in out and "P = 19" in out


@pytest.mark.parametrize("args, words", [
    (["--patches", "5"], "needs --landmarks"), (["--landmarks", "5", "--patches", "6"], "from 1 to --landmarks (5)"),
    (["--landmarks", "0"], "at least one landmark"), (["--landmarks", "5", "--patches", "0"], "from 1 to"),
    (["--variant", "musica19", "--landmarks", "5"], "not both"), (["--landmarks", "1001"], "at most 1000 landmarks"),
    (["--landmarks", "99999999999999999999"], "at most 1000 landmarks"),
])
def test_count_and_random_weights_share_one_rule(capsys, tmp_path, args, words):
    for cmd in (["count"], ["random-weights", str(tmp_path / "w.h5")]):
        code, _, err = run(capsys, *cmd, *args)
        assert code == 2 and words in err and err.count("\n") == 1, (cmd, err)
    assert not (tmp_path / "w.h5").exists()


def test_random_weights_refuses_bad_seeds_and_missing_folders(capsys, tmp_path):
    for seed in ("-1", str(2 ** 63), "99999999999999999999999"):
        code, _, err = run(capsys, "random-weights", tmp_path / "w.h5", f"--seed={seed}")
        assert code == 2 and "--seed must be from 0 to 2**63 - 1" in err and err.count("\n") == 1, err
        assert not (tmp_path / "w.h5").exists()
    code, _, err = run(capsys, "random-weights", tmp_path / "no" / "w.h5")
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
    code, out, _ = run(capsys, "random-weights", tmp_path / "w.h5", "--landmarks", "7", "--patches", "2")
    assert code == 0 and "N = 7, P = 2" in out and [p.name for p in tmp_path.iterdir()] == ["w.h5"]


def test_cli_subprocess_reports_errors_without_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "musica_ref", "predict", str(tmp_path / "x.png"), "--box",
                        "1,1,5,5", "--weights", str(tmp_path / "w.h5")], capture_output=True, text=True,
                       cwd=ROOT)
    assert p.returncode == 2 and "musica-ref: error:" in p.stderr and "Traceback" not in p.stderr


def test_pts_reader_errors(tmp_path):
    cases = {"nobrace.pts": "1 2\n3 4\n", "count.pts": "n_points: 3\n{\n1 2\n3 4\n}\n",
             "words.pts": "{\n1 2\nx y\n}\n", "empty.pts": "{\n}\n", "three.pts": "{\n1 2 3\n}\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(m.InputError):
            m.read_pts(tmp_path / name)
    with pytest.raises(m.InputError, match="does not exist"):
        m.read_pts(tmp_path / "none.pts")
    (tmp_path / "ok.pts").write_text("version: 1\nn_points: 2\n{\n1 1\n10.5 3\n}\n")
    np.testing.assert_array_equal(m.read_pts(tmp_path / "ok.pts"), [[0, 0], [9.5, 2]])


def test_images_over_the_pixel_limit_are_one_clear_line(capsys, tmp_path, weights_file):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(path)
    from PIL import Image as PILImage
    before = PILImage.MAX_IMAGE_PIXELS
    try:
        for limit in (4000, 2000):                     # over Pillow's limit (its warning), over twice it (its error)
            code, _, err = run(capsys, "predict", path, "--box", "1,1,9,9", "--weights", weights_file,
                               "--max-pixels", limit)
            assert code == 2 and err.count("\n") == 1 and f"limit of {limit:,d} pixels" in err, err
            assert "--max-pixels" in err
        code, _, err = run(capsys, "predict", path, "--box", "1,1,9,9", "--weights", weights_file,
                           "--max-pixels", 4800)
        assert code == 0, err
    finally:
        PILImage.MAX_IMAGE_PIXELS = before


def test_pts_with_a_byte_order_mark_and_folders_named_as_folders(tmp_path, capsys, weights_file):
    (tmp_path / "bom.pts").write_bytes(b"\xef\xbb\xbfversion: 1\nn_points: 2\n{\n1 1\n10.5 3\n}\n")
    np.testing.assert_array_equal(m.read_pts(tmp_path / "bom.pts"), [[0, 0], [9.5, 2]])
    with pytest.raises(m.InputError, match="is a folder"):
        m.read_pts(tmp_path)
    with pytest.raises(m.InputError, match="is a folder"):
        m.load_image(tmp_path)
    code, _, err = run(capsys, "predict", EXAMPLE, "--pts", tmp_path, "--weights", weights_file)
    assert code == 2 and "is a folder" in err


def test_batch_boxes_are_all_checked_first_and_named_by_index(model, rgb):
    boxes = [BOX] * 5 + [(10, 10, 5, 5)] + [BOX] * 3
    with pytest.raises(m.InputError, match=r"^box 5 of 9: box has zero or negative size"):
        model.predict_batch(rgb, boxes)
    for bare in (BOX, list(BOX), np.asarray(BOX, float)):
        with pytest.raises(m.InputError, match="a list of boxes; got one box"):
            model.predict_batch(rgb, bare)
    with pytest.raises(m.InputError, match="a list of boxes"):
        model.predict_batch(rgb, 7)
    with pytest.raises(m.InputError, match="4 numbers"):
        model.predict(rgb, 7)


def test_paths_and_bgr_arrays(model, tmp_path):
    img = np.random.default_rng(9).integers(0, 256, (70, 80, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    ref = model.predict(img, BOX)
    for same in (model.predict(str(tmp_path / "a.png"), BOX), model.predict(tmp_path / "a.png", BOX),
                 model.predict(img[:, :, ::-1], BOX, channels="bgr"),
                 model.predict_batch([img[:, :, ::-1]] * 2, [BOX, BOX], channels="bgr")[1]):
        np.testing.assert_array_equal(same.landmarks, ref.landmarks)
    with pytest.raises(m.InputError, match='"rgb" or "bgr"'):
        model.predict(img, BOX, channels="rgba")


def test_the_compile_notice_comes_when_a_kernel_compiles_and_only_then():
    """Numba reports real compiles only (a kernel loaded from the disk cache is silent): the notice fires
    once, for the package's kernels only. Fresh functions without a cache compile for real here."""
    from numba import njit
    from musica_ref.warmup import compile_notice

    def ours(x):
        return x + 1
    ours.__module__ = "musica_ref.kernels.layers"         # as if it were one of the package's kernels

    def theirs(x):
        return x - 1
    said = []
    with compile_notice(lambda: said.append(1)):
        njit(theirs)(1)
        assert said == []
        njit(ours)(1)
        njit(ours)(1.5)                                     # a second compile: no second notice
    assert said == [1]
    njit(ours)(2)                                           # the context is closed
    assert said == [1]


def test_after_warmup_nothing_compiles(capsys):
    """`musica-ref warmup` leaves no kernel to compile for any path the model has, nor for a grayscale or
    16-bit photo, a large image or a detected face."""
    from musica_ref.warmup import compile_all, compile_notice
    assert cli.main(["warmup"]) == 0
    assert "every kernel compiled or loaded from the cache" in capsys.readouterr().err
    said = []
    with compile_notice(lambda: said.append(1)):
        compile_all(progress=lambda msg: None)
        model = m.MuSiCa.load("musica19")
        rng = np.random.default_rng(3)
        for image in (rng.integers(0, 256, (700, 1300), dtype=np.uint8),
                      rng.integers(0, 65536, (90, 120, 3), dtype=np.uint16)):
            model.predict(image, (20, 20, 80, 85))
    assert said == []


def test_the_compile_notice_comes_once_before_the_first_prediction(capsys, monkeypatch, tmp_path, weights_file):
    """The command line opens the notice around its work: a kernel that starts to compile (here an event
    like Numba's, sent from inside the prediction) prints one line first, once."""
    from numba.core import event
    from musica_ref import kernels, model as model_module
    real = model_module.MuSiCa.predict_batch

    def compiling(self, *args, **kw):
        for _ in range(2):
            with event.trigger_event("numba:compile", data={"dispatcher": kernels.relu, "args": (),
                                                            "return_type": None}):
                pass
        return real(self, *args, **kw)
    code, _, err = run(capsys, "predict", EXAMPLE, EXAMPLE, "--box", "92,112,228,236", "--weights", weights_file)
    lines = err.splitlines()
    assert code == 2 and "--box and --pts are for one image" in err and len(lines) == 1   # nothing ran
    monkeypatch.setattr(model_module.MuSiCa, "predict_batch", compiling)
    code, _, err = run(capsys, "predict", EXAMPLE, "--box", "92,112,228,236", "--weights", weights_file)
    lines = err.splitlines()
    assert code == 0 and lines[0].startswith("musica-ref: compiling the Numba kernels") and len(lines) == 2
    monkeypatch.setattr(model_module.MuSiCa, "predict_batch", real)
    code, _, err = run(capsys, "predict", EXAMPLE, "--box", "92,112,228,236", "--weights", weights_file)
    assert code == 0 and "compiling" not in err                                   # nothing compiled
    code, _, err = run(capsys, "predict", tmp_path / "none.png", "--box", "1,1,5,5", "--weights", weights_file)
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err     # an error stays one line


def test_only_the_faces_region_is_converted(model):
    """A face in a large image that is not already (H, W, 3) uint8 or float32 and contiguous (grayscale,
    BGR, 16-bit, float64, a strided view): only the pixels its pyramid takes are converted, with the same
    result bit for bit as converting the whole image first, for faces alone and several in one call."""
    import tracemalloc
    rng = np.random.default_rng(11)
    big = rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8)
    boxes = [(100, 120, 160, 190), (900, 600, 1000, 700), (-20, 850, 40, 910)]      # the last at an edge
    ref = model.predict_batch(big, boxes)
    assert [r.box for r in ref] == [tuple(map(float, b)) for b in boxes]
    gray = big[:, :, 1]
    cases = [(big[:, :, ::-1], "bgr", big), (gray, "rgb", np.repeat(gray[:, :, None], 3, 2)),
             (big.astype(np.uint16) * 3, "rgb", big.astype(np.float32) * 3),
             (big / 7.0, "rgb", (big / 7.0).astype(np.float32)),
             (np.concatenate([big, big], 1)[:, ::2], "rgb", np.ascontiguousarray(np.concatenate([big, big], 1)[:, ::2]))]
    for image, channels, whole in cases:
        want = ref if whole is big else model.predict_batch(whole, boxes)
        got = model.predict_batch(image, boxes, channels=channels)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.landmarks, w.landmarks)
            np.testing.assert_array_equal(g.errors, w.errors)
        one = model.predict(image, boxes[1], channels=channels)
        np.testing.assert_array_equal(one.landmarks, want[1].landmarks)
    # memory: a small face in a float64 image converts a region, not the image (float32: 13 MB here)
    f64 = big / 7.0
    model.predict(f64, boxes[0])                             # anything made once, made before measuring
    tracemalloc.start()
    try:
        model.predict(f64, boxes[0])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.25 * f64.size * 4, peak


def test_an_existing_file_without_an_extension_is_no_output_folder(capsys, tmp_path, weights_file):
    """--out /dev/null (or any existing file that is not .json or .pts) and --overlay onto a file that is not
    an image: one line, nothing written (it was a traceback from making the folder)."""
    plain = tmp_path / "results"
    plain.write_bytes(b"keep")
    for args, words in ((["--out", os.devnull], "is not a folder"), (["--out", plain], "is not a folder"),
                        (["--overlay", plain], "is not a folder")):
        code, _, err = run(capsys, "predict", EXAMPLE, "--box", "92,112,228,236", "--weights", weights_file, *args)
        assert code == 2 and err.count("\n") == 1 and words in err, err
    assert plain.read_bytes() == b"keep"


def test_outputs_onto_a_pipe_or_device_are_written_into_it_not_replaced(tmp_path):
    """Renaming a finished temporary file onto a named pipe (or /dev/null) would replace it: such a path is
    written directly."""
    import stat
    import threading
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()), daemon=True)
    reader.start()
    cli._atomic_write(str(fifo), lambda p: open(p, "w").write("{}\n"))
    reader.join(10)
    assert got == ["{}\n"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
