"""scripts/notebook_stats.py: what counts as an exported cell, a definition and an assertion."""
import json, subprocess, sys, pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT/'scripts'))
import notebook_stats as ns

def _nb(path, cells):
    path.write_text(json.dumps({'cells': [{'cell_type': t, 'source': s, 'metadata': {}} for t, s in cells]}))

def test_counts_of_a_small_notebook(tmp_path):
    _nb(tmp_path/'a.ipynb', [
        ('code', '#| default_exp a'),
        ('markdown', '#| export\ndef not_code(): pass'),
        ('code', '#| export\ndef f(x):\n    def inner(): pass\n    return x\n\nclass C: pass'),      # 2 definitions, 6 lines
        ('code', '#| exports\nasync def g(): pass'),                                                 # 1 definition, 2 lines
        ('code', '#| exporti\ndef h(): pass'),                                                      # not an exported cell
        ('code', "%time f(1)\nf?\nassert f(1) == 1\ntest_eq(f(2), 2); fastcore.test.test_close(1, 1)\ntest_fail(lambda: 1/0)\nprint('test_eq')"),
        ('code', '#| export\n' + 'x = 1\n' * 60)])                                                   # 61 lines, no definition
    s = ns.stats(tmp_path)
    assert (s['exported_cells'], s['median_lines_per_exported_cell'], s['exported_cells_50_plus_lines']) == (3, 6, 1)
    assert (s['exported_definitions'], s['assertions'], s['assertions_per_definition']) == (3, 4, 1.333)

def test_the_repository_runs_and_prints_json():
    r = subprocess.run([sys.executable, str(ROOT/'scripts'/'notebook_stats.py'), '--json'], capture_output=True, text=True, check=True)
    s = json.loads(r.stdout)
    assert s['exported_cells'] > 0 and s['exported_definitions'] > 0 and '04a_train.ipynb' in s['per_notebook']

def test_no_frozen_progress_bars_in_saved_outputs(tmp_path):
    "tqdm's widget displays freeze in saved notebooks: scripts/strip_progress.py finds them, drops them, keeps real widgets."
    import strip_progress as sp
    r = subprocess.run([sys.executable, str(ROOT/'scripts'/'strip_progress.py'), '--check', *map(str, sorted((ROOT/'nbs').glob('*.ipynb')))],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"frozen progress bars in saved outputs: run python scripts/strip_progress.py nbs/*.ipynb\n{r.stdout}"
    bar = {'output_type': 'display_data', 'data': {sp.WIDGET: {'model_id': 'a1'}, 'text/plain': 'rings:   0%|          | 0/8 [00:00<?, ?subject/s]'}}
    panel = {'output_type': 'display_data', 'data': {sp.WIDGET: {'model_id': 'b2'}, 'text/plain': "VBox(children=(IntSlider(value=0),))"}}
    state = {'a1': {'state': {}}, 'b2': {'state': {'children': ['IPY_MODEL_c3']}}, 'c3': {'state': {}}}
    p = tmp_path/'n.ipynb'
    p.write_text(json.dumps({'cells': [{'cell_type': 'code', 'source': 'x', 'metadata': {}, 'outputs': [bar, panel]}],
                             'metadata': {'widgets': {sp.STATE: {'state': state}}}}))
    assert sp.strip(str(p), check=True) == 1 and sp.strip(str(p)) == 1 and sp.strip(str(p)) == 0
    nb = json.loads(p.read_text())
    assert nb['cells'][0]['outputs'] == [panel] and sorted(nb['metadata']['widgets'][sp.STATE]['state']) == ['b2', 'c3']

def test_no_cell_mixes_imports_with_code():
    "nbdev's docs step executes every cell that imports; one that also assigns or calls runs that code too (and warns)."
    import ast
    bad = []
    for p in sorted((ROOT/'nbs').glob('*.ipynb')):
        for c in json.loads(p.read_text())['cells']:
            src = ''.join(c['source'])
            if c['cell_type'] != 'code' or 'nbdev_export()' in src or src.lstrip().startswith(('#| export', '#| exports')): continue
            try: body = ast.parse('\n'.join(l for l in src.splitlines() if not l.startswith('%') and not l.startswith('!'))).body
            except SyntaxError: continue
            if any(isinstance(t, (ast.Import, ast.ImportFrom)) for t in body) and any(isinstance(t, (ast.Expr, ast.Assign)) for t in body):
                bad.append(f"{p.name} cell {c.get('id')}")
    assert not bad, f"cells that mix imports with code (move the imports to the notebook's import cell): {bad}"
