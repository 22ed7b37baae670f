"""``cctr suggest``: which unlabeled training patients to label next, from a trained run.

    cctr suggest --run RUN --data DIR [--split FILE] [--k N] [--backend SPEC] [--out DIR]
                 [--weights D,A,R] [--overwrite] [--no-progress]

The run's students predict every unlabeled training scan of its labeled set (and the
validation scans); the registration (``--backend``, else the run's own, else ``identity``)
warps each labeled scan onto them. Each patient gets three components (the students'
disagreement, the warped atlas label's misfit with the students, the distance to the labeled
scans under registration) and a score, the weighted mean of their ranks (``--weights``, in that
order); ``--k`` patients are chosen greedily, none a near-copy of another
(:mod:`joint.suggest`). Writes ``suggest.csv``, ``validation.csv``, ``suggest.md``,
``suggest.png`` and ``suggestion.json`` into ``--out`` (default ``RUN/suggest``) and prints the
line naming the patients to label next. On validation scans, where labels may be read, it
reports how well each component and the score rank student A's true error.

``--backend learned:CKPT?refine=0`` is the fast choice on a CPU; the pairs the run's training
already registered come from its Field cache.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cctr.joint.app.suggestion import (backend_of, check_outputs, next_line, run_checkpoint, run_config, suggest,
                                       suggestion_markdown, write_suggestion)
from cctr.joint.plan import frontend, plan_for
from cctr.joint.suggest import SuggestConfig
from cctr.reg.spec import BackendSpec
from cctr.seg.data.case import CaseError
from cctr.seg.data.readers import LAYOUTS, open_dataset
from cctr.seg.data.split import load_split
from cctr.seg.inference import load_students


def _weights(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--weights {text!r}: three numbers, e.g. 1,1,0") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"--weights {text!r}: three numbers (disagreement, atlas misfit, distance)")
    return values  # type: ignore[return-value]


def configure(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    defaults = SuggestConfig()
    p.add_argument("--run", type=Path, required=True, help="a run folder of `cctr train` (config.yaml, best.pt)")
    p.add_argument("--data", type=Path, required=True, help="the dataset folder the run trained on")
    p.add_argument("--split", type=Path, default=None, help="split JSON (default: the dataset folder's split.json)")
    p.add_argument("--layout", choices=LAYOUTS, default=None, help="force a dataset layout instead of detecting it")
    p.add_argument("--k", type=int, default=defaults.k, help=f"patients to choose (default {defaults.k})")
    p.add_argument("--backend", default=None, metavar="SPEC",
                   help="registration backend spec (default: the run's own, else identity)")
    p.add_argument("--weights", type=_weights, default=defaults.weights, metavar="D,A,R",
                   help="weights of disagreement, atlas misfit and distance (default "
                        f"{','.join(f'{w:g}' for w in defaults.weights)})")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN/suggest)")
    p.add_argument("--overwrite", action="store_true", help="replace output files an earlier cctr suggest did not write")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = run_config(args.run)
    checkpoint = run_checkpoint(args.run)
    d, a, r = args.weights
    scfg = SuggestConfig(k=args.k, disagreement=d, atlas_misfit=a, distance=r)
    spec = backend_of(cfg, args.backend)
    BackendSpec.parse(spec)   # a bad spec stops here, before any scan is read
    out = args.out or args.run / "suggest"
    check_outputs(out, args.overwrite)
    dataset = open_dataset(args.data, args.layout)
    split = load_split(args.split) if args.split is not None else dataset.default_split
    if split is None:
        raise CaseError(f"{args.data}: the folder has no split.json; pass --split FILE")
    split.check_patients(dataset.patient_ids, str(args.split or args.data))
    plan = plan_for(dataset, split, cfg.labeled)   # classical backends register on the run's planned grid
    trained = load_students(checkpoint)
    found = suggest(cfg, checkpoint, dataset, split, spec, scfg, frontend(plan), progress=not args.no_progress,
                    trained=trained)
    write_suggestion(out, found, args.run, dataset, trained)
    print(suggestion_markdown(found, str(args.run)), end="")
    print(f"wrote {out / 'suggest.csv'}, {out / 'suggest.md'} and {out / 'suggest.png'}")
    print(next_line(found))
    return 0
