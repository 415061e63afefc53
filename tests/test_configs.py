"""The paper's recipes (configs/): every config trains and validates on CPU.

Each config under ``configs/`` (except ``upernet/``, ``quickstart/`` and
the evaluation-only ``released/``, tested elsewhere, and the partial
``_base_`` files) is loaded the way
``tools/train.py`` loads it, with only the data roots, the image size and the
batch sizes changed, built into an mmengine Runner, run for one training
iteration and one validation step on generated data in the real on-disk
format (ImageNet folders; CIFAR-100's python pickles).  Sibling configs of
one paper table must differ only in the method keys.
"""
import argparse
import copy
import functools
import os
import os.path as osp
import pickle
import re
from glob import glob

import numpy as np
import pytest
import torch

from flat_dict import flatten  # tests/helpers

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(ROOT, 'configs')
SKIP_DIRS = ('_base_', 'upernet', 'quickstart', 'released')
IMG = 32  # image side used in the smoke runs


def recipe_configs():
    paths = []
    for path in sorted(glob(osp.join(CONFIG_DIR, '**', '*.py'),
                            recursive=True)):
        rel = osp.relpath(path, CONFIG_DIR)
        if not set(rel.split(os.sep)[:-1]) & set(SKIP_DIRS):
            paths.append(rel)
    return paths


CONFIGS = recipe_configs()


# ---------------------------------------------------------------------------
# generated CIFAR-100 in its real format: cifar-100-python/{train,test,meta}
# ---------------------------------------------------------------------------
def write_cifar100(root, per_split=4, seed=0):
    rng = np.random.default_rng(seed)
    folder = osp.join(root, 'cifar-100-python')
    os.makedirs(folder, exist_ok=True)
    for split in ('train', 'test'):
        labels = [int(i % 4) for i in range(per_split)]
        data = rng.integers(0, 256, (per_split, 3 * 32 * 32), dtype=np.uint8)
        for i, y in enumerate(labels):  # a learnable colour per class
            data[i, y * 1024:(y + 1) * 1024] //= 2
        entry = {'batch_label': f'{split} batch', 'data': data,
                 'fine_labels': labels, 'coarse_labels': [0] * per_split,
                 'filenames': [f'img_{i}.png' for i in range(per_split)]}
        with open(osp.join(folder, split), 'wb') as f:
            pickle.dump(entry, f)
    meta = {'fine_label_names': [f'class_{i}' for i in range(100)],
            'coarse_label_names': [f'super_{i}' for i in range(20)]}
    with open(osp.join(folder, 'meta'), 'wb') as f:
        pickle.dump(meta, f)
    return root


@pytest.fixture(scope='module')
def small_imagenet_root(tmp_path_factory):
    """ImageNet folder layout (meta/*.txt + class folders), 4 classes, 2
    training and 1 validation JPEG per class: one validation batch."""
    from maxsup_mm.datasets import write_imagenet_folder
    return write_imagenet_folder(str(tmp_path_factory.mktemp('imagenet')),
                                 num_classes=4, per_class=(2, 1), size=IMG)


@pytest.fixture(scope='module')
def cifar100_root(tmp_path_factory):
    """Tiny CIFAR-100 pickles; mmpretrain's md5 checks of the real files
    are switched off for this module (the generated files differ)."""
    from mmpretrain.datasets import CIFAR100
    root = write_cifar100(str(tmp_path_factory.mktemp('cifar100')))
    mp = pytest.MonkeyPatch()
    mp.setattr(CIFAR100, 'train_list', [['train', None]])
    mp.setattr(CIFAR100, 'test_list', [['test', None]])
    mp.setattr(CIFAR100, 'meta', dict(CIFAR100.meta, md5=None))
    yield root
    mp.undo()


# ---------------------------------------------------------------------------
# the overrides: data roots, image size, batch sizes (and test plumbing)
# ---------------------------------------------------------------------------
def _shrink_pipeline(pipeline, size):
    for t in pipeline:
        if t['type'] == 'RandomResizedCrop':
            t['scale'] = size
        elif t['type'] == 'ResizeEdge':
            t['scale'] = round(size * 256 / 224)
        elif t['type'] == 'CenterCrop':
            t['crop_size'] = size


@functools.lru_cache(maxsize=None)
def _fromfile(rel):
    from mmengine.config import Config
    return Config.fromfile(osp.join(CONFIG_DIR, rel))


def load_raw(rel):
    """The resolved config of ``rel`` (a copy; loading is cached)."""
    return copy.deepcopy(_fromfile(rel))


def smoke_config(rel, data_root, work_dir):
    """Load ``rel`` as tools/train.py does and apply the smoke overrides."""
    from maxsup_mm.apis import add_default_hooks
    from maxsup_mm.apis.runner_utils import register_all
    cfg = load_raw(rel)
    # what maxsup_mm.apis.load_config adds for a non-distributed launch
    cfg.launcher = 'none'
    register_all(cfg)
    cfg = add_default_hooks(cfg)
    for name, batch in (('train_dataloader', 2), ('val_dataloader', 4),
                        ('test_dataloader', 4)):
        loader = cfg[name]
        loader.batch_size = batch
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.dataset.data_root = data_root
        # plumbing: serializing a 4-image list costs a full gc.collect()
        loader.dataset.serialize_data = False
        _shrink_pipeline(loader.dataset.get('pipeline', []), IMG)
    backbone = cfg.model.backbone
    if 'img_size' in backbone:  # ViT: positional embedding of the new size
        backbone.img_size = IMG
    # test plumbing: where logs go, quiet logs, a fixed seed
    cfg.work_dir = work_dir
    cfg.experiment_name = osp.splitext(rel.replace(os.sep, '__'))[0]
    cfg.log_level = 'WARNING'
    cfg.default_hooks.logger.interval = 1
    cfg.randomness = dict(seed=0)
    return cfg


class _StopTraining(Exception):
    pass


def _stop_hook():
    from mmengine.hooks import Hook

    class StopAfterFirstIter(Hook):
        """Record the first iteration's outputs, then stop training."""
        priority = 'LOWEST'
        outputs = alpha = None

        def after_train_iter(self, runner, batch_idx, data_batch=None,
                             outputs=None):
            self.outputs = {k: float(torch.as_tensor(v).detach())
                            for k, v in outputs.items()}
            self.alpha = runner.message_hub.get_scalar(
                'train/alpha').current() if 'train/alpha' in \
                runner.message_hub.log_scalars else None
            raise _StopTraining

    return StopAfterFirstIter()


@pytest.fixture
def fast_runner(monkeypatch):
    """Test plumbing that changes no result, only the speed of many tiny
    runs: the runner logs and dumps the config text, which mmengine formats
    with yapf (seconds per config), and on a shared 2-core machine one
    intra-op thread is several times faster than two for 2-image batches."""
    import torch
    from mmengine.config import Config
    monkeypatch.setattr(Config, 'pretty_text',
                        property(lambda self: str(self._cfg_dict)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize('rel', CONFIGS)
def test_config_trains_one_iteration_and_validates(
        rel, small_imagenet_root, cifar100_root, fast_runner, tmp_path):
    from maxsup_mm.apis import build_runner
    is_cifar = _fromfile(rel).train_dataloader.dataset.type == 'CIFAR100'
    cfg = smoke_config(rel, cifar100_root if is_cifar else
                       small_imagenet_root, str(tmp_path))
    runner = build_runner(cfg)
    stop = _stop_hook()
    runner.register_hook(stop)
    with pytest.raises(_StopTraining):
        runner.train()
    outputs = stop.outputs
    assert outputs is not None and np.isfinite(outputs['loss'])
    metrics = runner.val()
    assert 0 <= metrics['accuracy/top1'] <= 100

    head = cfg.model.head
    hooks = {h['type']: h for h in cfg.get('custom_hooks', [])}
    if head.type.startswith('Zipf'):
        assert outputs['loss_zipf'] > 0
        assert outputs['loss'] == pytest.approx(outputs['loss_cls'] +
                                                outputs['loss_zipf'])
    if 'AlphaScheduleHook' in hooks:  # epoch 0: alpha == start
        assert stop.alpha == pytest.approx(hooks['AlphaScheduleHook']['start'])
        assert runner.model.head.loss_module.alpha == stop.alpha
    if head.loss.type == 'OnlineLabelSmoothLoss':
        assert 'OnlineLabelSmoothHook' in hooks
        assert runner.model.head.loss_module.hook_attached
        assert runner.model.head.loss_module.num_classes == head.num_classes


# ---------------------------------------------------------------------------
# siblings of one paper table differ only in the method keys
# ---------------------------------------------------------------------------
#: resolved-config keys a method may change
METHOD_KEYS = ('model.head.type', 'model.head.loss', 'model.head.zipf_weight',
               'model.head.power', 'model.head.dense_upsample',
               'model.head.upsample_scale', 'model.head.image_vote',
               'model.head.num_extra_tokens', 'model.neck',
               'model.backbone.out_type', 'custom_hooks', 'custom_imports')

_CNN_METHODS = ['', '-ls', '-ols', '-zipf', '-maxsup', '-lp']
_MODELS = ['resnet18', 'resnet50', 'resnet101', 'mobilenet-v2']


def _folder(model):
    return 'mobilenet_v2' if model.startswith('mobilenet') else 'resnet'


SIBLINGS = {}
for _m in _MODELS:
    SIBLINGS[f'table4-imagenet-{_m}'] = [
        f'{_folder(_m)}/{_m}_8xb256-coslr-200e{t}_in1k.py'
        for t in _CNN_METHODS]
    SIBLINGS[f'table7-{_m}'] = [
        f'{_folder(_m)}/{_m}_8xb64-steplr-90e{t}_in1k.py'
        for t in _CNN_METHODS]
    SIBLINGS[f'table4-cifar100-{_m}'] = [
        f'cifar100/{_m}_1xb128-200e{t}_cifar100.py' for t in _CNN_METHODS]
SIBLINGS['table5'] = [
    f'deit/deit-small_8xb128{t}_in1k.py'
    for t in ['', '-ls', '-ols', '-zipf', '-maxsup']] + [
        'deit-small_maxsup.py']
SIBLINGS['table1'] = [
    f'ablation/deit-small_8xb128-nomix{t}_in1k.py'
    for t in ['', '-ls', '-ls-reg', '-ls-errenh', '-ls-errenh-max',
              '-maxsup']]
SIBLINGS['table8'] = [
    'ablation/deit-small_8xb128-nomix_in1k.py',
    'ablation/deit-small_8xb128-nomix-ls_in1k.py',
    'ablation/deit-small_8xb128-nomix-maxsup_in1k.py',
    'alpha_schedule/deit-small_8xb128-nomix-ls-sched_in1k.py',
    'alpha_schedule/deit-small_8xb128-nomix-maxsup-sched_in1k.py']


def non_method_differences(base: dict, other: dict):
    """Flattened keys where two resolved configs differ outside METHOD_KEYS."""
    a, b = flatten(base), flatten(other)
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k, '<missing>') !=
            b.get(k, '<missing>')]
    return [k for k in diff
            if not any(k == m or k.startswith(m + '.') for m in METHOD_KEYS)]


def test_every_config_is_in_a_sibling_group():
    grouped = {p for group in SIBLINGS.values() for p in group}
    assert set(CONFIGS) == grouped, set(CONFIGS) ^ grouped


@pytest.mark.slow
@pytest.mark.parametrize('table', sorted(SIBLINGS))
def test_siblings_differ_only_in_method_keys(table):
    group = SIBLINGS[table]
    base = load_raw(group[0]).to_dict()
    # the first one of every group is its cross-entropy baseline
    assert base['model']['head']['loss']['type'] == 'CrossEntropyLoss'
    assert not base.get('custom_hooks')
    for rel in group[1:]:
        other = load_raw(rel).to_dict()
        assert other != base, f'{rel} is a copy of {group[0]}'
        assert non_method_differences(base, other) == [], rel


@pytest.mark.slow
def test_alpha_schedule_where_the_paper_uses_it():
    """LS and MaxSup use alpha 0.1 -> 0.2 by default (Sec. 5.1.1); Table 1
    and Table 8's first column use a fixed alpha of 0.1."""
    for rel in CONFIGS:
        cfg = _fromfile(rel)
        loss = cfg.model.head.loss
        hooks = [h for h in cfg.get('custom_hooks', [])
                 if h.type == 'AlphaScheduleHook']
        if loss.type not in ('MaxSupLoss', 'LabelSmoothDecompLoss'):
            assert not hooks, rel
            continue
        assert loss.alpha == 0.1, rel
        if rel.startswith('ablation/'):
            assert not hooks, rel
        else:
            assert hooks == [dict(type='AlphaScheduleHook', start=0.1,
                                  end=0.2)], rel


def test_sibling_check_catches_recipe_changes():
    """The checker itself: a changed batch size or lr is not a method key."""
    base = load_raw(SIBLINGS['table5'][0]).to_dict()
    other = load_raw(SIBLINGS['table5'][4]).to_dict()
    other['train_dataloader']['batch_size'] = 64
    other['optim_wrapper']['optimizer']['lr'] *= 2
    assert non_method_differences(base, other) == [
        'optim_wrapper.optimizer.lr', 'train_dataloader.batch_size']


# ---------------------------------------------------------------------------
# the headline config
# ---------------------------------------------------------------------------
def test_deit_small_maxsup_is_the_paper_recipe():
    cfg = load_raw('deit-small_maxsup.py')
    model = cfg.model
    assert model.backbone.type == 'VisionTransformer'  # not Distilled...
    assert model.backbone.arch == 'deit-small'
    assert model.head.type == 'VisionTransformerClsHead'  # not DeiTClsHead
    assert model.head.loss == dict(type='MaxSupLoss', alpha=0.1)
    hooks = [h for h in cfg.custom_hooks if h.type == 'AlphaScheduleHook']
    assert hooks == [dict(type='AlphaScheduleHook', start=0.1, end=0.2)]
    assert cfg.custom_imports.imports == ['maxsup_mm']
    # 8 GPUs x 128 = 1024, the batch the lr is set for
    assert cfg.train_dataloader.batch_size == 128
    assert cfg.auto_scale_lr.base_batch_size == 1024 == 8 * 128
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(5e-4 * 1024 / 512)
    # official DeiT: Mixup/CutMix, 300 epochs, drop path 0.1, RA sampler
    assert [a.type for a in model.train_cfg.augments] == ['Mixup', 'CutMix']
    assert cfg.train_cfg.max_epochs == 300
    assert model.backbone.drop_path_rate == 0.1
    assert cfg.train_dataloader.sampler.type == 'RepeatAugSampler'

    # built: no distillation token or head
    from mmpretrain.registry import MODELS
    from maxsup_mm.models.losses import MaxSupLoss
    model.backbone.img_size = IMG
    built = MODELS.build(model)
    assert built.backbone.num_extra_tokens == 1
    assert not hasattr(built.backbone, 'dist_token')
    assert isinstance(built.head.loss_module, MaxSupLoss)


@pytest.mark.slow
def test_headline_command_trains(small_imagenet_root, tmp_path):
    """``tools/train.py configs/deit-small_maxsup.py`` in a fresh process
    (what tools/dist_train.sh runs on every rank), with the data root, image
    size and batch sizes overridden, and 6 epochs of 4 iterations (the
    warm-up lasts 5 epochs): alpha rises 0.1 -> 0.2, reached in the last
    epoch (the authors' t / (T - 1) schedule)."""
    import subprocess
    import sys
    root = small_imagenet_root
    options = [
        f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.data_root={root}',
        'train_dataloader.batch_size=2', 'val_dataloader.batch_size=4',
        'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'val_dataloader.persistent_workers=False',
        f'train_dataloader.dataset.pipeline.1.scale={IMG}',
        f'val_dataloader.dataset.pipeline.1.scale={IMG + 4}',
        f'val_dataloader.dataset.pipeline.2.crop_size={IMG}',
        f'model.backbone.img_size={IMG}', 'train_cfg.max_epochs=6',
        'train_cfg.val_interval=6', 'default_hooks.checkpoint.interval=6',
        'default_hooks.logger.interval=1']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'train.py'),
         osp.join(CONFIG_DIR, 'deit-small_maxsup.py'), '--work-dir',
         str(tmp_path), '--cfg-options', *options],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert osp.isfile(tmp_path / 'epoch_6.pth')
    os.remove(tmp_path / 'epoch_6.pth')  # 90 MB
    log = open(glob(str(tmp_path / '*' / '*.log'))[0]).read()
    alphas = [float(a) for a in re.findall(r'alpha: ([0-9.]+)', log)]
    assert alphas[0] == pytest.approx(0.1)
    assert alphas[-1] == pytest.approx(0.1 + 0.1 * 5 / 5, abs=1e-4)
    assert 'accuracy/top1' in log


def test_mobilenet_v2_cifar_stem(fast_runner):
    import torch
    from mmpretrain.registry import MODELS
    import maxsup_mm  # noqa: F401
    cifar = MODELS.build(dict(type='MobileNetV2_CIFAR'))
    imagenet = MODELS.build(dict(type='MobileNetV2'))
    x = torch.randn(2, 3, 32, 32)
    assert cifar(x)[-1].shape == (2, 1280, 4, 4)
    assert imagenet(x)[-1].shape == (2, 1280, 1, 1)
    # same parameters, only two strides differ
    assert [p.shape for p in cifar.parameters()] == \
        [p.shape for p in imagenet.parameters()]


def test_readme_recipes_table_lists_every_config():
    text = open(osp.join(ROOT, 'README.md')).read()
    section = re.search(r'<!-- section:recipes -->(.*)<!-- /section:recipes',
                        text, re.S).group(1)
    for rel in CONFIGS:
        assert f'configs/{rel}' in section, rel


# ---------------------------------------------------------------------------
# the README's CPU smoke run (issue 13 item 19)
# ---------------------------------------------------------------------------
#: one config per family (folder); the DeiT-Small ones schedule warm-up
SMOKE_FAMILIES = [
    'resnet/resnet18_8xb256-coslr-200e_in1k.py',
    'mobilenet_v2/mobilenet-v2_8xb64-steplr-90e_in1k.py',
    'cifar100/resnet18_1xb128-200e-maxsup_cifar100.py',
    'deit-small_maxsup.py',
    'ablation/deit-small_8xb128-nomix-ls-reg_in1k.py',
    'alpha_schedule/deit-small_8xb128-nomix-maxsup-sched_in1k.py']


def readme_smoke_overrides():
    """``(common, deit)``: the ``--cfg-options`` of the README's CPU smoke
    run, for every config and the extra ones of the DeiT-Small configs."""
    text = open(osp.join(ROOT, 'README.md')).read()
    block = re.search(r'<!-- cpu-smoke-run -->(.*)<!-- /cpu-smoke-run -->',
                      text, re.S).group(1)
    codes = re.findall(r'```bash\n(.*?)```', block, re.S)
    assert len(codes) == 2, codes
    common, deit = (re.findall(r'(?<!\S)([\w.]+=\S+)', c) for c in codes)
    assert 'tools/train.py CONFIG' in codes[0]
    return common, deit


def _is_deit(rel):
    return 'deit' in rel


@pytest.mark.slow
@pytest.mark.parametrize('rel', SMOKE_FAMILIES)
def test_readme_cpu_smoke_run(rel, small_imagenet_root, cifar100_root,
                              fast_runner, tmp_path):
    """The README's overrides, through tools/train.py's config path, run
    (the schedulers are built) and train one iteration; without the DeiT
    line a DeiT-Small config is refused for its 5 warm-up epochs."""
    from mmengine.config import DictAction

    from maxsup_mm.apis import build_runner, prepare_train_cfg
    common, deit = readme_smoke_overrides()
    assert 'train_cfg.max_epochs=1' in common
    is_cifar = _fromfile(rel).train_dataloader.dataset.type == 'CIFAR100'
    root = cifar100_root if is_cifar else small_imagenet_root
    plumbing = [f'{s}_dataloader.dataset.data_root={root}'
                for s in ('train', 'val', 'test')] + [
        'log_level=WARNING', 'randomness.seed=0',
        f'experiment_name=smoke_{rel.replace("/", "_")}']
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)

    def runner(options):
        opts = parser.parse_args(['--cfg-options', *options]).cfg_options
        cfg = prepare_train_cfg(osp.join(CONFIG_DIR, rel),
                                work_dir=str(tmp_path), cfg_options=opts)
        return build_runner(cfg)

    if _is_deit(rel):
        with pytest.raises(ValueError, match='end should be larger than '
                           'begin, but got begin=5, end=1'):
            runner(common + plumbing).train()
    options = common + (deit if _is_deit(rel) else []) + plumbing
    run = runner(options)
    stop = _stop_hook()
    run.register_hook(stop)
    with pytest.raises(_StopTraining):
        run.train()
    assert np.isfinite(stop.outputs['loss'])
    assert len(run.train_dataloader.dataset) <= 8  # indices=8
    assert run.max_epochs == 1
