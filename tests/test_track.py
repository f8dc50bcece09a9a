"""Tracking through video frames: the One Euro filter, the Tracker on a drawn face that moves, and
`musica-ref track` on a folder of frames and on a video file."""
import json
import sys

import numpy as np
import pytest
from PIL import Image

import musica_ref as m
from musica_ref import cli
from musica_ref.track import FaceSmoother, OneEuroFilter, Tracker, box_iou, similarity_fit

from conftest import EXAMPLE, EXAMPLE_BOX, ROOT

FPS = 30.0


# --- the One Euro filter ------------------------------------------------------------------------------------

def test_one_euro_keeps_a_constant_and_smooths_a_still_noisy_point():
    f = OneEuroFilter()
    x = np.array([[0.3, 0.4], [0.6, 0.7]])
    for k in range(5):
        np.testing.assert_allclose(f(x, k / FPS), x)
    rng = np.random.default_rng(0)
    noisy = x[None] + rng.normal(0, 0.004, (300, 2, 2))            # sensor noise, in face sizes
    f = OneEuroFilter()
    out = np.stack([f(p, k / FPS) for k, p in enumerate(noisy)])
    raw_jitter = np.std(np.diff(noisy[50:], axis=0))
    smooth_jitter = np.std(np.diff(out[50:], axis=0))
    assert smooth_jitter < raw_jitter / 3, (raw_jitter, smooth_jitter)


def test_one_euro_follows_fast_motion_within_a_frame():
    f = OneEuroFilter()
    v = 2.0                                                         # face sizes a second
    for k in range(60):
        t = k / FPS
        out = f(np.array([[v * t, 0.0]]), t)
    lag_frames = (v * t - out[0, 0]) / (v / FPS)
    assert 0 <= lag_frames < 1.0, lag_frames


def test_one_euro_refuses_bad_parameters_and_times():
    for kw in ({"min_cutoff": 0}, {"beta": -1}, {"d_cutoff": float("nan")}):
        with pytest.raises(m.InputError):
            OneEuroFilter(**kw)
    f = OneEuroFilter()
    f(np.zeros((1, 2)), 1.0)
    with pytest.raises(m.InputError, match="increase"):
        f(np.zeros((1, 2)), 1.0)


# --- the face smoother: pose and shape ---------------------------------------------------------------------

def _face_points(rng, n=68):
    return rng.uniform(-0.5, 0.5, (n, 2)) * 120 + 300.0               # a face of about 120 px


def _similar(ref, s, theta, t):
    c, si = np.cos(theta), np.sin(theta)
    centre = ref.mean(0)
    return (ref - centre) @ np.array([[c, si], [-si, c]]) * s + centre + t


def test_similarity_fit_recovers_a_similarity():
    rng = np.random.default_rng(2)
    ref = _face_points(rng)
    x = _similar(ref, 1.3, 0.4, np.array([5.0, -7.0]))
    t, s, theta = similarity_fit(ref - ref.mean(0), x)
    np.testing.assert_allclose([*t, s, theta], [*(ref.mean(0) + [5.0, -7.0]), 1.3, 0.4], rtol=1e-12)


def test_face_smoother_keeps_a_still_face_and_catches_up_with_a_stopped_one():
    rng = np.random.default_rng(3)
    ref = _face_points(rng)
    f = FaceSmoother()
    for k in range(5):
        np.testing.assert_allclose(f(ref, k / FPS), ref, atol=1e-9)
    for k in range(5, 60):                                          # turning, growing and moving, then still
        x = _similar(ref, 1 + 0.01 * min(k, 40), 0.02 * min(k, 40), np.array([2.0, 1.0]) * min(k, 40))
        out = f(x, k / FPS)
    np.testing.assert_allclose(out, x, atol=1e-3)


def test_face_smoother_follows_rigid_motion_within_a_frame_and_calms_noise():
    """A face sliding at a face size a second lags less than a frame; on a still face with independent
    noise on every point, the frame-to-frame movement drops more than 3 times."""
    rng = np.random.default_rng(4)
    ref = _face_points(rng)
    f = FaceSmoother()
    v = 120.0                                                       # px a second: one face size
    for k in range(60):
        out = f(ref + [v * k / FPS, 0], k / FPS)
    lag_frames = (ref[:, 0].mean() + v * k / FPS - out[:, 0].mean()) / (v / FPS)
    assert 0 <= lag_frames < 1.0, lag_frames
    noisy = ref[None] + rng.normal(0, 0.5, (200, 68, 2))             # half a pixel
    f = FaceSmoother()
    out = np.stack([f(p, k / FPS) for k, p in enumerate(noisy)])
    raw, smooth = (np.sqrt(np.mean(np.diff(a[30:], axis=0) ** 2)) for a in (noisy, out))
    assert smooth < raw / 3, (raw, smooth)


def test_face_smoother_lets_a_change_of_expression_through():
    """Points moving within the face (a mouth opening by a third of the face in 0.2 s) follow it: within a
    frame and a half once it has stopped."""
    rng = np.random.default_rng(5)
    ref = _face_points(rng)
    mouth = np.arange(48, 68)
    f = FaceSmoother()
    for k in range(40):
        x = ref.copy()
        x[mouth, 1] += 40.0 * min(max(k - 10, 0), 6) / 6
        out = f(x, k / FPS)
        if k == 17:                                                 # one frame after the mouth stopped
            assert np.abs(out[mouth, 1] - x[mouth, 1]).max() < 0.15 * 40
    np.testing.assert_allclose(out, x, atol=1e-2)


def test_face_smoother_turns_through_half_a_turn_without_a_jump():
    rng = np.random.default_rng(6)
    ref = _face_points(rng)
    f = FaceSmoother()
    for k in range(80):
        x = _similar(ref, 1.0, 0.05 * k, 0.0)                      # 0 .. 3.95 rad: through +-pi
        out = f(x, k / FPS)
        assert np.abs(out - x).max() < 0.1 * 120, k


# --- the tracker on a drawn face that moves ---------------------------------------------------------------------

PAD = 30


def moving_face(dx, dy, face=True):
    img = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    H, W = img.shape[:2]
    out = np.full((H + 2 * PAD, W + 2 * PAD, 3), 120, np.uint8)
    if face:
        out[PAD + dy:PAD + dy + H, PAD + dx:PAD + dx + W] = img
    return out


class FakeDetector:
    """The drawn face's box where the frame has put it (dlib does not find a drawn face); counts its calls."""

    def __init__(self, boxes=1):
        self.at, self.calls, self.boxes = (0, 0), 0, boxes

    def __call__(self, rgb):
        self.calls += 1
        dx, dy = self.at
        b = (EXAMPLE_BOX[0] + PAD + dx, EXAMPLE_BOX[1] + PAD + dy, EXAMPLE_BOX[2] + PAD + dx, EXAMPLE_BOX[3] + PAD + dy)
        return [(b[0] + k, b[1] + k, b[2] + k, b[3] + k, 1.0) for k in range(self.boxes)]


@pytest.fixture(scope="module")
def model19():
    return m.MuSiCa.load("musica19")


def test_the_tracker_follows_a_moving_face_with_one_detection(model19):
    det = FakeDetector()
    tr = Tracker(model19, detector=det, detect_every=0)
    rel = []
    for k in range(12):
        det.at = (2 * k, k)                                        # 2 px right and 1 down a frame
        faces = tr.update(moving_face(*det.at))
        assert [f.track_id for f in faces] == [0] and not faces[0].failed
        rel.append(faces[0].landmarks.mean(0) - (PAD + 2 * k, PAD + k))     # in the face's own coordinates
    assert det.calls == 1                                           # the landmarks gave every later box
    # the face moves 24.6 px in all; from frame 1 on (frame 0 ran from the detector's box, the others from
    # the landmarks' own box) the landmarks stay on it to within the fit's own wobble on a drawing
    drift = np.linalg.norm(np.array(rel[1:]) - rel[1], axis=1)
    assert drift.max() < 6.0, np.round(rel, 1)


def test_a_lost_face_is_dropped_and_found_again_with_a_new_track(model19):
    det = FakeDetector()
    tr = Tracker(model19, detector=det, detect_every=0)
    assert [f.track_id for f in tr.update(moving_face(0, 0))] == [0]
    assert tr.update(moving_face(0, 0, face=False)) == []           # its estimate says failed: dropped
    assert det.calls == 2                                           # ... and the detector looked again
    assert [f.track_id for f in tr.update(moving_face(0, 0))] == [1]


def test_periodic_detection_adds_no_track_for_a_tracked_face(model19):
    det = FakeDetector(boxes=2)                                     # two boxes on the one face
    # tf infinite: this is about the detector's boxes only (the drawn face's estimates sit near musica19's
    # threshold, and a drop would add a track; dropping is tested above)
    tr = Tracker(model19, detector=det, detect_every=3, tf=float("inf"))
    for k in range(7):
        faces = tr.update(moving_face(0, 0))
        assert [f.track_id for f in faces] == [0], k
    assert det.calls == 3                                           # frames 0, 3 and 6
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7) and box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0


def test_two_tracks_on_one_face_merge_into_the_older(model19):
    """Two tracks that come to lie on the same face (here a second one put there by hand) become one: the
    older id stays."""
    from musica_ref.track import _Track
    tr = Tracker(model19, detector=FakeDetector(), detect_every=0)
    tr.update(moving_face(0, 0))
    tr.tracks.append(_Track(7, tr.tracks[0].landmarks + 1.0, FaceSmoother()))
    assert [f.track_id for f in tr.update(moving_face(0, 0))] == [0]
    assert [t.id for t in tr.tracks] == [0]


def test_smoothing_calms_a_still_face_with_sensor_noise(model19):
    """The tracker's own landmarks on a still drawn face with noise (sigma 4 grey levels): smoothed, they move
    less from frame to frame than unsmoothed."""
    rng = np.random.default_rng(1)
    frames = [np.clip(moving_face(0, 0) + rng.normal(0, 4, moving_face(0, 0).shape), 0, 255).astype(np.uint8)
              for _ in range(25)]
    moves = {}
    for smoothing in (True, False):
        tr = Tracker(model19, tf=float("inf"), detector=FakeDetector(), detect_every=0, smoothing=smoothing)
        pts = np.stack([tr.update(f)[0].landmarks for f in frames])
        moves[smoothing] = np.sqrt(np.mean(np.sum(np.diff(pts[5:], axis=0) ** 2, axis=2)))
    assert moves[True] < moves[False] / 2, moves


def test_smoothing_off_gives_the_raw_landmarks(model19):
    frames = [moving_face(k, 0) for k in range(3)]
    det = FakeDetector()
    raw = Tracker(model19, detector=det, detect_every=0, smoothing=False)
    got = [raw.update(f)[0] for f in frames]
    again = model19.predict(frames[1], m.geometry.tight_box(got[0].landmarks))
    np.testing.assert_array_equal(got[1].landmarks, again.landmarks)


def test_tracker_refuses_bad_settings(model19):
    """Every setting is checked when the Tracker is made (not at the first frame), each with an InputError
    naming it: also strings, None, NaN and integers too large for a float."""
    for kw in ({"detect_every": -1}, {"detect_every": 1.5}, {"fps": 0}, {"fps": 10 ** 400}, {"fps": True},
               {"beta": -2}, {"beta": None}, {"min_cutoff": "a"}, {"shape_beta": 10 ** 400},
               {"new_iou": float("nan")}, {"merge_iou": 5}, {"new_iou": "x"}, {"ts": -1}, {"ts": "x"},
               {"tf": 10 ** 400}, {"refine": 9}):
        name = next(iter(kw))
        with pytest.raises(m.InputError, match=name):
            Tracker(model19, **kw)
    tracker = Tracker(model19, detector=FakeDetector())
    for t in ("x", float("inf"), 10 ** 400, float("nan")):
        with pytest.raises(m.InputError, match="t must be a finite number"):
            tracker.update(moving_face(0, 0), t=t)


# --- musica-ref track ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_faces_frames(tmp_path_factory):
    """Frames of the shipped two-face drawing (which dlib's detector finds), moving 3 px a frame."""
    folder = tmp_path_factory.mktemp("frames")
    img = np.asarray(Image.open(ROOT / "examples" / "two-faces.png").convert("RGB"))
    for k in range(4):
        Image.fromarray(np.roll(img, 3 * k, axis=1)).save(folder / f"f{k:03d}.png")
    return folder


def test_cli_track_on_a_folder_of_frames(two_faces_frames, tmp_path, capsys):
    pytest.importorskip("dlib", reason='detection needs the detect extra: pip install ".[detect]"')
    out, overlay = tmp_path / "t.jsonl", tmp_path / "overlay"
    assert cli.main(["track", str(two_faces_frames), "--model", "musica19", "--out", str(out),
                     "--overlay", str(overlay), "--detect-every", "2"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame"] for r in recs] == [0, 1, 2, 3] and recs[1]["time"] == pytest.approx(1 / 30, abs=1e-6)
    assert all(sorted(f["track"] for f in r["faces"]) == [0, 1] for r in recs)
    assert sorted(p.name for p in overlay.iterdir()) == [f"frame_{k:06d}.png" for k in range(4)]
    assert "4 frames, 8 tracked faces, 2 tracks" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["nowhere"], "does not exist"), (["FRAMES", "--fps", "0"], "--fps"), (["FRAMES", "--max-frames", "0"], "--max-frames"),
    (["FRAMES", "--out", "FRAMES/f000.png"], "refusing to overwrite"), (["EMPTY"], "holds no frames"),
    (["FRAMES", "--overlay", "FRAMES"], "is the input"),
])
def test_cli_track_errors_are_one_line(two_faces_frames, tmp_path, capsys, args, words):
    (tmp_path / "empty").mkdir()
    args = [a.replace("FRAMES", str(two_faces_frames)).replace("EMPTY", str(tmp_path / "empty")) for a in args]
    before = {p.name: p.read_bytes() for p in two_faces_frames.iterdir()}
    assert cli.main(["track", *args, "--model", "musica19"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("musica-ref: error:") and words in err[0], err
    assert {p.name: p.read_bytes() for p in two_faces_frames.iterdir()} == before      # no frame touched


def test_a_video_file_without_pyav_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\x00" * 100)
    monkeypatch.setitem(sys.modules, "av", None)                    # as if PyAV were not installed
    assert cli.main(["track", str(video), "--model", "musica19"]) == 2
    err = capsys.readouterr().err
    assert "musica-ref[video]" in err and "folder of frames" in err


def test_cli_track_on_a_video_file(two_faces_frames, tmp_path, capsys):
    av = pytest.importorskip("av", reason='video files need the video extra: pip install ".[video]"')
    pytest.importorskip("dlib", reason='detection needs the detect extra: pip install ".[detect]"')
    video = tmp_path / "v.mp4"
    frames = sorted(two_faces_frames.iterdir())
    with av.open(str(video), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        first = np.asarray(Image.open(frames[0]))
        s.width, s.height, s.pix_fmt = first.shape[1], first.shape[0], "yuv420p"
        for p in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(np.asarray(Image.open(p).convert("RGB")), format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    assert cli.main(["track", str(video), "--model", "musica19"]) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["frame"] for r in recs] == [0, 1, 2, 3] and recs[1]["time"] == pytest.approx(0.04)
    assert all(len(r["faces"]) == 2 for r in recs)
