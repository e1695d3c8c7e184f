"""ImageFolder evaluation in the layout of the paper's tables: top-1 / top-5 error per scale (its Table 4), with
10 views (Table 5) and multi-scale (Table 6).

Every image is scored once per (view mode, scale) by a :class:`~timm_prelu.inference.MultiScalePredictor`; the
multi-scale row averages the per-scale scores (equal weight). Files that are not images, or cannot be decoded,
are skipped and listed, never fatal. Written to ``out``: ``table.md`` (the paper's tables, see
:mod:`~timm_prelu.inference.tables`), ``table.csv`` (one row per view and scale, naming its paper table),
``table.png``, ``predictions.npz`` (per-image top-k classes and scores of every view / scale /
combination, plus the targets: :func:`table_from_predictions` recomputes the table from it), ``predictions.csv``,
``skipped.txt`` and ``class_to_idx.json`` (folder class -> model class index). The folder walk is bounded and
loop-safe (:mod:`timm_prelu.inference.folders`).
"""
import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import DatasetError
from .distributed import Ranks, merge_by_index
from .folders import ImageFolderListing, walk_imagefolder
from .images import DEFAULT_MAX_IMAGE_PIXELS, ImageError, load_image
from .predictor import MultiScalePredictor
from .tables import MULTI_SCALE, EvalSetup, paper_table, tables_markdown
from ..outputs import check_destination, final_path, finished_output_dir, save_figure, write_atomic

__all__ = ['EvalResult', 'evaluate_folder', 'list_imagefolder', 'error_table', 'table_from_predictions',
           'MULTI_SCALE']

TOPK = 5


@dataclass
class EvalResult:
    """Rows ``dict(view, scale, top1_err, top5_err, images, table)`` (errors in %; ``table``: the paper's table
    the row belongs to), and what was skipped."""
    rows: List[Dict[str, object]]
    num_images: int
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    files: Dict[str, Path] = field(default_factory=dict)
    setup: Optional[EvalSetup] = None
    class_to_idx: Dict[str, int] = field(default_factory=dict)  # folder class -> model class index
    world_size: int = 1  # processes that shared the work
    images_per_rank: List[int] = field(default_factory=list)  # listed images each rank took, in rank order
    backend: Optional[str] = None  # torch.distributed backend, None for one process

    def markdown(self) -> str:
        """The paper's tables these rows fill, with its figures where the setup matches."""
        return tables_markdown(self.rows, self.setup)

    def ranks_summary(self) -> str:
        """'world size 2 (gloo): images per rank 10, 9' (or 'one process')."""
        if self.backend is None:
            return 'one process'
        return (f'world size {self.world_size} ({self.backend}): images per rank '
                f'{", ".join(map(str, self.images_per_rank))}')

    def summary(self) -> str:
        return (f'{self.num_images} images evaluated, {len(self.skipped)} skipped'
                + (f' (listed in {self.files["skipped.txt"]})' if self.skipped and 'skipped.txt' in self.files else ''))


list_imagefolder = walk_imagefolder  # the name earlier versions exported (it returned a tuple)


def _class_mapping(listing: ImageFolderListing, label_names: Optional[Sequence[str]], num_classes: int,
                   notes: List[str]) -> Dict[str, int]:
    """Folder class -> model class index: by name when the model knows its labels, else by folder order.

    Folder order keeps an empty class folder's index, so it never shifts the classes after it; that mapping is
    reported in ``notes`` (and written beside the results) for the user to check.
    """
    folder_classes = sorted(listing.class_to_idx, key=listing.class_to_idx.get)
    if label_names is not None:
        index = {str(n): i for i, n in enumerate(label_names)}
        unknown = [c for c in folder_classes if c not in index]
        if not unknown:
            if listing.empty_classes:
                notes.append(f'class folder(s) without images: {", ".join(listing.empty_classes)} (classes are '
                             f'matched to the model\'s label names, so no index changes)')
            return {c: index[c] for c in folder_classes}
        if len(unknown) < len(folder_classes):
            raise DatasetError(
                f'{listing.root}: class folder(s) {", ".join(unknown[:8])}{" ..." if len(unknown) > 8 else ""} are '
                f'not among the model\'s {len(index)} label names, the other folders are: rename or remove them so '
                f'every class folder is a label name of the model', param='data')
        notes.append('no class folder is named after one of the model\'s label names: classes are matched by folder '
                     'order')
    if len(folder_classes) > num_classes:
        raise DatasetError(f'{listing.root}: {len(folder_classes)} class folders, the model has only {num_classes} '
                           f'classes: evaluate on a folder with the model\'s classes', param='data')
    mapping = {c: i for i, c in enumerate(folder_classes)}
    shown = ', '.join(f'{i}={c}' for c, i in list(mapping.items())[:50])
    notes.append(f'class index by folder order (natural sort): {shown}'
                 + (f' ... ({len(mapping)} classes)' if len(mapping) > 50 else ''))
    if listing.empty_classes:
        notes.append(f'class folder(s) without images keep their index: '
                     f'{", ".join(f"{c} ({mapping[c]})" for c in listing.empty_classes)}')
    return mapping


def _walk_notes(listing: ImageFolderListing) -> List[str]:
    notes = []
    loops = listing.loops
    if loops:
        notes.append(f'{len(loops)} symlink loop(s) not followed, e.g. {loops[0][0]}')
    twice = [p for p, why in listing.skipped if why.startswith('same ')]
    if twice:
        notes.append(f'{len(twice)} link(s) to a file or folder already counted, counted once, e.g. {twice[0]}')
    return notes


def _topk(probs: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    idx = np.argsort(-probs, axis=-1, kind='stable')[..., :k]
    return idx.astype(np.int32), np.take_along_axis(probs, idx, axis=-1).astype(np.float32)


def error_table(topk_idx: np.ndarray, targets: np.ndarray, views: Sequence[str], scales: Sequence[int]) \
        -> List[Dict[str, object]]:
    """Rows of top-1 / top-5 error (%) from top-k predictions ``(N, V, S + 1, k)`` (the last S slot: combined)."""
    rows = []
    hits = topk_idx == targets.reshape(-1, 1, 1, 1)
    labels = [str(s) for s in scales] + [MULTI_SCALE]
    for vi, view in enumerate(views):
        for si, label in enumerate(labels):
            if label == MULTI_SCALE and len(scales) == 1:
                continue
            h = hits[:, vi, si]
            rows.append({'view': view, 'scale': label, 'top1_err': 100.0 * (1 - h[:, :1].any(-1).mean()),
                         'top5_err': 100.0 * (1 - h[:, :TOPK].any(-1).mean()), 'images': int(len(targets)),
                         'table': paper_table(view, label)})
    return rows


def table_from_predictions(path: Union[str, os.PathLike]) -> List[Dict[str, object]]:
    """Recompute the error table from a saved ``predictions.npz``."""
    with np.load(path, allow_pickle=False) as z:
        return error_table(z['topk_idx'], z['targets'], [str(v) for v in z['views']], [int(s) for s in z['scales']])


def _table_csv(rows: List[Dict[str, object]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=['table', 'view', 'scale', 'top1_err', 'top5_err', 'images'],
                            lineterminator='\n')
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, 'top1_err': f'{r["top1_err"]:.4f}', 'top5_err': f'{r["top5_err"]:.4f}'})
    return buf.getvalue()


def _plot(rows: List[Dict[str, object]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    views = list(dict.fromkeys(r['view'] for r in rows))
    scales = list(dict.fromkeys(r['scale'] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
    width = 0.8 / len(views)
    for ax, key, name in ((axes[0], 'top1_err', 'top-1 error (%)'), (axes[1], 'top5_err', 'top-5 error (%)')):
        for vi, v in enumerate(views):
            vals = [next((r[key] for r in rows if r['view'] == v and r['scale'] == s), np.nan) for s in scales]
            ax.bar(np.arange(len(scales)) + vi * width, vals, width, label=v)
        ax.set_xticks(np.arange(len(scales)) + width * (len(views) - 1) / 2, scales)
        ax.set_xlabel('test scale s (shorter side)')
        ax.set_ylabel(name)
    axes[0].legend(title='views')
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def evaluate_folder(
        predictor: MultiScalePredictor,
        data: Union[str, os.PathLike],
        out: Union[str, os.PathLike, None] = None,
        limit: Optional[int] = None,
        progress: bool = True,
        max_image_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS,
        title: str = 'Multi-scale evaluation',
        overwrite: bool = False,
        ranks: Optional[Ranks] = None,
) -> EvalResult:
    """Evaluate ``predictor`` on an ImageFolder; write the table and per-image predictions to ``out``.

    Args:
        predictor: Its scales and views make the table's rows and columns.
        data: ImageFolder root (``<class>/<image>``). Classes map to the model's label names when it has them,
            else to folder order (timm's natural sort; an empty class folder keeps its index).
        out: Output folder, written complete or not at all (checked before any image is read); None writes nothing.
        limit: Evaluate only the first ``limit`` images (classes and file names in natural order); the folder
            walk stops there.
        progress: Show progress (a bar on a terminal, a few lines in a log).
        max_image_pixels: Skip images larger than this.
        title: Title of the PNG plot.
        overwrite: Replace an earlier evaluation folder at ``out`` (never a folder timm-prelu did not write).
        ranks: This process's place in a process group (see :func:`~timm_prelu.inference.distributed.process_group`):
            each rank scores every ``world_size``-th image of the sorted listing, rank 0 gathers the results and
            writes ``out`` exactly as one process would; every rank returns the same result. A failure on any
            rank raises on all. None: one process.
    """
    from ..progress import progress as progress_bar
    ranks = ranks or Ranks()

    def prepare():
        if out is not None and ranks.is_main:
            check_destination(out, overwrite=overwrite, inputs=[data])
        listing = walk_imagefolder(data, limit=limit)
        notes = _walk_notes(listing)
        backend = predictor.backend
        return listing, notes, _class_mapping(listing, backend.label_names, backend.num_classes, notes)

    listing, notes, class_map = ranks.gather(prepare, 'checking the destination and listing the folder',
                                             share=False)[ranks.rank]
    samples, class_to_idx = listing.samples, listing.class_to_idx
    mapping = np.array([class_map[c] for c in sorted(class_to_idx, key=class_to_idx.get)])
    views, scales = predictor.views, predictor.scales
    k = min(TOPK, predictor.backend.num_classes)
    mine = ranks.shard(len(samples))

    def score_shard():
        scored, failed = [], []  # (listing index, ...): merged in listing order
        correct = 0
        desc = 'eval' if not ranks.distributed else f'eval (rank 0 of {ranks.world_size})'
        bar = progress_bar([(i, samples[i]) for i in mine], desc=desc, unit='img',
                           disable=not progress or not ranks.is_main)
        for i, (path, folder_target) in bar:
            try:
                loaded = load_image(path, max_pixels=max_image_pixels)
                scores = predictor.scores(loaded.image)
            except ImageError as e:
                failed.append((i, (path, str(e))))
                continue
            # (V, S + 1, K): each scale, then the multi-scale combination
            probs = np.concatenate([scores.probs, scores.multi_scale()[:, None]], axis=1)
            idx, p = _topk(probs, k)
            target = int(mapping[folder_target])
            scored.append((i, (str(path), target, idx, p)))
            correct += int(idx[0, -1, 0] == target)
            bar.set_postfix(top1_err=f'{100.0 * (1 - correct / len(scored)):.1f}%', skipped=len(failed))
        bar.close()
        return scored, failed

    parts = ranks.gather(score_shard, 'scoring its images')
    scored = merge_by_index([s for s, _ in parts])
    skipped: List[Tuple[str, str]] = ([(p, 'not an image file type') for p in listing.others] + listing.skipped
                                      + merge_by_index([f for _, f in parts]))
    if not scored:
        why = f' ({skipped[0][1]})' if skipped else ''
        raise DatasetError(f'{data}: none of the {len(samples)} images could be read{why}: check the folder',
                           param='data')
    paths = [s[0] for s in scored]
    topk_idx_arr = np.stack([s[2] for s in scored])
    targets_arr = np.asarray([s[1] for s in scored], dtype=np.int64)
    rows = error_table(topk_idx_arr, targets_arr, views, scales)
    setup = EvalSetup.from_predictor(predictor, len(class_to_idx))
    result = EvalResult(rows, len(scored), skipped, notes, setup=setup, class_to_idx=class_map,
                        world_size=ranks.world_size, images_per_rank=ranks.shard_sizes(len(samples)),
                        backend=ranks.backend)
    if out is not None:
        def write():
            if not ranks.is_main:
                return None
            return _write_eval_folder(out, overwrite, result, predictor, data, title, paths, targets_arr,
                                      topk_idx_arr, np.stack([s[3] for s in scored]), class_to_idx, k)
        result.files = ranks.gather(write, f'writing {out}')[0]  # every rank returns the files rank 0 wrote
    return result


def _write_eval_folder(out: Union[str, os.PathLike], overwrite: bool, result: EvalResult,
                       predictor: MultiScalePredictor, data: Union[str, os.PathLike], title: str, paths: List[str],
                       targets: np.ndarray, topk_idx: np.ndarray, topk_prob: np.ndarray, class_to_idx: Dict[str, int],
                       k: int) -> Dict[str, Path]:
    """Write the evaluation folder as a whole. Image paths are written relative to the ImageFolder root, whose
    location the table's footer gives as it will be once every output being written is finished."""
    rows, views, scales = result.rows, predictor.views, predictor.scales
    root = Path(data)
    rel_paths = [Path(os.path.relpath(p, root)).as_posix() for p in paths]
    names = ('table.md', 'table.csv', 'table.png', 'predictions.npz', 'predictions.csv', 'skipped.txt',
             'class_to_idx.json')
    with finished_output_dir(out, overwrite=overwrite, inputs=[data], kind='eval') as work:
        protocol = (f'{predictor.describe()}; {len(targets)} images of {final_path(root)}; errors in %; '
                    f'scores = softmax probabilities averaged over views, then over scales; image paths in '
                    f'predictions.csv / .npz are relative to that folder')
        write_atomic(work / 'table.md', f'{result.markdown()}\n{protocol}\n')
        write_atomic(work / 'table.csv', _table_csv(rows))
        _plot(rows, work / 'table.png', title)

        def save_npz(tmp: Path) -> None:
            with open(tmp, 'wb') as f:
                np.savez_compressed(
                    f, paths=np.asarray(rel_paths), targets=targets, topk_idx=topk_idx, topk_prob=topk_prob,
                    views=np.asarray(views), scales=np.asarray(scales),
                    class_names=np.asarray(sorted(class_to_idx, key=class_to_idx.get)))
        write_atomic(work / 'predictions.npz', save_npz)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator='\n')
        writer.writerow(['path', 'target'] + [f'{v}_{MULTI_SCALE}_top{k}' for v in views])
        for path, t, idx in zip(rel_paths, targets.tolist(), topk_idx):
            writer.writerow([path, t] + [' '.join(map(str, idx[vi, -1])) for vi in range(len(views))])
        write_atomic(work / 'predictions.csv', buf.getvalue())
        write_atomic(work / 'skipped.txt', ''.join(f'{_display(p, root)}\t{why.replace(str(p), _display(p, root))}\n'
                                                   for p, why in result.skipped))
        write_atomic(work / 'class_to_idx.json', json.dumps(result.class_to_idx, indent=1) + '\n')
    out = Path(os.path.abspath(out))
    return {name: out / name for name in names}


def _display(path: Union[str, os.PathLike], root: Path) -> str:
    """A path under the ImageFolder root relative to it; anything else as it will be when finished."""
    rel = os.path.relpath(path, root)
    return Path(rel).as_posix() if not rel.startswith('..') else str(final_path(path))
