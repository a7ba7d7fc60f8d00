"""`factory ingest`: real or phantom cohort folders -> preprocessed cohort store.

Every source folder is read with the matching reader (ACDC layout, M&Ms layout or a plain NIfTI
folder). Each subject is checked (readable, finite, non-constant frames, possible spacing, and every
labeled frame a plausible heart by the anatomical gate), brought to the preset's canonical geometry
and committed. The store is built beside `--out` and swapped in only when complete, so a refused or
failed ingest leaves `--out` as it was; `--overwrite` only ever replaces an earlier store.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from factory.data.clinical import empty_measurement
from factory.data.gate import check_labeled_mask
from factory.data.preprocess import preprocess
from factory.data.readers import SubjectFile, find_subjects
from factory.errors import InputError
from factory.outputs import STORE, check_output, remove, staging_path, swap
from factory.presets import Preset, get_preset
from factory.record import Subject
from factory.store import layout
from factory.store.writer import StoreWriter

ROW_KEYS = [name for name in layout.table_columns() if name not in
            ("subject_id", "n_frames", "n_slices", "ed_frame", "es_frame", "n_labeled_frames")]


class Planned(NamedTuple):
    """One subject to ingest: its source folder, its id in the store, whether its labels are kept, its reader."""
    source: Path
    subject_id: str
    labeled: bool
    found: SubjectFile


class Ingested(NamedTuple):
    """What an ingest wrote: the number of subjects and the refused ones ({source, subject, reason})."""
    n_subjects: int
    skipped: list[dict]


def strip_labels(subject: Subject) -> Subject:
    """Turn a subject into unlabeled-pool data: no masks, no mask-derived clinical values, no diagnosis."""
    subject.mask = subject.mask * 0
    subject.labeled = subject.labeled & False
    subject.meta = {**subject.meta, **empty_measurement(), "diagnosis": None}
    return subject


def check_sources(sources: list[Path]) -> None:
    """Every source must be an existing folder, and none may be given twice (its subjects would enter twice)."""
    seen: dict[str, Path] = {}
    for src in sources:
        if not Path(src).is_dir():
            raise InputError(f"{src}: source folder does not exist")
        real = os.path.realpath(src)
        if real in seen:
            raise InputError(f"{src}: source folder given twice (also as {seen[real]}); its subjects would "
                             "enter the store twice")
        seen[real] = Path(src)


def plan_subjects(sources: list[Path], unlabeled: list[Path], full_gt: bool) -> list[Planned]:
    """Find every subject and give it a unique store id (an id seen before is prefixed with its folder's name)."""
    planned: list[Planned] = []
    owner: dict[str, Path] = {}
    for src in [*sources, *unlabeled]:
        for found in find_subjects(Path(src), full_gt=full_gt):
            subject_id = found.subject_id
            if subject_id in owner:  # e.g. two phantom cohorts both start at patient001
                qualified = f"{Path(src).name}/{subject_id}"
                if qualified in owner:
                    raise InputError(f"{src}: subject id {subject_id!r} is also in {owner[subject_id]}, and "
                                     f"{qualified!r} is taken by {owner[qualified]}; rename a source folder")
                subject_id = qualified
            owner[subject_id] = Path(src)
            planned.append(Planned(Path(src), subject_id, src not in unlabeled, found))
    if not planned:
        raise InputError(f"no subjects found in {', '.join(map(str, [*sources, *unlabeled]))}")
    return planned


def _frame_name(subject: Subject, frame: int) -> str:
    """A frame as the source numbers it (0-based, before ED was rolled to frame 0), with its phase."""
    native = (frame + subject.meta["ed_frame_native"]) % subject.n_frames
    phase = {0: ", ED", subject.es_frame: ", ES"}.get(frame, "")
    return f"frame {native} (0-based{phase})"


def check_masks(subject: Subject) -> None:
    """Refuse a subject with a labeled frame whose mask is empty or no plausible heart (any-phase gate)."""
    for frame in np.flatnonzero(subject.labeled):
        result = check_labeled_mask(subject.mask[frame], subject.spacing_mm)
        if not result.passed:
            raise InputError(f"{subject.meta['origin']}: mask of {_frame_name(subject, frame)}: "
                             f"{'; '.join(result.reasons)}")


def prepare(planned: Planned, preset: Preset) -> Subject:
    """Read, check and preprocess one planned subject; an `InputError` names the file at fault."""
    raw = planned.found.read()
    if planned.labeled:
        check_masks(raw)
    subject = preprocess(raw, preset)  # crops around the heart, as a detector would
    subject.subject_id = planned.subject_id
    return subject if planned.labeled else strip_labels(subject)


def shrink(writer: StoreWriter, n_subjects: int) -> StoreWriter:
    """Cut every array of a store to its first `n_subjects` (the accepted ones); a writer of the smaller store."""
    for name in layout.ARRAY_NAMES:
        array = writer.group[name]
        array.resize((n_subjects, *array.shape[1:]))
    return StoreWriter(writer.url)


def write_store(url: str, planned: list[Planned], preset: Preset, *, skip_bad: bool, progress: bool,
                attrs: dict) -> Ingested:
    """Write the planned subjects into a new store at `url`; a bad one is refused, or skipped with `skip_bad`."""
    writer = StoreWriter.create(url, n_subjects=len(planned), preset=preset, kind="cohort", attrs=attrs)
    skipped: list[dict] = []
    index = 0
    for item in tqdm(planned, desc="ingest", disable=not progress):
        try:
            subject = prepare(item, preset)
        except InputError as err:
            if not skip_bad:
                raise
            skipped.append({"source": str(item.source), "subject": item.subject_id, "reason": str(err)})
            tqdm.write(f"skipped {item.subject_id}: {err}", file=sys.stderr)
            continue
        writer.write_subject(index, subject, {key: subject.meta.get(key) for key in ROW_KEYS if key in subject.meta})
        index += 1
    if index == 0:
        raise InputError(f"all {len(planned)} subjects were refused; first: {skipped[0]['reason']}")
    if index < len(planned):
        writer = shrink(writer, index)
    writer.finalize(extra_attrs={"skipped": skipped})
    return Ingested(index, skipped)


def ingest(sources: Sequence[Path], out: str, preset_name: str = "tiny", overwrite: bool = False,
           full_gt: bool = False, progress: bool = True, unlabeled: Sequence[Path] = (),
           skip_bad: bool = False) -> Ingested:
    """Preprocess every subject of `sources` (and, without their labels, of `unlabeled`) into a cohort store.

    Refuses an `out` that overlaps a source or holds anything but an earlier store (replaced only
    with `overwrite`); the store is built at `staging_path(out)` and swapped in when complete.
    """
    sources, unlabeled = list(sources), list(unlabeled)
    check_output(out, overwrite=overwrite, accept=(STORE,), inputs=[*sources, *unlabeled])
    preset = get_preset(preset_name)
    check_sources([*sources, *unlabeled])
    planned = plan_subjects(sources, unlabeled, full_gt)
    staging = staging_path(out)
    remove(staging)  # left by an interrupted earlier run
    try:
        result = write_store(staging, planned, preset, skip_bad=skip_bad, progress=progress,
                             attrs={"sources": [str(s) for s in [*sources, *unlabeled]]})
        check_output(out, overwrite=overwrite, accept=(STORE,))  # nothing else appeared there meanwhile
        swap(staging, out)
    except BaseException:
        remove(staging)
        raise
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", action="append", default=[], type=Path,
                        help="cohort folder (ACDC layout, M&Ms layout or plain NIfTI files); repeatable")
    parser.add_argument("--unlabeled-src", action="append", default=[], type=Path,
                        help="cohort folder whose subjects enter as an unlabeled pool (masks, mask-derived"
                             " clinical values and diagnosis dropped), like unlabeled scans of other vendors;"
                             " repeatable")
    parser.add_argument("--out", required=True, help="output store path or URL (e.g. cohort.zarr)")
    parser.add_argument("--preset", default="tiny", help="geometry preset (tiny | paper)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing store written by cine-factory (never any other folder)")
    parser.add_argument("--full-gt", action="store_true",
                        help="use full-cycle ground truth (patientNNN_4d_gt.nii.gz) where present, "
                             "labelling every frame instead of ED/ES only")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip a subject that would be refused (unreadable, constant or non-finite image,"
                             " impossible spacing, implausible mask), printing why and recording it in the"
                             " store's 'skipped' attribute, instead of refusing the whole ingest")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if not args.src and not args.unlabeled_src:
        raise InputError("give at least one --src or --unlabeled-src folder")
    result = ingest(args.src, args.out, args.preset, overwrite=args.overwrite, full_gt=args.full_gt,
                    unlabeled=args.unlabeled_src, skip_bad=args.skip_bad)
    skipped = f" ({len(result.skipped)} skipped)" if result.skipped else ""
    print(f"wrote {result.n_subjects} subjects{skipped} to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0
