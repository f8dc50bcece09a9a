"""The separate trainer (needs PyTorch): learning, augmentation geometry, flips, GDB, resume."""
import json
import math

import numpy as np
import pytest

import musica_ref as m

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install '.[train]')")
from tools import train as T  # noqa: E402
from tools.trainer import data as D  # noqa: E402

from conftest import dot_image, synthetic_folder  # noqa: E402


def test_augmentations_keep_landmarks_on_the_image_content():
    rng = np.random.default_rng(1)
    pts = np.array([[30, 30], [80, 28], [55, 50], [40, 70], [75, 72]], float)
    img = dot_image(pts)
    on = D.Augment(p_geometric=1.0, p_flip=0.0, p_colour=0.0, p_gray=0.0, p_occlude=0.0)
    for _ in range(30):
        out, p2, v2, box = D.augment(img, pts, np.ones(5, bool), None, on, rng)
        for k, (x, y) in enumerate(p2):
            r, c = int(round(y)), int(round(x))
            assert 0 <= r < out.shape[0] and 0 <= c < out.shape[1]
            # the dot's peak is at the moved landmark: its colour is the dot's own, brighter than around it
            assert out[r, c, 1] > 150, (k, out[r, c])
            assert abs(out[r, c, 0] / out[r, c, 1] * 200 - (k + 1) * 20) < 12
        assert np.all(box[:2] < box[2:])


def test_detector_style_boxes_stay_in_their_family_and_off_by_default():
    rng = np.random.default_rng(3)
    aug = D.Augment()
    assert aug.p_detector_box == 0.0                      # runs before the box family draw the same boxes
    tight = np.array([10.0, 20.0, 50.0, 100.0])           # w 40, h 80
    squares = 0
    for _ in range(400):
        b = D.detector_style_box(tight, aug, rng)
        bw, bh = b[2] - b[0], b[3] - b[1]
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        assert -0.1 * 40 - 1e-9 <= cx - 30 <= 0.1 * 40 + 1e-9
        assert -0.25 * 80 - 1e-9 <= cy - 60 <= 0.1 * 80 + 1e-9
        if abs(bw - bh) < 1e-9:                           # a square: side from 0.8 to 1.6 max(w, h)
            squares += 1
            assert 0.8 * 80 - 1e-9 <= bw <= 1.6 * 80 + 1e-9
        else:
            assert 0.8 * 40 - 1e-9 <= bw <= 1.4 * 40 + 1e-9 and 0.8 * 80 - 1e-9 <= bh <= 1.6 * 80 + 1e-9
    assert 150 < squares < 250
    # with p_detector_box = 1 augment returns such a box around the augmented points' tight box
    pts = np.array([[30, 30], [80, 28], [55, 50], [40, 70], [75, 72]], float)
    only = D.Augment.off()
    only = D.Augment(**{**vars(only), **{k: v for k, v in vars(D.Augment()).items() if k.startswith("box_")},
                        "p_detector_box": 1.0})
    _, _, _, box = D.augment(dot_image(pts), pts, np.ones(5, bool), None, only, rng)
    w, h = 50, 44                                         # the points' tight box
    assert box[2] - box[0] >= 0.8 * w - 1e-9 and box[3] - box[1] <= 1.6 * max(w, h) + 1e-9


def test_flip_moves_points_with_the_pixels_and_twice_is_identity():
    rng = np.random.default_rng(2)
    for N in (68, 98):
        pts = rng.uniform(5, 90, (N, 2))
        vis = rng.random(N) > 0.2
        img = rng.integers(0, 255, (96, 110, 3)).astype(np.float32)
        fi, fp, fv = D.flip(img, pts, vis)
        perm = D.MIRROR[N]
        assert np.array_equal(perm[perm], np.arange(N))                     # an involution
        np.testing.assert_array_equal(fi[:, 109 - 7], img[:, 7])
        np.testing.assert_allclose(fp[perm][:, 0], 109 - pts[:, 0])
        gi, gp, gv = D.flip(fi, fp, fv)
        np.testing.assert_array_equal(gi, img)
        np.testing.assert_allclose(gp, pts, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(gv, vis)
    assert D.MIRROR[68][36] == 45 and D.MIRROR[68][8] == 8 and D.MIRROR[98][60] == 72 and D.MIRROR[98][96] == 97


def test_mirror_permutation_maps_the_mean_face_onto_itself(shared_data):
    faces = D.FaceSet(shared_data / "val_merl_aflw.h5", limit=400)
    mean = D.mean_shape(faces)
    mirrored = mean[D.MIRROR[68]].copy()
    mirrored[:, 0] = 2 * mean[:, 0].mean() - mirrored[:, 0]
    assert np.abs(mirrored - mean).max() < 0.06 * 142                   # a frontal-ish mean is symmetric


def test_gdb_weights_rare_shapes_more():
    rng = np.random.default_rng(3)
    base = rng.uniform(0, 100, (12, 2))
    shapes = [base + rng.normal(0, 1, base.shape) for _ in range(95)]
    shapes += [base * [1.6, 0.7] + rng.normal(0, 1, base.shape) for _ in range(5)]    # rare: squashed
    faces = D.FaceSet.__new__(D.FaceSet)
    faces.landmarks = np.stack(shapes)
    faces.visible = np.ones(faces.landmarks.shape[:2], bool)
    faces.boxes = np.stack([m.geometry.tight_box(s) for s in shapes])
    w, K, d = D.gdb_weights(faces)
    assert K >= 1 and w.shape == (100,) and math.isclose(w.sum(), 100)
    assert d[95:].min() > np.median(d[:95])                 # every rare shape is farther than a typical one
    assert w[95:].mean() > 1.3 * w[:95].mean()              # and rare shapes are drawn more often


def run_train(folder, out, *extra):
    T.main(["--landmarks", "5", "--train", str(folder), "--val", str(folder), "--out", str(out), "--batch", "8",
            "--minutes", "5", "--lr", "3e-3", "--ema", "0.5", "--no-gdb", "--threads", "1", *extra])


def test_training_reduces_the_loss_and_exports_a_loadable_file(tmp_path):
    folder = synthetic_folder(tmp_path)
    out = tmp_path / "w.h5"
    run_train(folder, out, "--epochs", "6", "--no-augment")
    log = [json.loads(line) for line in open(str(out) + ".log.jsonl")]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert log[-1]["train_loss"] < 0.9 * log[0]["train_loss"], [r["train_loss"] for r in log]
    assert log[-1]["val_nme"][-1] < log[0]["val_nme"][-1]
    w = m.load_weights(out)
    assert w.provenance["epochs"] == 6 and w.provenance["steps"] == 36 and "git_commit" in w.provenance
    r = m.MuSiCa(w).predict(m.load_image(folder / "f000.png"), m.geometry.tight_box(m.read_pts(folder / "f000.pts")))
    assert np.all(np.isfinite(r.landmarks))


def test_resume_continues_where_it_stopped(tmp_path):
    folder = synthetic_folder(tmp_path, n=24)
    straight, split = tmp_path / "a.h5", tmp_path / "b.h5"
    run_train(folder, straight, "--epochs", "2")
    run_train(folder, split, "--epochs", "1")
    run_train(folder, split, "--epochs", "2", "--resume")
    la = [json.loads(line) for line in open(str(straight) + ".log.jsonl")]
    lb = [json.loads(line) for line in open(str(split) + ".log.jsonl")]
    assert [r["step"] for r in lb] == [r["step"] for r in la] == [3, 6]
    wa, wb = m.load_weights(straight), m.load_weights(split)
    # the same faces, augmentations and optimiser state: equal up to PyTorch's CPU kernels, which are not
    # bit-reproducible from one process to the next (differences seen: ~1e-6)
    for a, b in zip(wa.iterations, wb.iterations):
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-5, err_msg=name)
    # ... while another data order and initialisation lands far outside that tolerance
    other = tmp_path / "c.h5"
    run_train(folder, other, "--epochs", "2", "--seed", "1")
    wc = m.load_weights(other)
    assert max(np.abs(a[k] - c[k]).max() for a, c in zip(wa.iterations, wc.iterations) for k in a) > 1e-3


def test_warm_start_from_exported_weights(tmp_path, capsys):
    folder = synthetic_folder(tmp_path, n=16)
    run_train(folder, tmp_path / "a.h5", "--epochs", "1")
    run_train(folder, tmp_path / "b.h5", "--epochs", "1", "--init", str(tmp_path / "a.h5"))
    assert "warm start from" in capsys.readouterr().out
    a, b = m.load_weights(tmp_path / "a.h5").provenance, m.load_weights(tmp_path / "b.h5").provenance
    assert a["warm_start"] == "none" and str(tmp_path / "a.h5") in b["warm_start"]
    assert (b["epochs"], b["total_epochs"], b["total_steps"]) == (1, 2, a["steps"] + b["steps"])
    assert b["total_training_minutes"] >= a["training_minutes"] >= 0


def test_a_budget_cut_inside_an_epoch_changes_nothing(tmp_path, capsys):
    folder = synthetic_folder(tmp_path, n=24)
    out = tmp_path / "w.h5"
    run_train(folder, out, "--epochs", "1")
    before = (out.read_bytes(), (tmp_path / "w.h5.ckpt").read_bytes())
    T.main(["--landmarks", "5", "--train", str(folder), "--out", str(out), "--batch", "8", "--epochs", "3",
            "--resume", "--minutes", "0.0001", "--no-gdb", "--threads", "1"])
    assert "partial epoch is dropped" in capsys.readouterr().out
    assert (out.read_bytes(), (tmp_path / "w.h5.ckpt").read_bytes()) == before


def _rotation(yaw, pitch, roll):
    cy, sy, cp, sp, cr, sr = (f(math.radians(a)) for a in (yaw, pitch, roll) for f in (math.cos, math.sin))
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return Rz @ Rx @ Ry


def test_hidden_points_are_filled_where_the_3d_shape_projects_them():
    rng = np.random.default_rng(5)
    S = rng.normal(0, 1, (68, 3)) * [1.0, 1.2, 0.5]                     # one rigid 3-D "face"

    def project(yaw, pitch, roll, scale, shift):
        return scale * (S @ _rotation(yaw, pitch, roll).T)[:, :2] + shift

    # fully located faces at moderate poses give the basis, as frontal-ish training faces do
    full = np.stack([project(*rng.uniform([-35, -15, -20], [35, 15, 20]), rng.uniform(20, 60),
                             rng.uniform(0, 100, 2)) for _ in range(60)])
    basis = D.shape_basis_3d(full, np.ones(full.shape[:2], bool))
    assert basis.shape == (3, 68)
    # near-profile faces, far beyond those poses, with the far third of the points hidden
    for yaw in (-80, 65, 85):
        truth = project(yaw, 5, -10, 40, np.array([50.0, 60.0]))
        depth = (S @ _rotation(yaw, 5, -10).T)[:, 2]
        vis = depth > np.quantile(depth, 0.33)
        given = truth.copy()
        given[~vis] = -97.0                                             # what a set stores: meaningless
        before = given.copy()
        filled, ok = D.fill_hidden(given[None], vis[None], basis)
        out = filled[0]
        assert ok.tolist() == [True]
        np.testing.assert_array_equal(given, before)                    # the input is not modified
        np.testing.assert_array_equal(out[vis], truth[vis])             # located points unchanged
        np.testing.assert_allclose(out[~vis], truth[~vis], rtol=0, atol=1e-6)
    # a face with too few located points keeps its rows and is flagged; too few full faces is refused
    few = np.zeros(68, bool)
    few[:4] = True
    filled, ok = D.fill_hidden(truth[None], few[None], basis)
    np.testing.assert_array_equal(filled[0], truth)
    assert ok.tolist() == [False]
    with pytest.raises(ValueError, match="every point located"):
        D.shape_basis_3d(full[:20], np.ones((20, 68), bool))


def random_loss_inputs(seed: int, B: int, N: int = 68):
    """Outputs of 3 iterations near random targets, a random visibility mask and normalisers: loss_terms'
    arguments (out, gt0, visible, norm)."""
    g = torch.Generator().manual_seed(seed)
    gt0 = torch.rand(B, N, 2, generator=g, dtype=torch.float64) * 100
    out = {"shapes": gt0 + torch.randn(3, B, N, 2, generator=g, dtype=torch.float64),
           "errors": torch.rand(3, B, generator=g, dtype=torch.float64) * 0.05}
    vis = torch.rand(B, N, generator=g) > 0.2
    return out, gt0, vis, torch.full((B,), 40.0, dtype=torch.float64)


def test_hidden_weight_counts_the_hidden_points_in_the_point_loss_only():
    B, N = 3, 68
    out, gt0, vis, norm = random_loss_inputs(0, B, N)
    moved = gt0.clone()
    moved[~vis] += 30.0                                                 # other targets for the hidden points
    base, eps = T.loss_terms(out, gt0, vis, norm, 0.0)
    same, eps2 = T.loss_terms(out, moved, vis, norm, 0.0)
    assert float(base) == float(same) and torch.equal(eps, eps2)        # weight 0: hidden targets ignored
    w_a, eps_a = T.loss_terms(out, gt0, vis, norm, 0.0, hidden_weight=0.5)
    w_b, eps_b = T.loss_terms(out, moved, vis, norm, 0.0, hidden_weight=0.5)
    assert float(w_b) > float(w_a) + 0.1 and torch.equal(eps_a, eps) and torch.equal(eps_b, eps)
    # weight 1 with every point visible is the plain loss
    allv = torch.ones(B, N, dtype=torch.bool)
    assert math.isclose(float(T.loss_terms(out, gt0, allv, norm, 0.0, hidden_weight=1.0)[0]),
                        float(T.loss_terms(out, gt0, allv, norm, 0.0)[0]), rel_tol=1e-12)


def test_training_with_hidden_weight_records_it(tmp_path):
    folder = synthetic_folder(tmp_path, n=32)
    out = tmp_path / "w.h5"
    run_train(folder, out, "--epochs", "1", "--hidden-weight", "0.5")
    p = m.load_weights(out).provenance
    assert p["hidden_weight"] == 0.5 and "fill_hidden" in p["hidden_points"]
    run_train(folder, tmp_path / "v.h5", "--epochs", "1")
    assert m.load_weights(tmp_path / "v.h5").provenance["hidden_points"] == "left out of the loss"


def test_iteration_weights_scale_each_iterations_term():
    out, gt0, vis, norm = random_loss_inputs(1, 4)
    plain, eps = T.loss_terms(out, gt0, vis, norm, 0.0)
    ones, eps1 = T.loss_terms(out, gt0, vis, norm, 0.0, iteration_weights=[1, 1, 1])
    assert float(ones) == float(plain) and torch.equal(eps, eps1)
    # one iteration's term alone, three times: the weighted sum is linear in the weights
    terms = [float(T.loss_terms(out, gt0, vis, norm, 0.0, iteration_weights=w)[0])
             for w in ([1, 0, 0], [0, 1, 0], [0, 0, 1])]
    assert math.isclose(sum(terms), float(plain), rel_tol=1e-12) and min(terms) > 0
    mixed = float(T.loss_terms(out, gt0, vis, norm, 0.0, iteration_weights=[2, 0.5, 0])[0])
    assert math.isclose(mixed, 2 * terms[0] + 0.5 * terms[1], rel_tol=1e-12)
    # only the moved iteration's term changes
    moved = {"shapes": out["shapes"].clone(), "errors": out["errors"]}
    moved["shapes"][2] += 5.0
    assert float(T.loss_terms(moved, gt0, vis, norm, 0.0, iteration_weights=[1, 1, 0])[0]) == \
        float(T.loss_terms(out, gt0, vis, norm, 0.0, iteration_weights=[1, 1, 0])[0])


@pytest.mark.parametrize("text", ["1,1", "1,1,1,1", "a,b,c", "1,-1,1", "0,0,0", "1,nan,1", "1,inf,1"])
def test_bad_iteration_weights_are_refused_by_name(text):
    with pytest.raises(SystemExit, match="--iteration-weights"):
        T.parse_iteration_weights(text)


def test_training_with_iteration_weights_records_them(tmp_path):
    folder = synthetic_folder(tmp_path, n=32)
    run_train(folder, tmp_path / "w.h5", "--epochs", "1", "--iteration-weights", "2,1.5,1")
    assert m.load_weights(tmp_path / "w.h5").provenance["iteration_weights"] == "2,1.5,1"
    run_train(folder, tmp_path / "v.h5", "--epochs", "1")
    assert m.load_weights(tmp_path / "v.h5").provenance["iteration_weights"] == "1,1,1"
