"""Drop frozen progress bars from saved notebook outputs: tqdm's widget displays (their plain-text form reads like
`name:  40%|####  | 2/5 [...]`) are transient by nature and freeze at whatever they showed when the cell ended. Real
widgets (panels, sliders) stay; the widget state no remaining output refers to goes with the bars.

    python scripts/strip_progress.py nbs/*.ipynb      # rewrites the notebooks that had any; prints what it dropped
    python scripts/strip_progress.py --check nbs/*.ipynb   # exit 1 if any notebook has one
"""
import json, re, sys

TQDM = re.compile(r'^[^\n]*(\d+%\||\d+it \[|\?it/s\]|it/s\]|s/it\])')
WIDGET = 'application/vnd.jupyter.widget-view+json'
STATE = 'application/vnd.jupyter.widget-state+json'

def is_progress(out: dict) -> bool:
    d = out.get('data', {})
    return WIDGET in d and bool(TQDM.match(''.join(d.get('text/plain', ''))))

def _keep_states(nb: dict) -> None:
    "Keep only the widget models reachable from the widget outputs that remain."
    st = nb.get('metadata', {}).get('widgets', {}).get(STATE, {}).get('state')
    if st is None: return
    todo = [o['data'][WIDGET]['model_id'] for c in nb['cells'] for o in c.get('outputs', []) if WIDGET in o.get('data', {})]
    seen = set()
    while todo:
        m = todo.pop()
        if m in seen or m not in st: continue
        seen.add(m); todo += re.findall(r'IPY_MODEL_([0-9a-f]+)', json.dumps(st[m]))
    for k in list(st):
        if k not in seen: del st[k]
    if not st: del nb['metadata']['widgets']

def strip(path: str, check: bool = False) -> int:
    nb = json.load(open(path))
    n = 0
    for c in nb['cells']:
        outs = c.get('outputs', [])
        keep = [o for o in outs if not is_progress(o)]
        n += len(outs) - len(keep)
        if len(keep) != len(outs): c['outputs'] = keep
    if n and not check:
        _keep_states(nb)
        with open(path, 'w') as f: json.dump(nb, f, indent=1, ensure_ascii=False); f.write('\n')
    return n

if __name__ == '__main__':
    check = '--check' in sys.argv
    found = {p: n for p in sys.argv[1:] if p != '--check' for n in [strip(p, check)] if n}
    for p, n in found.items(): print(f"{p}: {n} progress bar(s) {'saved' if check else 'dropped'}")
    sys.exit(1 if check and found else 0)
