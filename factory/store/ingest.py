"""`factory ingest`: real or phantom cohort folders -> preprocessed cohort store.

Every source folder is read with the matching reader (ACDC layout, M&Ms layout or a plain NIfTI
folder), each subject is brought to the preset's canonical geometry and committed; the manifest is
written only when all subjects made it. On any error the partial store is removed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from factory.data.clinical import empty_measurement
from factory.data.preprocess import preprocess
from factory.data.readers import count_subjects, read_cohort
from factory.errors import InputError
from factory.presets import get_preset
from factory.record import Subject
from factory.store import layout
from factory.store.fs import filesystem
from factory.store.writer import StoreWriter

ROW_KEYS = [name for name in layout.table_columns() if name not in
            ("subject_id", "n_frames", "n_slices", "ed_frame", "es_frame", "n_labeled_frames")]


def strip_labels(subject: Subject) -> Subject:
    """Turn a subject into unlabeled-pool data: no masks, no mask-derived clinical values, no diagnosis."""
    subject.mask = subject.mask * 0
    subject.labeled = subject.labeled & False
    subject.meta = {**subject.meta, **empty_measurement(), "diagnosis": None}
    return subject


def ingest(sources: list[Path], out: str, preset_name: str = "tiny", overwrite: bool = False,
           full_gt: bool = False, progress: bool = True, unlabeled: list[Path] = ()) -> StoreWriter:
    """Preprocess every subject of `sources` (and, without their labels, of `unlabeled`) into a cohort store."""
    preset = get_preset(preset_name)
    sources = [*sources, *unlabeled]
    for src in sources:
        if not Path(src).is_dir():
            raise InputError(f"{src}: source folder does not exist")
    counts = [count_subjects(Path(src)) for src in sources]
    if sum(counts) == 0:
        raise InputError(f"no subjects found in {', '.join(map(str, sources))}")
    writer = StoreWriter.create(out, n_subjects=sum(counts), preset=preset, kind="cohort", overwrite=overwrite,
                                attrs={"sources": [str(s) for s in sources]})
    seen: set[str] = set()
    try:
        index = 0
        with tqdm(total=sum(counts), desc="ingest", disable=not progress) as bar:
            for src in sources:
                for raw in read_cohort(Path(src), full_gt=full_gt):
                    subject = preprocess(raw, preset)  # crops around the heart, as a detector would
                    if src in unlabeled:
                        subject = strip_labels(subject)
                    if subject.subject_id in seen:  # e.g. two phantom cohorts both start at patient001
                        subject.subject_id = f"{Path(src).name}/{subject.subject_id}"
                    seen.add(subject.subject_id)
                    row = {key: subject.meta.get(key) for key in ROW_KEYS if key in subject.meta}
                    writer.write_subject(index, subject, row)
                    index += 1
                    bar.update()
        writer.finalize()
    except BaseException:
        fs, root = filesystem(out)
        fs.rm(root, recursive=True)
        raise
    return writer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", action="append", default=[], type=Path,
                        help="cohort folder (ACDC layout, M&Ms layout or plain NIfTI files); repeatable")
    parser.add_argument("--unlabeled-src", action="append", default=[], type=Path,
                        help="cohort folder whose subjects enter as an unlabeled pool (masks, mask-derived"
                             " clinical values and diagnosis dropped), like unlabeled scans of other vendors;"
                             " repeatable")
    parser.add_argument("--out", required=True, help="output store path or URL (e.g. cohort.zarr)")
    parser.add_argument("--preset", default="tiny", help="geometry preset (tiny | paper)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output store")
    parser.add_argument("--full-gt", action="store_true",
                        help="use full-cycle ground truth (patientNNN_4d_gt.nii.gz) where present, "
                             "labelling every frame instead of ED/ES only")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if not args.src and not args.unlabeled_src:
        raise InputError("give at least one --src or --unlabeled-src folder")
    writer = ingest(args.src, args.out, args.preset, overwrite=args.overwrite, full_gt=args.full_gt,
                    unlabeled=args.unlabeled_src)
    print(f"wrote {writer.n_subjects} subjects to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0
