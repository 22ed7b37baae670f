"""``cctr suggest``: the components of a scan (students' disagreement, the warped atlas's misfit,
the distance under registration), the score as a weighted mean of ranks, the greedy choice
without near-copies, the farthest-first and random rules, and the command end to end on a tiny
phantom: the ranked CSV with every component, the montage, the line naming what to label next,
and a choice that never reads the pool's labels."""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cctr.joint.app.cli import main
from cctr.joint.scan_evidence import PairDistance, ScanEvidence, deformation_mm, dissimilarity
from cctr.joint.suggest import (FARTHEST, Candidate, DistanceScale, SuggestConfig, candidates, choose, random_choice,
                                ranks01, scores)
from cctr.reg.field import CanonicalField
from cctr.seg.data.phantom import PhantomConfig, write_phantom
from cctr.seg.data.readers import open_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--set", "iterations=2", "--set", "val_every=2", "--set", "image_size=[32,32]", "--set", "labeled_batch=2",
        "--set", "unlabeled_batch=2", "--set", "student_a={kind: unet, widths: [4, 8]}",
        "--set", "student_b={kind: unet, widths: [4, 8]}", "--set", "embedding_dim=8"]


def evidence(case: str, agree: float, fit: float, dis: float, deform: float = 0.0) -> ScanEvidence:
    return ScanEvidence(case, case.split("_")[0], agree, fit, fit, {"L_ED": PairDistance(deform, dis)})


def test_ranks_are_scaled_to_0_1_and_ties_share_their_rank():
    np.testing.assert_allclose(ranks01([3.0, 1.0, 2.0]), [1.0, 0.0, 0.5])
    np.testing.assert_allclose(ranks01([1.0, 1.0, 2.0]), [0.25, 0.25, 1.0])
    np.testing.assert_allclose(ranks01([5.0, 5.0]), [0.5, 0.5])


def test_the_score_is_the_weighted_mean_of_ranks_of_the_components_there_are():
    rows = [{"disagreement": 0.1, "atlas_misfit": 0.9, "distance": None},
            {"disagreement": 0.3, "atlas_misfit": 0.2, "distance": None}]
    score, ranks = scores(rows, SuggestConfig(disagreement=3.0, atlas_misfit=1.0, distance=1.0))
    assert set(ranks) == {"disagreement", "atlas_misfit"}   # nobody has a distance: it drops out
    np.testing.assert_allclose(score, [(3 * 0 + 1 * 1) / 4, (3 * 1 + 1 * 0) / 4])
    with pytest.raises(ValueError, match="no weighted component"):
        scores(rows, FARTHEST)
    with pytest.raises(ValueError, match="weights must be"):
        SuggestConfig(disagreement=0, atlas_misfit=0, distance=0)


def test_the_distance_scale_makes_units_comparable_and_drops_a_term_nobody_has():
    scale = DistanceScale.of([PairDistance(2.0, 0.1), PairDistance(4.0, 0.3)])
    assert (scale.deformation_mm, scale.dissimilarity) == (3.0, 0.2)
    assert scale(PairDistance(3.0, 0.4)) == pytest.approx(1.0 + 2.0)
    identity = DistanceScale.of([PairDistance(0.0, 0.2), PairDistance(0.0, 0.4)])
    assert identity(PairDistance(0.0, 0.6)) == pytest.approx(2.0)


def test_a_patient_is_the_mean_of_its_scans():
    ev = {"p1_ED": evidence("p1_ED", 0.8, 0.6, 0.2, 1.0), "p1_ES": evidence("p1_ES", 0.6, 0.4, 0.4, 3.0)}
    [c] = candidates(ev, DistanceScale(2.0, 0.3))
    assert c.patient_id == "p1" and c.cases == ("p1_ED", "p1_ES")
    assert c.disagreement == pytest.approx(0.3) and c.atlas_misfit == pytest.approx(0.5)
    assert (c.deformation_mm, c.dissimilarity) == pytest.approx((2.0, 0.3))
    assert c.distance == pytest.approx(np.mean([1 / 2 + 0.2 / 0.3, 3 / 2 + 0.4 / 0.3]))


# four one-scan patients: p2 is nearly a copy of p1 (the best), p3 is next, p4 the least interesting
POOL = {"p1_ED": evidence("p1_ED", 0.2, 0.2, 0.9), "p2_ED": evidence("p2_ED", 0.25, 0.25, 0.85),
        "p3_ED": evidence("p3_ED", 0.5, 0.5, 0.5), "p4_ED": evidence("p4_ED", 0.9, 0.9, 0.1)}


def onto_pick(near: dict[tuple[str, str], float]):
    """A registration onto the pick: the given dissimilarity for named pairs, 1 otherwise."""
    calls = []

    def register(cases, picked):
        calls.append((tuple(cases), tuple(picked)))
        return {(c, p): PairDistance(0.0, near.get((c, p), 1.0)) for c in cases for p in picked}
    register.calls = calls   # type: ignore[attr-defined]
    return register


def test_the_choice_takes_the_best_then_skips_a_near_copy_of_it():
    scale = DistanceScale.of([d for e in POOL.values() for d in e.distances.values()])
    pool = candidates(POOL, scale)
    ranked = choose(pool, POOL, scale, SuggestConfig(k=2), onto_pick({("p2_ED", "p1_ED"): 0.01}))
    assert [(r.candidate.patient_id, r.pick) for r in ranked] == [("p1", 1), ("p3", 2), ("p2", 0), ("p4", 0)]
    assert ranked[0].score == 1.0 and ranked[-1].score == 0.0   # p1 tops every component, p4 none
    # without the diversity rule and with no registration to update distances, the near-copy comes second
    plain = choose(pool, POOL, scale, SuggestConfig(k=2, near_copy=0.0))
    assert [r.candidate.patient_id for r in plain if r.pick] == ["p1", "p2"]


def test_farthest_first_updates_the_distance_with_each_pick():
    scale = DistanceScale(0.0, 1.0)
    pool = candidates(POOL, scale)
    register = onto_pick({("p2_ED", "p1_ED"): 0.01, ("p3_ED", "p1_ED"): 0.4, ("p4_ED", "p1_ED"): 0.05})
    ranked = choose(pool, POOL, scale, replace(FARTHEST, k=3), register)
    # p1 is farthest from the labeled scan; then p3 (0.5 from the labeled scan, 0.4 from p1) beats p2 (a copy of
    # p1); last, only near-copies are left (p2 0.01 from p1, p4 0.05), and the farther of them is taken
    assert [r.candidate.patient_id for r in ranked if r.pick] == ["p1", "p3", "p4"]
    # every remaining scan was registered onto each pick but the last
    assert register.calls == [(("p2_ED", "p3_ED", "p4_ED"), ("p1_ED",)), (("p2_ED", "p4_ED"), ("p3_ED",))]
    with pytest.raises(ValueError, match="pool holds 4"):
        choose(pool, POOL, scale, SuggestConfig(k=5))


def test_random_choices_nest_and_repeat_with_the_seed():
    pool = [Candidate(f"p{i}", (f"p{i}_ED",), None, None, None, None, None) for i in range(6)]
    two = random_choice(pool, 2, (1, 2))
    assert random_choice(pool, 1, (1, 2)) == two[:1] and random_choice(pool, 2, (1, 2)) == two
    assert len(set(two)) == 2
    assert {tuple(random_choice(pool, 2, (s, 0))) for s in range(5)} != {tuple(two)}


def test_deformation_counts_the_canonical_displacement_in_mm_and_dissimilarity_is_one_minus_ncc():
    disp = np.zeros((3, 2, 4, 4), np.float32)
    disp[2] = 1.0                                   # one canonical voxel along x everywhere
    to_native = np.diag([1.0, 2.0, 2.0, 1.0])       # a canonical voxel is two native voxels in-plane
    fld = CanonicalField(disp, to_native, (2, 8, 8), np.eye(4), (2, 8, 8))
    assert deformation_mm(fld, (5.0, 1.5, 1.5)) == pytest.approx(3.0)
    image = np.random.default_rng(0).normal(size=(3, 6, 7)).astype(np.float32)
    same = CanonicalField.from_affine(np.eye(4), image.shape, image.shape)
    assert dissimilarity(same, image, image) == pytest.approx(0.0, abs=1e-6)
    assert dissimilarity(same, image, -2 * image + 1) == pytest.approx(2.0, abs=1e-6)
    assert dissimilarity(same, image, np.zeros_like(image)) == 1.0   # a flat image explains nothing


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A 7-patient phantom (4 training patients, set '1' labels one) and a tiny cctr run on it."""
    root = tmp_path_factory.mktemp("suggest")
    data = write_phantom(root / "data", 7, seed=0, cfg=PhantomConfig(matrix=(40, 48), slices=(4, 6)), workers=1)
    run = root / "run"
    assert main(["train", "--data", str(data), "--method", "cctr", "--reg-backend", "identity", "--out", str(run),
                 "--no-progress", *TINY]) == 0
    return data, run


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_suggest_ranks_every_unlabeled_patient_and_names_the_next_ones(trained, tmp_path, capsys):
    data, run = trained
    split = open_dataset(data).default_split
    out = tmp_path / "s"
    assert main(["suggest", "--run", str(run), "--data", str(data), "--k", "2", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    rows = rows_of(out / "suggest.csv")
    assert sorted(r["patient"] for r in rows) == sorted(split.unlabeled("1"))
    assert [r["pick"] for r in rows] == ["1", "2"] + [""] * (len(rows) - 2)
    assert printed[-1] == f"label next: {rows[0]['patient']}, {rows[1]['patient']}"
    for r in rows:
        assert all(0.0 <= float(r[f"rank_{n}"]) <= 1.0 for n in ("disagreement", "atlas_misfit", "distance"))
        assert float(r["deformation_mm"]) == 0.0       # identity deforms nothing
        assert 0.0 <= float(r["disagreement"]) <= 1.0 and float(r["dissimilarity"]) >= 0.0
        # the score is the mean of the ranks of disagreement and misfit (default weights 1, 1, 0)
        ranks = [float(r[f"rank_{n}"]) for n in ("disagreement", "atlas_misfit")]
        assert float(r["score"]) == pytest.approx(np.mean(ranks), abs=1e-6)
        assert r["cases"] == f"{r['patient']}_ED {r['patient']}_ES"
        assert r["diagnostic_true_dice"] != ""        # the phantom keeps labels: shown, never used
    val = rows_of(out / "validation.csv")
    assert sorted(v["case"] for v in val) == sorted(f"{p}_{f}" for p in split.val for f in ("ED", "ES"))
    assert "**label next:" in (out / "suggest.md").read_text()
    assert (out / "suggest.png").read_bytes().startswith(PNG_MAGIC)


def test_the_choice_never_reads_the_labels_of_the_pool(trained, tmp_path):
    data, run = trained
    blind = tmp_path / "data"
    shutil.copytree(data, blind)
    split = open_dataset(data).default_split
    (blind / "imagesUnlabeled").mkdir()
    for patient in split.unlabeled("1"):   # the pool's scans as scans without a label map (docs/DATASETS.md)
        for frame in ("ED", "ES"):
            (blind / "labelsTr" / f"{patient}_{frame}.nii.gz").unlink()
            (blind / "imagesTr" / f"{patient}_{frame}_0000.nii.gz").rename(
                blind / "imagesUnlabeled" / f"{patient}_{frame}_0000.nii.gz")
    meta = json.loads((blind / "dataset.json").read_text())
    meta["numTraining"] = len(list((blind / "imagesTr").iterdir()))
    (blind / "dataset.json").write_text(json.dumps(meta))
    for folder, source in (("a", data), ("b", blind)):
        assert main(["suggest", "--run", str(run), "--data", str(source), "--k", "2", "--out", str(tmp_path / folder),
                     "--no-progress"]) == 0
    seen, blinded = rows_of(tmp_path / "a" / "suggest.csv"), rows_of(tmp_path / "b" / "suggest.csv")
    drop = ("diagnostic_true_dice",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in seen] == \
           [{k: v for k, v in r.items() if k not in drop} for r in blinded]
    assert all(r["diagnostic_true_dice"] == "" for r in blinded)


def test_suggest_refuses_what_it_cannot_do_in_one_line(trained, tmp_path, capsys):
    data, run = trained
    out = tmp_path / "s"
    out.mkdir()
    (out / "suggest.csv").write_text("mine")
    assert main(["suggest", "--run", str(run), "--data", str(data), "--out", str(out), "--no-progress"]) == 2
    assert "cctr did not write there (suggest.csv)" in capsys.readouterr().err
    assert (out / "suggest.csv").read_text() == "mine"
    assert main(["suggest", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "k"), "--k", "9"]) == 2
    assert "the pool holds 4" in capsys.readouterr().err
    assert main(["suggest", "--run", str(tmp_path), "--data", str(data)]) == 2
    assert "config.yaml: not found" in capsys.readouterr().err
    assert main(["suggest", "--run", str(run), "--data", str(data), "--backend", "elastix",
                 "--out", str(tmp_path / "e")]) == 2
    assert "unknown registration backend 'elastix'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["suggest", "--run", str(run), "--data", str(data), "--weights", "1,2"])


def test_the_form_is_chosen_from_the_validation_files_alone(tmp_path):
    from scripts_module import load_script

    choose_form = load_script("choose_score_form")
    header = "case,disagreement,atlas_misfit,distance,score,students_dice,atlas_fit,estimated_dice,true_dice\n"
    for run in ("r1", "r2"):
        # disagreement ranks the error exactly, distance backwards; the students' Dice ranks the Dice exactly
        lines = [f"s{i},{i / 10},{0.5},{1 - i / 10},0,{1 - i / 10},{0.3 + (i % 2) / 10},0,{1 - i / 10 - 0.05}"
                 for i in range(5)]
        (tmp_path / run).mkdir()
        (tmp_path / run / "validation.csv").write_text(header + "\n".join(lines) + "\n")
    found = choose_form.per_run(sorted(tmp_path.rglob("validation.csv")))
    assert found["suggest (1, 0, 0)"] == pytest.approx([1.0, 1.0])
    assert found["suggest (0, 0, 1)"] == pytest.approx([-1.0, -1.0])
    assert np.isnan(found["suggest (0, 1, 0)"][0])                  # a constant component ranks nothing
    assert found["qc students_dice"] == pytest.approx([1.0, 1.0])
    assert set(found) >= {"qc mean", "qc min", "qc atlas_fit"}
    assert choose_form.main([str(tmp_path)]) == 0 and choose_form.main([str(tmp_path / "none")]) == 2


def test_a_component_of_weight_zero_is_ranked_but_does_not_score():
    rows = [{"disagreement": 0.1, "atlas_misfit": 0.2, "distance": 9.0},
            {"disagreement": 0.3, "atlas_misfit": 0.4, "distance": 1.0}]
    score, ranks = scores(rows, SuggestConfig())   # the default: distance weighs 0
    np.testing.assert_allclose(ranks["distance"], [1.0, 0.0])
    np.testing.assert_allclose(score, [0.0, 1.0])
    assert SuggestConfig().weights == (1.0, 1.0, 0.0)
