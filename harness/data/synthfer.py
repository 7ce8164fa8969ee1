"""SynthFER: the procedurally generated facial-expression dataset embedded in FERBench.

Why it exists: a study (and every test) must run on a fresh laptop with no download, no
licence click-through and no GPU. SynthFER draws grayscale cartoon faces with numpy, in
seconds, shaped like FER2013 (48x48 uint8, the same 7 classes in the same proportions, label
noise, identities, action units), so the whole pipeline - splits, training, metrics, reports -
is exercised end to end. It is *not* a substitute for real data: numbers measured on it say
that the harness works, never which backbone is better on real faces.

How a sample is made: each identity draws its face geometry once; each image draws a class,
class-conditional facial-action intensities (FACS-like prototypes with deliberate overlap for
fear/surprise, sad/neutral, angry/disgust), pose, lighting, blur, noise and occasional
occlusion; faces are rendered as soft signed-distance shapes on a coordinate grid, batched.
"""

from __future__ import annotations

import numpy as np

from ferbench.harness.data.dataset import ACTION_UNITS, FER2013_CLASSES, FerDataset

FER2013_COUNTS: tuple[int, ...] = (4953, 547, 5121, 8989, 6077, 4002, 6198)
_CHUNK_PIXELS = 256 * 48 * 48  # pixels rendered per batch (bounds memory); a function of image_size only
# Internal actions beyond ACTION_UNITS: lid raiser, lip-corner depressor, lip tightener,
# upper-lip raiser, lip stretcher. Columns of _PROTOTYPES = ACTION_UNITS + _EXTRA_ACTIONS.
_EXTRA_ACTIONS: tuple[str, ...] = ("AU5", "AU15", "AU23", "AU10", "AU20")
_ACTIONS = ACTION_UNITS + _EXTRA_ACTIONS
_PROTOTYPE_BY_CLASS: dict[str, tuple[float, ...]] = {
    #          AU1  AU2  AU4  AU6  AU9  AU12 AU25 AU26 AU5  AU15 AU23 AU10 AU20
    "angry":    (.05, .05, .90, .10, .45, .00, .20, .05, .30, .10, .70, .35, .00),
    "disgust":  (.05, .00, .70, .35, .85, .05, .35, .05, .05, .30, .40, .75, .10),
    "fear":     (.80, .65, .60, .00, .05, .00, .75, .40, .75, .15, .00, .10, .60),
    "happy":    (.05, .05, .00, .80, .05, .95, .55, .15, .00, .00, .00, .10, .05),
    "sad":      (.70, .10, .50, .05, .05, .00, .05, .00, .00, .75, .15, .00, .00),
    "surprise": (.85, .85, .00, .00, .00, .05, .80, .75, .80, .00, .00, .00, .10),
    "neutral":  (.05, .05, .05, .05, .05, .05, .05, .05, .05, .05, .05, .05, .05),
}
_PROTOTYPES = np.array([_PROTOTYPE_BY_CLASS[c] for c in FER2013_CLASSES], dtype=np.float32)
# Range of the overall expression intensity per class (weak sad faces look neutral).
_INTENSITY_BY_CLASS = {"sad": (0.3, 0.95), "neutral": (0.0, 1.0)}
_INTENSITY = np.array([_INTENSITY_BY_CLASS.get(c, (0.3, 1.0)) for c in FER2013_CLASSES], dtype=np.float32)
_ACTION_SD = 0.1  # per-action jitter around the scaled prototype
_AU_THRESHOLD = 0.5


def class_counts(num_images: int, reference: tuple[int, ...] = FER2013_COUNTS) -> np.ndarray:
    """Largest-remainder allocation of ``num_images`` to classes in ``reference`` proportions.

    Every class keeps at least one image (matters only for tiny ``num_images``).
    """
    ref = np.asarray(reference, dtype=np.float64)
    quota = num_images * ref / ref.sum()
    counts = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[: num_images - counts.sum()]] += 1
    while (counts == 0).any():
        counts[np.argmax(counts)] -= 1
        counts[np.argmin(counts)] += 1
    return counts


def _validate(num_images: int, image_size: int, seed: int, label_noise: float, num_identities: int | None,
              occlusion_rate: float) -> None:
    problems = []
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        problems.append(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(num_images, (int, np.integer)) or num_images < len(FER2013_CLASSES):
        problems.append(f"num_images must be an integer >= {len(FER2013_CLASSES)}, got {num_images!r}")
    if not isinstance(image_size, (int, np.integer)) or not 16 <= image_size <= 256:
        problems.append(f"image_size must be an integer in 16..256, got {image_size!r}")
    if not 0.0 <= label_noise < 1.0:
        problems.append(f"label_noise must be in [0, 1), got {label_noise!r}")
    if not 0.0 <= occlusion_rate <= 1.0:
        problems.append(f"occlusion_rate must be in [0, 1], got {occlusion_rate!r}")
    if num_identities is not None and (not isinstance(num_identities, (int, np.integer))
                                       or not 1 <= num_identities <= max(num_images, 1)):
        problems.append(f"num_identities must be an integer in 1..num_images, got {num_identities!r}")
    if problems:
        raise ValueError("generate_synthfer: " + "; ".join(problems))


def _identities(rng: np.random.Generator, k: int) -> dict[str, np.ndarray]:
    """Face geometry, drawn once per identity (face units: the image spans [-1, 1])."""
    u = lambda lo, hi: rng.uniform(lo, hi, k).astype(np.float32)  # noqa: E731
    hair = u(0.05, 0.45)
    return dict(face_w=u(0.56, 0.68), face_h=u(0.76, 0.88), eye_x=u(0.22, 0.29), eye_y=u(-0.16, -0.08),
                eye_w=u(0.1, 0.13), eye_h=u(0.04, 0.055), brow_gap=u(0.1, 0.14), brow_t=u(0.03, 0.06),
                brow_arch=u(0.0, 0.04), nose_len=u(0.2, 0.28), mouth_w=u(0.2, 0.26), mouth_gap=u(0.16, 0.22),
                lip_t=u(0.03, 0.05), skin=u(0.45, 0.8), hair=hair, brow_tone=np.minimum(hair + 0.1, u(0.2, 0.4)),
                hair_vol=u(-0.02, 0.14), hairline=u(-0.82, -0.52))


def _nuisance(rng: np.random.Generator, n: int, occlusion_rate: float) -> dict[str, np.ndarray]:
    """Per-image pose, framing, lighting, background, blur, noise and occluder."""
    u = lambda lo, hi: rng.uniform(lo, hi, n).astype(np.float32)  # noqa: E731
    angle = np.clip(rng.normal(0.0, 0.1, n), -0.3, 0.3).astype(np.float32)
    ang_l, ang_b = u(0, 2 * np.pi), u(0, 2 * np.pi)
    return dict(cos=np.cos(angle), sin=np.sin(angle), yaw=u(-0.06, 0.06), zoom=u(1.22, 1.38),
                tx=u(-0.08, 0.08), ty=u(-0.1, 0.04), bg=u(0.05, 0.95), bg_grad=u(-0.2, 0.2),
                gain=u(0.8, 1.2), light=u(0.0, 0.25), lx=np.cos(ang_l), ly=np.sin(ang_l),
                bgx=np.cos(ang_b), bgy=np.sin(ang_b), blur=u(0.2, 0.7), noise=u(0.005, 0.025),
                occ=(rng.random(n) < occlusion_rate).astype(np.float32), occ_hand=(rng.random(n) < 0.5).astype(np.float32),
                occ_x=u(-0.4, 0.4), occ_y=u(-0.3, 0.55), occ_w=u(0.15, 0.35), occ_h=u(0.06, 0.16),
                occ_tilt=u(-0.3, 0.3), occ_val=u(0.0, 1.0))


def _actions(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Class-conditional action intensities in [0, 1], shape (N, len(_ACTIONS))."""
    lo, hi = _INTENSITY[labels, 0], _INTENSITY[labels, 1]
    strength = lo + (hi - lo) * rng.random(len(labels), dtype=np.float32)
    jitter = rng.normal(0.0, _ACTION_SD, (len(labels), len(_ACTIONS))).astype(np.float32)
    return np.clip(strength[:, None] * _PROTOTYPES[labels] + jitter, 0.0, 1.0)


def _ellipse(x: np.ndarray, y: np.ndarray, a, b) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (negative inside)."""
    return (np.sqrt((x / a) ** 2 + (y / b) ** 2) - 1.0) * np.minimum(a, b)


def _segment(x: np.ndarray, y: np.ndarray, ax, ay, bx, by) -> np.ndarray:
    """Distance to the segment (ax, ay)-(bx, by)."""
    dx, dy = bx - ax, by - ay
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(x - ax - t * dx, y - ay - t * dy)


def _paint(img: np.ndarray, dist: np.ndarray, aa, value, alpha=1.0) -> None:
    """Composite ``value`` where ``dist`` < 0, anti-aliased over one pixel, in place."""
    img += np.clip(0.5 - dist / aa, 0.0, 1.0) * alpha * (value - img)


def _draw_face(img: np.ndarray, u: np.ndarray, v: np.ndarray, aa, p: dict) -> None:
    """Hair, face oval, brows, eyes, cheeks, nose and mouth, driven by the action intensities."""
    au = p  # action intensities live in p under their AU names
    fw, fh, skin = p["face_w"], p["face_h"], p["skin"]
    _paint(img, _ellipse(u, v + 0.1, fw + p["hair_vol"], fh + p["hair_vol"]), aa, p["hair"])
    face = _ellipse(u, v - 0.05, fw, np.where(v > 0.05, fh + 0.08 * au["AU26"], fh))
    _paint(img, face, aa, skin)
    _paint(img, np.maximum(face, v - p["hairline"]), aa, p["hair"], alpha=(p["hair_vol"] > 0))
    uf = np.abs(u - p["yaw"])  # features are mirror-symmetric around the (yawed) midline
    ex, ey, ew = p["eye_x"], p["eye_y"], p["eye_w"]
    # brows: AU1 lifts the inner end, AU2 the outer end, AU4 lowers and slants them inward
    bw = ew * 1.3
    t = (uf - (ex - bw) + 0.04 * au["AU4"]) / (2 * bw)  # AU4 also knits the brows together
    brow_y = (ey - p["brow_gap"] + 0.05 * au["AU4"] - 0.13 * au["AU1"] * (1 - t) - 0.12 * au["AU2"] * t
              + 0.12 * au["AU4"] * (1 - t) - p["brow_arch"] * 4 * t * (1 - t))
    thick = 0.5 * p["brow_t"] * (1.2 - 0.5 * t) * (1 + 0.6 * au["AU4"] + 0.3 * au["AU9"])
    brow = np.maximum(np.abs(v - brow_y) - thick, np.maximum(-t, t - 1) * 2 * bw)
    _paint(img, brow, aa, p["brow_tone"])
    frown = np.maximum(np.abs(uf - 0.04) - 0.01, np.abs(v - (ey - 0.06)) - 0.05)
    _paint(img, frown, aa, skin * 0.55, alpha=au["AU4"] * 0.9)
    # eyes: AU5 widens, AU6/AU4/AU9 narrow
    opening = np.clip(1 + 1.2 * au["AU5"] + 0.2 * au["AU1"] - 0.6 * au["AU6"] - 0.5 * au["AU4"] - 0.3 * au["AU9"], 0.2, 2.6)
    eye = _ellipse(uf - ex, v - ey, ew, p["eye_h"] * opening)
    _paint(img, eye, aa, 0.25 + 0.7 * skin)
    _paint(img, np.maximum(eye, np.hypot(uf - ex, v - ey) - 0.45 * ew), aa, 0.1)
    _paint(img, np.abs(eye) - 0.006, aa, skin * 0.35)
    # cheek raiser: a lifted, lit cheek and a crease under the eye
    _paint(img, _ellipse(uf - ex, v - ey - 0.15, 0.11, 0.05), 2 * aa, skin * 1.2 + 0.05, alpha=au["AU6"])
    _paint(img, np.maximum(np.abs(v - ey - p["eye_h"] * opening - 0.03) - 0.006, np.abs(uf - ex) - ew),
           aa, skin * 0.6, alpha=au["AU6"])
    # nose, with AU9 wrinkles on the bridge and raised, flared nostrils
    ny = ey + p["nose_len"] - 0.03 * au["AU9"]
    _paint(img, _segment(uf, v, 0.05, ey + 0.05, 0.065, ny) - 0.006, aa, skin * 0.8)
    _paint(img, _ellipse(uf - 0.045 - 0.015 * au["AU9"], v - ny, 0.028 + 0.015 * au["AU9"], 0.016), aa, skin * 0.35)
    for k in range(3):
        wrinkle = np.maximum(np.abs(v - ey + 0.01 - 0.04 * k) - 0.01, uf - 0.08)
        _paint(img, wrinkle, aa, skin * 0.45, alpha=au["AU9"])
    # mouth: AU12/AU15 curve the corners, AU25/AU26/AU10 open it, AU23 thins it, AU20 stretches it
    my = ny + p["mouth_gap"] + 0.04 * au["AU26"]
    mw = p["mouth_w"] * (1 + 0.3 * au["AU12"] + 0.45 * au["AU20"] - 0.3 * au["AU23"] - 0.3 * au["AU26"])
    x2 = (uf / mw) ** 2
    shape = np.sqrt(np.clip(1 - x2, 0, 1))
    yc = my - (0.15 * au["AU12"] - 0.16 * au["AU15"]) * x2
    y_up = yc - (0.05 * au["AU25"] + 0.08 * au["AU10"] + 0.02 * au["AU26"]) * shape
    y_lo = yc + (0.05 * au["AU25"] + 0.16 * au["AU26"]) * shape
    side = (np.sqrt(x2) - 1) * mw
    fold = _segment(uf, v, 0.09, ny + 0.01, mw + 0.03, my - 0.15 * au["AU12"] + 0.1 * au["AU15"])
    _paint(img, fold - 0.006, aa, skin * 0.55, alpha=np.clip(0.8 * au["AU12"] + 0.7 * au["AU9"] + 0.4 * au["AU10"], 0, 1))
    lip = p["lip_t"] * (1 - 0.75 * au["AU23"]) * shape
    _paint(img, np.maximum(np.maximum(y_up - lip - v, v - y_lo - 1.3 * lip), side), aa, skin * 0.65)
    _paint(img, np.maximum(np.maximum(y_up - v, v - y_lo), side), aa, 0.08)
    teeth = np.maximum(np.maximum(y_up - v, v - np.minimum(y_lo, y_up + 0.035)), side)
    _paint(img, teeth, aa, 0.85, alpha=np.clip(1.5 * au["AU12"] - 0.3, 0, 1))
    _paint(img, np.maximum(np.abs(v - yc) - 0.008, side), aa, skin * 0.3)
    chin = np.maximum(np.abs(v - y_lo - 0.07) - 0.012, uf - 0.6 * mw)  # pressed lips bunch the chin
    _paint(img, chin, aa, skin * 0.55, alpha=au["AU23"])


def _blur(img: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Per-image separable Gaussian blur (sigma in pixels, shape (B,)), edge padding."""
    r = int(np.ceil(3 * sigma.max()))
    taps = np.arange(-r, r + 1, dtype=np.float32)
    w = np.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    w /= w.sum(1, keepdims=True)
    h = img.shape[1]
    pad = np.pad(img, ((0, 0), (r, r), (0, 0)), mode="edge")
    img = sum(w[:, k, None, None] * pad[:, k:k + h] for k in range(2 * r + 1))
    pad = np.pad(img, ((0, 0), (0, 0), (r, r)), mode="edge")
    return sum(w[:, k, None, None] * pad[:, :, k:k + h] for k in range(2 * r + 1))


def _render(p: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """Render one chunk; every entry of ``p`` has shape (B,). Returns uint8 (B, size, size)."""
    b = len(p["zoom"])
    p = {k: val.reshape(b, 1, 1) for k, val in p.items()}
    grid = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    gx, gy = grid[None, None, :], grid[None, :, None]
    x, y = gx - p["tx"], gy - p["ty"]
    u = (p["cos"] * x + p["sin"] * y) / p["zoom"]
    v = (p["cos"] * y - p["sin"] * x) / p["zoom"]
    aa = 2.0 / size / p["zoom"]
    img = np.clip(p["bg"] + p["bg_grad"] * (gx * p["bgx"] + gy * p["bgy"]), 0, 1) + np.zeros_like(u)
    _draw_face(img, u, v, aa, p)
    occ_v = v - p["occ_y"] + p["occ_tilt"] * (u - p["occ_x"])
    bar = np.maximum(np.abs(occ_v) - p["occ_h"], np.abs(u - p["occ_x"]) - 2.5 * p["occ_w"])
    occluder = np.where(p["occ_hand"] > 0, _ellipse(u - p["occ_x"], occ_v, p["occ_w"], 1.6 * p["occ_h"] + 0.1), bar)
    _paint(img, occluder, aa, np.where(p["occ_hand"] > 0, p["skin"] * 1.05, p["occ_val"]), alpha=p["occ"])
    img *= p["gain"] * (1 + p["light"] * (gx * p["lx"] + gy * p["ly"]))
    img = _blur(img, p["blur"][:, 0, 0] * (size / 48.0))
    img += rng.normal(0.0, 1.0, img.shape).astype(np.float32) * p["noise"]
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def generate_synthfer(num_images: int = 5000, image_size: int = 48, seed: int = 0,
                      label_noise: float = 0.05, num_identities: int | None = None,
                      occlusion_rate: float = 0.1) -> FerDataset:
    """Generate SynthFER: ``num_images`` grayscale faces, FER2013 classes and proportions.

    Deterministic in its arguments. ``label_noise`` of the labels (rounded to whole images) are
    replaced by a different class; the faces are drawn from the clean class, kept in
    ``meta["clean_labels"]`` with the flipped ones marked in ``meta["noisy_label_mask"]``.
    ``meta["action_intensities"]`` holds the continuous AU intensities behind ``action_units``.
    """
    _validate(num_images, image_size, seed, label_noise, num_identities, occlusion_rate)
    num_identities = max(1, num_images // 25) if num_identities is None else int(num_identities)
    rng_order, rng_id, rng_act, rng_nuis, rng_noise, rng_pix = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6))
    counts = class_counts(num_images)
    clean = rng_order.permutation(np.repeat(np.arange(len(counts), dtype=np.int64), counts))
    subjects = rng_order.permutation(np.arange(num_images, dtype=np.int64) % num_identities)
    ident = _identities(rng_id, num_identities)
    actions = _actions(rng_act, clean)
    params = {k: val[subjects] for k, val in ident.items()}
    params.update(_nuisance(rng_nuis, num_images, occlusion_rate))
    params.update({name: actions[:, i] for i, name in enumerate(_ACTIONS)})
    chunk = max(8, _CHUNK_PIXELS // image_size**2)
    chunk_rngs = [np.random.default_rng(s) for s in
                  np.random.SeedSequence(rng_pix.integers(2**63)).spawn(-(-num_images // chunk))]
    images = np.empty((num_images, image_size, image_size), dtype=np.uint8)
    for i, chunk_rng in enumerate(chunk_rngs):
        sl = slice(i * chunk, (i + 1) * chunk)
        images[sl] = _render({k: val[sl] for k, val in params.items()}, image_size, chunk_rng)
    labels, noisy = clean.copy(), np.zeros(num_images, dtype=bool)
    flipped = rng_noise.choice(num_images, size=int(round(label_noise * num_images)), replace=False)
    labels[flipped] = (clean[flipped] + rng_noise.integers(1, len(counts), len(flipped))) % len(counts)
    noisy[flipped] = True
    au = actions[:, : len(ACTION_UNITS)]
    meta = dict(params=dict(num_images=int(num_images), image_size=int(image_size), seed=int(seed),
                            label_noise=float(label_noise), num_identities=num_identities,
                            occlusion_rate=float(occlusion_rate)),
                clean_labels=clean, noisy_label_mask=noisy, action_intensities=au.copy(),
                occluded=params["occ"] > 0, source="synthetic (ferbench.harness.data.synthfer); not real faces")
    return FerDataset(name="synthfer", images=images, labels=labels, class_names=FER2013_CLASSES,
                      subjects=subjects, action_units=(au > _AU_THRESHOLD).astype(np.uint8),
                      au_names=ACTION_UNITS, meta=meta)
