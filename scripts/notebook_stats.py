#!/usr/bin/env python
"""How the notebooks are cut: sizes of the exported cells, exported definitions, and assertions per definition.

    python scripts/notebook_stats.py                  # nbs/*.ipynb of this repository
    python scripts/notebook_stats.py path/to/nbs      # any folder of notebooks (e.g. fastcore's nbs/)
    python scripts/notebook_stats.py --json           # the same numbers as JSON (with one entry per notebook)

Exported cells: code cells whose first line is `#| export` or `#| exports` (`exporti` and others are not).
Lines of a cell: all its source lines, the directive line included. Exported definitions: top-level `def`,
`async def` and `class` statements of exported cells (read with `ast`). Assertions: `assert` statements plus
calls of fastcore.test's `test_eq`, `test_ne`, `test_close`, `test_fail`, `test_is`, `test_shuffled`,
`test_stdout`, `test_warns` and `test_eq_type` (by name or as an attribute, e.g. `fastcore.test.test_eq`),
counted in the non-exported code cells; IPython magics, shell lines and help (`%...`, `!...`, `name?`) are skipped.
"""
from __future__ import annotations
import argparse, ast, json, re, statistics, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_FUNCS = {'test_eq', 'test_ne', 'test_close', 'test_fail', 'test_is', 'test_shuffled', 'test_stdout', 'test_warns',
              'test_eq_type'}
EXPORT = re.compile(r'^\s*#\|\s*exports?\s*$')

def _source(cell: dict) -> str:
    src = cell.get('source', '')
    return ''.join(src) if isinstance(src, list) else src

def is_exported(cell: dict) -> bool:
    "A code cell whose first line is `#| export` or `#| exports`."
    lines = _source(cell).splitlines()
    return cell.get('cell_type') == 'code' and bool(lines) and bool(EXPORT.match(lines[0]))

def _parse(src: str, where: str) -> ast.Module | None:
    "The cell's syntax tree, magics and shell lines blanked; None (with a warning) when it is not Python."
    code = '\n'.join('' if re.match(r'\s*[%!]|\s*[\w.]+\?\??\s*$', l) else l for l in src.splitlines())
    try: return ast.parse(code)
    except SyntaxError as e:
        print(f'warning: {where}: not parsed ({e.msg}, line {e.lineno}); counted as nothing', file=sys.stderr)
        return None

def definitions(tree: ast.Module | None) -> int:
    "Top-level def / async def / class statements."
    return 0 if tree is None else sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in tree.body)

def assertions(tree: ast.Module | None) -> int:
    "`assert` statements plus calls of fastcore.test's functions, anywhere in the tree."
    if tree is None: return 0
    def name(f): return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
    return sum(isinstance(n, ast.Assert) or (isinstance(n, ast.Call) and name(n.func) in TEST_FUNCS) for n in ast.walk(tree))

def notebook_counts(path: Path) -> dict:
    "The raw counts of one notebook."
    cells = json.loads(path.read_text(encoding='utf-8')).get('cells', [])
    out = {'exported_cells': 0, 'lines': [], 'definitions': 0, 'assertions': 0}
    for i, c in enumerate(cells):
        if c.get('cell_type') != 'code': continue
        src = _source(c)
        tree = _parse(src, f'{path.name} cell {i}')
        if is_exported(c):
            out['exported_cells'] += 1; out['lines'].append(len(src.splitlines())); out['definitions'] += definitions(tree)
        else: out['assertions'] += assertions(tree)
    return out

def summary(counts: list[dict]) -> dict:
    "The numbers over notebooks' counts."
    lines = [n for c in counts for n in c['lines']]
    defs, asserts = sum(c['definitions'] for c in counts), sum(c['assertions'] for c in counts)
    return {'notebooks': len(counts), 'exported_cells': len(lines),
            'median_lines_per_exported_cell': statistics.median(lines) if lines else 0,
            'exported_cells_50_plus_lines': sum(n >= 50 for n in lines), 'exported_definitions': defs,
            'assertions': asserts, 'assertions_per_definition': round(asserts / defs, 3) if defs else None}

def stats(folder: Path) -> dict:
    "Summary of `folder/*.ipynb`, and one per notebook."
    nbs = sorted(folder.glob('*.ipynb'))
    if not nbs: raise SystemExit(f'{folder}: no notebooks (*.ipynb) in this folder')
    per = {p.name: notebook_counts(p) for p in nbs}
    return {'folder': str(folder), **summary(list(per.values())), 'per_notebook': {k: summary([v]) for k, v in per.items()}}

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('folder', nargs='?', default=str(ROOT/'nbs'), help='folder of notebooks (default: this repo\'s nbs/)')
    ap.add_argument('--json', action='store_true', help='print JSON, one entry per notebook included')
    a = ap.parse_args(argv)
    s = stats(Path(a.folder))
    if a.json: print(json.dumps(s, indent=1)); return
    rows = [('notebooks', s['notebooks']), ('exported cells', s['exported_cells']),
            ('median lines per exported cell', s['median_lines_per_exported_cell']),
            ('exported cells with 50+ lines', s['exported_cells_50_plus_lines']),
            ('exported definitions (top-level def/class)', s['exported_definitions']),
            ('assertions in non-exported cells', s['assertions']),
            ('assertions per exported definition', s['assertions_per_definition'])]
    print(s['folder'])
    for k, v in rows: print(f'  {k:<44} {v}')

if __name__ == '__main__': main()
