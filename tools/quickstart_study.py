"""The quickstart study: CE vs label smoothing vs MaxSup on real digits.

One function, :func:`run_study`, runs the whole story a new user should see
in minutes on a laptop CPU, through the same configs, tools and analysis
library users use on ImageNet / ADE20K:

1. write scikit-learn's real 8x8 handwritten digits to mmpretrain's folder
   layout (fixed train/val/test split);
2. train a small ResNet (CIFAR stem) with CE, LS and MaxSup (alpha 0.1->0.2,
   Mixup/CutMix) over several seeds (``configs/quickstart/``);
3. analyse every checkpoint with :func:`maxsup_mm.analysis.compare`
   (top-1, ECE, d_within / d_total / R^2, z_max - z_gt on errors, logit
   densities, reliability diagrams, Grad-CAM, feature projection);
4. transfer: convert each backbone with the mmpretrain -> mmseg converter
   and fine-tune UperNet on "digit scenes" made of held-out digits (mIoU);
5. write ``<work_dir>/report.md``: mean ± std over seeds and, for every
   pair of methods, whether the difference exceeds the seed noise.

Every finished step leaves a ``done.json``; an interrupted study resumes
where it stopped: unfinished training runs resume from their last
checkpoint (the configs write one every epoch / every 50 segmentation
iterations and keep the last two), exactly as if never interrupted.

This is application code: it lives beside its entry, ``tools/quickstart.py``,
and uses the ``maxsup_mm`` library like any user would (nothing in the
library imports it).
"""
import json
import os
import os.path as osp
import platform
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from maxsup_mm.analysis.tables import (format_mean_std, markdown_table,
                                       mean_std)
from maxsup_mm.apis import check_writable, resolve_config
from maxsup_mm.fileio import atomic_write_json, atomic_write_text

#: method name -> classification config (siblings that differ in the loss;
#: :func:`maxsup_mm.apis.resolve_config` finds them from any directory)
CLS_CONFIGS = {
    'CE': 'configs/quickstart/resnet18-tiny_1xb64-15e_digits.py',
    'LS': 'configs/quickstart/resnet18-tiny_1xb64-15e-ls_digits.py',
    'MaxSup': 'configs/quickstart/resnet18-tiny_1xb64-15e-maxsup_digits.py',
}
SEG_CONFIG = 'configs/quickstart/upernet_resnet18-tiny_1xb8-digit-scenes-32x32.py'


@dataclass
class StudySettings:
    """What the study runs.

    Args:
        work_dir (str): outputs (runs, analysis, report).
        data_dir (str): where the digits and digit scenes are written.
        methods (Sequence[str]): keys of :data:`CLS_CONFIGS`.
        seeds (Sequence[int]): training seeds (each method, each seed).
        epochs (int): classification epochs.
        seg_iters (int): UperNet fine-tuning iterations per backbone.
        seg_seeds (Sequence[int]): the pretraining seeds whose backbones are
            transferred (fine-tuning costs more than pretraining here).
        seg_scenes (tuple[int, int]): training / validation scenes.
        analyses (Sequence[str]): analyses of :func:`compare`.
    """
    work_dir: str = 'work_dirs/quickstart'
    data_dir: str = 'data'
    methods: Sequence[str] = ('CE', 'LS', 'MaxSup')
    seeds: Sequence[int] = (0, 1, 2)
    epochs: int = 15
    seg_iters: int = 300
    seg_seeds: Sequence[int] = (0, )
    seg_scenes: Tuple[int, int] = (240, 90)
    analyses: Sequence[str] = ('accuracy', 'calibration', 'separation',
                               'logits', 'projection', 'gradcam')
    extra_cfg: Dict[str, dict] = field(default_factory=dict)

    @classmethod
    def fast(cls, **kwargs) -> 'StudySettings':
        """The smoke version (about two minutes): 2 seeds, 2 epochs, a few
        segmentation iterations."""
        opts = dict(work_dir='work_dirs/quickstart_fast', seeds=(0, 1),
                    epochs=2, seg_iters=6, seg_seeds=(0, ),
                    seg_scenes=(32, 16))
        opts.update(kwargs)
        return cls(**opts)


def _done(path: str) -> Optional[dict]:
    if osp.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def _write_json(path: str, obj) -> None:
    atomic_write_json(path, obj)


#: the settings that change what a finished run holds: a work dir keeps
#: them (``study.json``) and is resumed only with the same ones
RESULT_SETTINGS = ('epochs', 'seg_iters', 'seg_scenes')


def _result_settings(s: StudySettings) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in ((k, getattr(s, k)) for k in RESULT_SETTINGS)}


def check_study_dirs(s: StudySettings) -> None:
    """Refuse, before any work, what would fail or mix studies: a work or
    data dir that cannot be written, a work dir of a study with other
    settings (its finished runs would be taken as this study's).

    Raises:
        ValueError: one line naming the folder and what to do.
    """
    check_writable(s.work_dir, '--work-dir', folder=True)
    check_writable(s.data_dir, '--data-dir', folder=True)
    done = _done(osp.join(s.work_dir, 'study.json'))
    want = _result_settings(s)
    if done is not None and done != want:
        other = ', '.join(f'{k} {done.get(k)}' for k in RESULT_SETTINGS
                          if done.get(k) != want[k])
        asked = ', '.join(f'{k} {want[k]}' for k in RESULT_SETTINGS
                          if done.get(k) != want[k])
        raise ValueError(
            f'--work-dir {s.work_dir} holds a study with other settings '
            f'({other}; asked: {asked}); give another --work-dir, or the '
            'options of that study (e.g. --fast) to resume it')


def _data_roots(root: str) -> dict:
    """``--cfg-options`` pointing every dataloader of a config to ``root``."""
    return {f'{split}_dataloader.dataset.data_root': root
            for split in ('train', 'val', 'test')}


def _train(config: str, work: str, name: str, seed: int, data_root: str,
           overrides: dict, extra: dict):
    """Train ``config`` quietly in ``work``; resume an unfinished run."""
    from maxsup_mm.apis import build_runner, prepare_train_cfg
    options = {'log_level': 'WARNING',
               'experiment_name': f'{name}_seed{seed}_{time.time_ns()}',
               'randomness.seed': seed, **_data_roots(data_root),
               **overrides, **extra}
    resume = 'auto' if osp.exists(osp.join(work, 'last_checkpoint')) else None
    runner = build_runner(
        prepare_train_cfg(resolve_config(config), work_dir=work,
                          resume=resume, cfg_options=options))
    runner.train()
    return runner


def train_classifier(method: str, seed: int, s: StudySettings,
                     digits_root: str) -> str:
    """Train one (method, seed) run; return its final checkpoint."""
    work = osp.join(s.work_dir, 'cls', f'{method.lower()}_seed{seed}')
    done = _done(osp.join(work, 'done.json'))
    if done:
        return done['checkpoint']
    e = s.epochs
    _train(CLS_CONFIGS[method], work, method, seed, digits_root, {
        'train_cfg.max_epochs': e,
        'train_cfg.val_interval': e,
        'param_scheduler.milestones': [max(1, int(e * f))
                                       for f in (0.3, 0.6, 0.8)],
    }, s.extra_cfg.get('cls', {}))
    ckpt = osp.join(work, f'epoch_{e}.pth')
    _write_json(osp.join(work, 'done.json'), dict(checkpoint=ckpt))
    return ckpt


def transfer_backbone(method: str, seed: int, cls_ckpt: str,
                      s: StudySettings, scenes_root: str) -> dict:
    """Convert a digits backbone and fine-tune UperNet on digit scenes."""
    from maxsup_mm.converters import convert_mmpretrain_to_mmseg
    work = osp.join(s.work_dir, 'seg', f'{method.lower()}_seed{seed}')
    done = _done(osp.join(work, 'done.json'))
    if done:
        return done
    os.makedirs(work, exist_ok=True)
    backbone = osp.join(work, 'backbone_mmseg.pth')
    convert_mmpretrain_to_mmseg(cls_ckpt, backbone,
                                config=resolve_config(SEG_CONFIG), log=None)
    n = s.seg_iters
    runner = _train(SEG_CONFIG, work, f'seg_{method}', seed, scenes_root, {
        'model.backbone.init_cfg.checkpoint': backbone,
        'train_cfg.max_iters': n,
        'train_cfg.val_interval': n,
        'param_scheduler.0.end': n,
    }, s.extra_cfg.get('seg', {}))
    metrics = runner.test()
    result = dict(mIoU=float(metrics['mIoU']), aAcc=float(metrics['aAcc']),
                  checkpoint=osp.join(work, f'iter_{n}.pth'))
    _write_json(osp.join(work, 'done.json'), result)
    return result


# ---------------------------------------------------------------------------
# statistics for the report
# ---------------------------------------------------------------------------
def exceeds_noise(a: Sequence[float], b: Sequence[float],
                  z: float = 2.0) -> Tuple[float, float, Optional[bool]]:
    """Difference of means, its seed-noise scale and the verdict.

    The means and sample standard deviations are
    :func:`maxsup_mm.analysis.tables.mean_std`'s.  The noise scale is the
    standard error of the difference,
    ``sqrt(s_a^2/n_a + s_b^2/n_b)``; the difference "exceeds the seed
    noise" when it is larger than ``z`` (2) times that.  With fewer than two
    seeds per method there is no noise estimate and the verdict is None.
    """
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    if len(a) < 2 or len(b) < 2:
        return ma - mb, float('nan'), None
    se = float(np.sqrt(sa**2 / len(a) + sb**2 / len(b)))
    return ma - mb, se, bool(abs(ma - mb) > z * se)


#: (report label, path into the per-run metrics, higher is better?)
REPORT_METRICS = [
    ('top-1 (%)', lambda m: 100 * m['accuracy'], True),
    ('ECE (%)', lambda m: 100 * m['ece'], False),
    ('d_within', lambda m: m['separation']['test']['d_within'], True),
    ('d_total', lambda m: m['separation']['test']['d_total'], None),
    ('R²', lambda m: m['separation']['test']['r2'], True),
    ('z_max − z_gt on errors', lambda m: m['logits']['error_gap_mean'],
     False),
    ('transfer mIoU (%)', lambda m: m['mIoU'], True),
]


def _collect(per_run: List[dict], methods: Sequence[str]) -> Dict:
    table = {}
    for label, get, _ in REPORT_METRICS:
        table[label] = {}
        for method in methods:
            vals = []
            for run in per_run:
                if run['name'] != method:
                    continue
                try:
                    vals.append(float(get(run['metrics'])))
                except (KeyError, TypeError):
                    pass
            table[label][method] = vals
    return table


def write_report(s: StudySettings, per_run: List[dict], analysis_md: str,
                 elapsed: float) -> str:
    """Write ``<work_dir>/report.md`` from the per-run metrics."""
    methods = list(s.methods)
    table = _collect(per_run, methods)
    lines = [
        '# MaxSup quickstart report', '',
        'CE vs label smoothing (LS) vs MaxSup on the real 8×8 handwritten '
        'digits of scikit-learn (1,797 images; train/val/test = '
        '60/15/25 % per class), small ResNet-18 (CIFAR stem, 16 base '
        f'channels), Mixup/CutMix, {s.epochs} epochs, seeds '
        f'{", ".join(map(str, s.seeds))}; LS and MaxSup with α 0.1 → 0.2. '
        'Transfer: the backbones of seed(s) '
        f'{", ".join(map(str, s.seg_seeds))} converted to mmseg and '
        f'fine-tuned in UperNet for {s.seg_iters} iterations on "digit '
        'scenes" built from held-out digits (11 classes: background + 10 '
        'digits).', '',
        f'Machine: {platform.machine()}, {os.cpu_count()} CPU cores, '
        f'Python {platform.python_version()}; study time '
        f'{elapsed / 60:.1f} min.', '',
        '## Results (test split, mean ± std over seeds)', '',
    ]
    lines += markdown_table(['metric'] + methods, [
        [label] + [format_mean_std(table[label][m],
                                   digits=2 if '%' in label else 4,
                                   single=' (1 seed)') for m in methods]
        for label, _, _ in REPORT_METRICS])
    lines += [
        '', 'd_within / d_total: mean cosine distance between penultimate '
        'features of same-class / all pairs; R² = 1 − d_within/d_total '
        '(Kornblith et al. 2021). The paper expects MaxSup to keep a larger '
        'd_within than LS (Tables 2, 9) and a smaller z_max − z_gt gap on '
        'errors (no error enhancement).', '',
        '## Which differences exceed the seed noise', '',
        'A difference of means counts as exceeding the seed noise when it is '
        'larger than twice its standard error sqrt(s₁²/n₁ + s₂²/n₂) over the '
        'seeds. Everything else is within the noise of this small study.', '',
    ]
    pairs = [(a, b) for a, b in (('MaxSup', 'LS'), ('MaxSup', 'CE'),
                                 ('LS', 'CE')) if a in methods and b in methods]
    verdicts, rows = [], []
    for label, _, _ in REPORT_METRICS:
        for a, b in pairs:
            va, vb = table[label][a], table[label][b]
            if not va or not vb:
                continue
            diff, se, exceeds = exceeds_noise(va, vb)
            if exceeds is None:
                verdict = 'no noise estimate (one seed): not claimed'
            else:
                verdict = '**exceeds seed noise**' if exceeds else \
                    'within seed noise'
                verdicts.append((label, a, b, diff, exceeds))
            noise = '—' if exceeds is None else f'{2 * se:.4f}'
            rows.append([label, f'{a} − {b}', f'{diff:+.4f}', noise,
                         verdict])
    lines += markdown_table(['metric', 'comparison', 'difference', '2 × SE',
                             'verdict'], rows)
    exceed = [f'{lab} ({a} − {b} = {d:+.4f})' for lab, a, b, d, e in verdicts
              if e]
    lines += ['', 'In plain words: ' + (
        'these differences exceed the seed noise: ' + '; '.join(exceed) +
        '. All other differences are within it.' if exceed else
        'no difference between methods exceeds the seed noise here.'), '']
    rel = osp.relpath(osp.dirname(analysis_md), s.work_dir)
    lines += [
        '## Figures', '',
        f'![logit densities]({rel}/logit_densities.png)', '',
        f'![reliability diagrams]({rel}/reliability.png)', '',
        f'![Grad-CAM]({rel}/gradcam_grid.png)', '',
    ]
    lines += [f'![feature projection, {m}]({rel}/projection_{m}.png)'
              for m in methods]
    lines += [
        '', 'Every table and figure of the analysis toolkit: '
        f'[{rel}/report.md]({rel}/report.md).', '',
        '## Runs', '',
    ]
    lines += markdown_table(
        ['method', 'seed', 'classification checkpoint', 'transfer mIoU'],
        [[run['name'], run['seed'], f"`{run['checkpoint']}`",
          format_mean_std([run['metrics'].get('mIoU')], digits=2)]
         for run in per_run])
    path = osp.join(s.work_dir, 'report.md')
    atomic_write_text(path, '\n'.join(lines) + '\n')
    return path


def run_study(s: StudySettings,
              log: Callable[[str], None] = print) -> str:
    """Run the whole study (resumable); return the report's path.

    Raises:
        ValueError: :func:`check_study_dirs` refuses the folders.
    """
    from maxsup_mm.analysis import compare
    from maxsup_mm.datasets import (load_digits_split, write_digit_scenes,
                                    write_digits_folder)
    start = time.time()
    check_study_dirs(s)
    os.makedirs(s.work_dir, exist_ok=True)
    _write_json(osp.join(s.work_dir, 'study.json'), _result_settings(s))
    digits_root = osp.join(s.data_dir, 'digits')
    scenes_root = osp.join(
        s.data_dir, f'digit_scenes_{s.seg_scenes[0]}x{s.seg_scenes[1]}')
    log(f'[quickstart] data: real 8x8 digits -> {digits_root}; '
        f'digit scenes -> {scenes_root}')
    write_digits_folder(digits_root)
    held_out = load_digits_split()['test']
    write_digit_scenes(scenes_root, *held_out, num_scenes=s.seg_scenes)

    runs = [(m, seed) for seed in s.seeds for m in s.methods]
    ckpts = {}
    for i, (method, seed) in enumerate(runs, 1):
        t = time.time()
        ckpts[method, seed] = train_classifier(method, seed, s, digits_root)
        log(f'[quickstart] ({i}/{len(runs)}) trained {method:6s} seed {seed} '
            f'({s.epochs} epochs): {time.time() - t:.0f}s')

    log('[quickstart] analysis: accuracy, calibration, feature geometry, '
        'logits, Grad-CAM, projection')
    analysis_dir = osp.join(s.work_dir, 'analysis')
    spec = [(m, resolve_config(CLS_CONFIGS[m]), ckpts[m, seed])
            for m, seed in runs]
    analysed = compare(
        spec, analysis_dir, analyses=s.analyses, split='test',
        cfg_options=_data_roots(digits_root),
        device='cpu', progress=False,
        title='MaxSup quickstart: analysis of the digits runs')

    per_run = []
    transfers = [(m, seed) for m, seed in runs if seed in s.seg_seeds]
    for method, seed in runs:
        metrics = dict(analysed.find(method, ckpts[method, seed]).metrics)
        if (method, seed) in transfers:
            t = time.time()
            seg = transfer_backbone(method, seed, ckpts[method, seed], s,
                                    scenes_root)
            log(f'[quickstart] ({transfers.index((method, seed)) + 1}/'
                f'{len(transfers)}) transferred {method:6s} seed {seed} to '
                f'UperNet ({s.seg_iters} iterations): mIoU '
                f'{seg["mIoU"]:.2f}, {time.time() - t:.0f}s')
            metrics['mIoU'] = seg['mIoU']
        per_run.append(dict(name=method, seed=seed, metrics=metrics,
                            checkpoint=ckpts[method, seed]))
    path = write_report(s, per_run, analysed.report_path,
                        time.time() - start)
    log(f'[quickstart] report: {path} ({(time.time() - start) / 60:.1f} min)')
    return path
