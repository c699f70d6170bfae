"""One-way imports: a module of `dreamvid_lib` imports only modules exported by lower-numbered notebooks, and no
import circle exists (function-level imports included: a lazy import hides a circle, it does not remove it)."""
import ast, json, pathlib, re
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LIB = ROOT/'dreamvid_lib'

# Upward imports that remain, each to be removed by moving the shared piece down (then delete its line here).
# (importer, imported): why it is still there. Empty: every import runs down the notebook order.
ALLOWED_UPWARD = {
}

def notebook_order() -> dict:
    "module name -> its notebook's sort key (the file name: '01a_prompts' sorts between '01_toyworld' and '02_multiview')."
    order = {}
    for nb in sorted((ROOT/'nbs').glob('*.ipynb')):
        for c in json.loads(nb.read_text())['cells']:
            m = re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(c['source']), re.M) if c['cell_type'] == 'code' else None
            if m: order[m.group(1)] = nb.stem; break
    return order

def imports_of(path: pathlib.Path) -> set:
    "The `dreamvid_lib` modules that `path` imports anywhere (module level or inside functions)."
    mods = set(p.stem for p in LIB.glob('*.py'))
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module: out.add(node.module.split('.')[0])
            elif node.level == 1: out |= {a.name for a in node.names if a.name in mods}
            elif node.module == 'dreamvid_lib': out |= {a.name for a in node.names if a.name in mods}
            elif node.module and node.module.startswith('dreamvid_lib.'): out.add(node.module.split('.')[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split('.')[1] for a in node.names if a.name.startswith('dreamvid_lib.')}
    return (out & mods) - {path.stem}

def import_graph() -> dict:
    order = notebook_order()
    return {p.stem: imports_of(p) for p in sorted(LIB.glob('*.py')) if p.stem in order}

def test_every_module_has_a_notebook():
    order = notebook_order()
    missing = [p.stem for p in LIB.glob('*.py') if not p.stem.startswith('_') and p.stem not in order]
    assert not missing, f'modules without a notebook (default_exp): {missing}'

def test_no_upward_import():
    order, bad = notebook_order(), []
    for mod, deps in import_graph().items():
        for d in deps:
            if order[d] > order[mod] and (mod, d) not in ALLOWED_UPWARD:
                bad.append(f'{mod} ({order[mod]}) imports {d} ({order[d]})')
    assert not bad, 'imports against the notebook order:\n' + '\n'.join(sorted(bad))

def test_allow_list_is_current():
    "An allowed upward import that is gone (or no longer upward) must leave the list."
    g, order = import_graph(), notebook_order()
    stale = [k for k in ALLOWED_UPWARD if k[1] not in g.get(k[0], set()) or order[k[1]] < order[k[0]]]
    assert not stale, f'remove these from ALLOWED_UPWARD, they are gone: {stale}'

def test_no_import_circle():
    g = import_graph()
    state, cycles = {}, []
    def visit(n, stack):
        state[n] = 1; stack.append(n)
        for d in sorted(g.get(n, ())):
            if state.get(d) == 1: cycles.append(' -> '.join(stack[stack.index(d):] + [d]))
            elif d not in state: visit(d, stack)
        state[n] = 2; stack.pop()
    for n in sorted(g): 
        if n not in state: visit(n, [])
    assert not cycles, 'import circles:\n' + '\n'.join(cycles)


def test_one_training_loop():
    "Only `train` (the engine, nbs/04a) calls `.backward()` or steps an optimiser; every stage is a caller of `train_loop`."
    found = []
    for path in sorted(LIB.glob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ('backward', 'zero_grad'):
                found.append(f'{path.stem}:{node.lineno} .{node.func.attr}()')
            if isinstance(node, ast.Attribute) and node.attr in ('SGD', 'Adam', 'AdamW') and isinstance(node.value, ast.Attribute) \
                    and node.value.attr == 'optim':
                found.append(f'{path.stem}:{node.lineno} optim.{node.attr}')
    assert found and all(f.startswith('train:') for f in found), [f for f in found if not f.startswith('train:')]


# function-level imports of the library that must stay: a spawned worker imports the library's copy of its own module,
# and core finds the package folder
FUNCTION_LEVEL_ALLOWED = {('core', 'dreamvid_lib'), ('dapter', 'dreamvid_lib.dapter'), ('toyworld', 'dreamvid_lib.toyworld')}

def test_library_imports_at_module_level():
    "A module imports the library's modules at its top (one-way imports are then visible at a glance), except FUNCTION_LEVEL_ALLOWED."
    found = set()
    for path in sorted(LIB.glob('*.py')):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)): continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or '').startswith('dreamvid_lib')):
                    found |= {(path.stem, ('.' * node.level) + (node.module or '') + ('' if node.module else a.name)) if node.level
                              else (path.stem, node.module if node.module != 'dreamvid_lib' else f'dreamvid_lib.{a.name}')
                              for a in node.names}
                elif isinstance(node, ast.Import):
                    found |= {(path.stem, a.name) for a in node.names if a.name.split('.')[0] == 'dreamvid_lib'}
    assert found == FUNCTION_LEVEL_ALLOWED, sorted(found ^ FUNCTION_LEVEL_ALLOWED)
