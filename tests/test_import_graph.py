"""The import direction of ``maxsup_mm``: one way, no cycles.

Top to bottom (an import may only point down, or stay inside its unit)::

    tools/                      entries and application code (quickstart
                                study, analysis CLI, tools/paper): import the
                                library; nothing in maxsup_mm imports them
    maxsup_mm.apis              the runner API the tools share
    maxsup_mm (its __init__)    registration on import, config_path
    maxsup_mm.analysis / converters / datasets / engine / evaluation / models
    maxsup_mm.checkpoint / utils
    maxsup_mm.ops / fileio      import only torch, the standard library and
                                each other (ops/build.py writes the kernel
                                with fileio's atomic write)

The graph is read from the source with :mod:`ast` (no import side effects):
every ``import`` / ``from ... import`` anywhere in a file counts, function-
level (lazy) imports included.  ``from pkg import name`` is an edge to the
module ``pkg.name`` when that module exists, else to ``pkg``; parent
packages a submodule import initialises are not edges.  Two granularities:

* modules: every ``.py`` file (a package's ``__init__.py`` is the package);
* units: the first level below ``maxsup_mm`` (``maxsup_mm.analysis``,
  ``maxsup_mm.apis``, ``maxsup_mm.checkpoint`` ...; the package's own
  ``__init__`` is the unit ``maxsup_mm``).  A unit cycle such as
  ``analysis`` <-> ``apis`` fails even when no two modules form one.

``python tests/test_import_graph.py [PACKAGE_DIR]`` prints the violations of
another checkout (e.g. a worktree's ``maxsup_mm``).
"""
import ast
import os
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence, Set, Tuple

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PACKAGE = 'maxsup_mm'

#: the units of maxsup_mm, top layer first; an import must point to a lower
#: layer (or stay inside its unit); units of one layer may import each other
#: as long as no unit cycle forms
LAYERS = (
    ('maxsup_mm.apis', ),
    ('maxsup_mm', ),
    ('maxsup_mm.analysis', 'maxsup_mm.converters', 'maxsup_mm.datasets',
     'maxsup_mm.engine', 'maxsup_mm.evaluation', 'maxsup_mm.models'),
    ('maxsup_mm.checkpoint', 'maxsup_mm.utils'),
    ('maxsup_mm.ops', 'maxsup_mm.fileio'),
)


# ---------------------------------------------------------------------------
# the graph
# ---------------------------------------------------------------------------
def module_files(package_dir: str, package: str = PACKAGE) -> Dict[str, str]:
    """``{dotted module name: file}`` of every ``.py`` file of a package."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(package_dir):
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(('.', '_'))
                             and osp.isfile(osp.join(dirpath, d,
                                                     '__init__.py')))
        rel = osp.relpath(dirpath, package_dir)
        prefix = package if rel == '.' else \
            package + '.' + rel.replace(os.sep, '.')
        for name in sorted(filenames):
            if not name.endswith('.py'):
                continue
            stem = name[:-3]
            out[prefix if stem == '__init__' else f'{prefix}.{stem}'] = \
                osp.join(dirpath, name)
    return out


def imports(path: str, module: str) -> Set[Tuple[str, Optional[str]]]:
    """Every import of a file as ``(module, name)`` (absolute; lazy ones
    included): ``import X`` -> ``(X, None)``, ``from X import a`` ->
    ``(X, a)``; ``importlib.import_module('X')`` with a literal counts as
    ``import X``."""
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
    is_package = osp.basename(path) == '__init__.py'
    here = module if is_package else module.rpartition('.')[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:  # relative: resolved against this package
                base = here
                for _ in range(node.level - 1):
                    base = base.rpartition('.')[0]
                base = f'{base}.{node.module}' if node.module else base
            out.update((base, alias.name) for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, 'attr', getattr(node.func, 'id', None))
              == 'import_module'):
            out.add((node.args[0].value, None))
    return out


def import_graph(package_dir: str, package: str = PACKAGE
                 ) -> Dict[str, Set[str]]:
    """``{module: the modules of the package it imports}``.

    ``from X import a`` is an edge to the module ``X.a`` where it exists
    (``X`` is then only its parent, initialised on the way), else to ``X``.
    """
    files = module_files(package_dir, package)
    graph = {}
    for module, path in files.items():
        edges = set()
        for base, name in imports(path, module):
            if name is not None and f'{base}.{name}' in files:
                edges.add(f'{base}.{name}')
            elif base in files:
                edges.add(base)
        edges.discard(module)
        graph[module] = edges
    return graph


def unit_of(module: str, package: str = PACKAGE) -> str:
    """``maxsup_mm.models.losses.base`` -> ``maxsup_mm.models``."""
    parts = module.split('.')
    return '.'.join(parts[:2]) if len(parts) > 1 else package


def unit_graph(graph: Dict[str, Set[str]]) -> Dict[str, Set[str]]:
    units: Dict[str, Set[str]] = {}
    for module, targets in graph.items():
        src = unit_of(module)
        units.setdefault(src, set())
        units[src].update(unit_of(t) for t in targets if unit_of(t) != src)
    return units


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one node (Tarjan),
    each as a closed path through it (``a -> b -> a``)."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_path(graph, comp) for comp in comps]


def _cycle_path(graph, comp: List[str]) -> List[str]:
    """A closed path inside a strongly connected component."""
    members, start = set(comp), comp[0]
    paths, seen = {start: [start]}, {start}
    queue = [start]
    while queue:  # breadth first: the shortest way back to ``start``
        v = queue.pop(0)
        for w in sorted(graph.get(v, ())):
            if w == start:
                return paths[v] + [start]
            if w in members and w not in seen:
                seen.add(w)
                paths[w] = paths[v] + [w]
                queue.append(w)
    return comp  # unreachable for a strongly connected component


def tool_names(root: str = ROOT) -> Set[str]:
    """``tools`` and every top-level name a script of ``tools/`` can be
    imported as (its folder is on ``sys.path`` when it runs)."""
    names = {'tools'}
    for dirpath, _, filenames in os.walk(osp.join(root, 'tools')):
        for name in filenames:
            if name.endswith('.py'):
                names.add(name[:-3])
        if dirpath != osp.join(root, 'tools'):
            names.add(osp.basename(dirpath))
    return names - {'__init__'}


# ---------------------------------------------------------------------------
# the rules
# ---------------------------------------------------------------------------
def layer_violations(graph: Dict[str, Set[str]],
                     layers: Sequence[Sequence[str]] = LAYERS) -> List[str]:
    rank = {unit: i for i, layer in enumerate(layers) for unit in layer}
    out = []
    for module in sorted(graph):
        src = unit_of(module)
        if src not in rank:
            out.append(f'{module}: its unit {src} is in no layer of '
                       'tests/test_import_graph.py:LAYERS (add it where it '
                       'belongs)')
            continue
        for target in sorted(graph[module]):
            dst = unit_of(target)
            if dst == src or dst not in rank:
                continue
            if rank[dst] < rank[src]:
                out.append(f'{module} imports {target}: {src} must not import '
                           f'the layer above it ({dst})')
    return out


#: the bottom layer: torch / the standard library and each other only
BOTTOM = ('maxsup_mm.ops', 'maxsup_mm.fileio')


def ops_violations(graph: Dict[str, Set[str]]) -> List[str]:
    return [f'{module} imports {target}: {unit_of(module)} may import only '
            f'torch, the standard library and {" / ".join(BOTTOM)}'
            for module in sorted(graph) if unit_of(module) in BOTTOM
            for target in sorted(graph[module])
            if unit_of(target) not in BOTTOM]


def tools_violations(package_dir: str, root: str = ROOT,
                     package: str = PACKAGE) -> List[str]:
    tools = tool_names(root)
    out = []
    for module, path in module_files(package_dir, package).items():
        for base, _ in sorted(imports(path, module), key=str):
            if base.split('.')[0] in tools:
                out.append(f'{module} imports {base}: the library must not '
                           'import tools/ (application code)')
    return sorted(set(out))


def all_violations(package_dir: str, root: Optional[str] = None
                   ) -> List[str]:
    """Every broken rule of the package at ``package_dir``."""
    root = root or osp.dirname(osp.abspath(package_dir))
    graph = import_graph(package_dir)
    out = [' -> '.join(c) + ' (module cycle)' for c in find_cycles(graph)]
    out += [' -> '.join(c) + ' (unit cycle)'
            for c in find_cycles(unit_graph(graph))]
    out += ops_violations(graph)
    out += layer_violations(graph)
    out += tools_violations(package_dir, root)
    return out


# ---------------------------------------------------------------------------
# the tests: this checkout
# ---------------------------------------------------------------------------
@pytest.fixture(scope='module')
def graph():
    return import_graph(osp.join(ROOT, PACKAGE))


def test_graph_sees_every_module_and_lazy_imports(graph):
    """The parser is not blind: known edges of this package are found,
    including a function-level import."""
    assert len(graph) > 40
    assert 'maxsup_mm.checkpoint' in graph['maxsup_mm']
    assert 'maxsup_mm.utils' in graph['maxsup_mm.converters.external']
    # relative: ``from .runner_utils import ...``
    assert 'maxsup_mm.apis.runner_utils' in graph['maxsup_mm.apis.train_test']
    # lazy: the analysis registers a config's modules inside a function
    analysis = graph.get('maxsup_mm.analysis.extraction', set()) | \
        graph.get('maxsup_mm.analysis.data', set())
    assert 'maxsup_mm.utils' in analysis


def test_no_module_cycle(graph):
    cycles = find_cycles(graph)
    assert not cycles, '\n'.join(' -> '.join(c) for c in cycles)


def test_no_unit_cycle(graph):
    cycles = find_cycles(unit_graph(graph))
    assert not cycles, '\n'.join(' -> '.join(c) for c in cycles)


def test_ops_imports_only_torch_and_itself(graph):
    bad = ops_violations(graph)
    assert not bad, '\n'.join(bad)


def test_layers_point_down(graph):
    """No import points up a layer (:data:`LAYERS`): e.g. the library
    never imports the runner API (``apis``) or the package ``__init__``."""
    bad = layer_violations(graph)
    assert not bad, '\n'.join(bad)


def test_library_does_not_import_tools():
    bad = tools_violations(osp.join(ROOT, PACKAGE))
    assert not bad, '\n'.join(bad)


def test_quickstart_study_is_outside_the_package():
    """The application lives beside its tool, not in the library."""
    assert osp.isfile(osp.join(ROOT, 'tools', 'quickstart_study.py'))
    found = [m for m in module_files(osp.join(ROOT, PACKAGE))
             if 'study' in m.split('.')[-1]]
    assert not found, found


# ---------------------------------------------------------------------------
# the checker can fail: a made-up package breaking each rule
# ---------------------------------------------------------------------------
def _write(root, files: Dict[str, str]) -> str:
    for rel, text in files.items():
        path = osp.join(root, rel)
        os.makedirs(osp.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write(text)
    return osp.join(root, PACKAGE)


def test_checker_finds_each_kind_of_violation(tmp_path):
    pkg = _write(str(tmp_path), {
        'maxsup_mm/__init__.py': 'from . import models\n',
        'maxsup_mm/models/__init__.py': 'from .a import f\n',
        # a lazy (function-level) import closing a module cycle a <-> b
        'maxsup_mm/models/a.py': 'from .b import g\ndef f():\n'
                                 '    from maxsup_mm.models import b\n',
        'maxsup_mm/models/b.py': 'def g():\n    from . import a\n',
        # a unit cycle without a module cycle: analysis.x -> apis.y,
        # apis.z -> analysis.w
        'maxsup_mm/analysis/__init__.py': '',
        'maxsup_mm/analysis/x.py': 'from maxsup_mm.apis.y import h\n',
        'maxsup_mm/analysis/w.py': '',
        'maxsup_mm/apis/__init__.py': '',
        'maxsup_mm/apis/y.py': 'def h():\n    pass\n',
        'maxsup_mm/apis/z.py': 'import maxsup_mm.analysis.w\n',
        # ops importing the models, the library importing tools/
        'maxsup_mm/ops/__init__.py': 'def k():\n'
                                     '    import maxsup_mm.models.b\n',
        'maxsup_mm/utils.py': 'from tools.quickstart_study import run\n',
        'maxsup_mm/extra.py': '',
        'tools/quickstart_study.py': '',
    })
    graph = import_graph(pkg)
    assert graph['maxsup_mm'] == {'maxsup_mm.models'}
    assert graph['maxsup_mm.models.a'] == {'maxsup_mm.models.b'}
    assert graph['maxsup_mm.models.b'] == {'maxsup_mm.models.a'}
    assert find_cycles(graph) == [['maxsup_mm.models.a',
                                   'maxsup_mm.models.b',
                                   'maxsup_mm.models.a']]
    units = find_cycles(unit_graph(graph))
    assert ['maxsup_mm.analysis', 'maxsup_mm.apis',
            'maxsup_mm.analysis'] in units
    assert ops_violations(graph) == [
        'maxsup_mm.ops imports maxsup_mm.models.b: maxsup_mm.ops may import '
        'only torch, the standard library and maxsup_mm.ops / '
        'maxsup_mm.fileio']
    layers = layer_violations(graph)
    assert any(v.startswith('maxsup_mm.analysis.x imports maxsup_mm.apis.y')
               for v in layers), layers
    assert any(v.startswith('maxsup_mm.extra: its unit') for v in layers)
    assert tools_violations(pkg, str(tmp_path)) == [
        'maxsup_mm.utils imports tools.quickstart_study: the library must '
        'not import tools/ (application code)']


def test_checker_accepts_a_clean_package(tmp_path):
    pkg = _write(str(tmp_path), {
        'maxsup_mm/__init__.py': 'from . import models\n'
                                 'from .utils import config_path\n',
        'maxsup_mm/models/__init__.py': 'from .a import f\n',
        'maxsup_mm/models/a.py': 'import torch\nfrom maxsup_mm import ops\n'
                                 'def f():\n    from .b import g\n',
        'maxsup_mm/models/b.py': 'from maxsup_mm.utils import config_path\n',
        'maxsup_mm/ops/__init__.py': 'from .kernel import run\n',
        'maxsup_mm/ops/kernel.py': 'import torch\nfrom . import build\n',
        'maxsup_mm/ops/build.py': '',
        'maxsup_mm/utils.py': 'import mmengine\n',
        'maxsup_mm/apis/__init__.py': 'import maxsup_mm\n'
                                      'from maxsup_mm.models import a\n',
        'tools/train.py': 'from maxsup_mm.apis import x\n',
    })
    assert all_violations(pkg, str(tmp_path)) == []
    graph = import_graph(pkg)
    # ``from maxsup_mm import ops`` is an edge to the module ops, not to the
    # package __init__ (which would be a false cycle through models)
    assert graph['maxsup_mm.models.a'] == {'maxsup_mm.ops',
                                           'maxsup_mm.models.b'}


if __name__ == '__main__':
    target = sys.argv[1] if len(sys.argv) > 1 else osp.join(ROOT, PACKAGE)
    problems = all_violations(target)
    print('\n'.join(problems) or f'{target}: no violations')
    sys.exit(1 if problems else 0)
