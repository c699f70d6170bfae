"""The spatial prior shared by target and reference tokens (`engine_dapter.spatial_prior`) and centred reference keys,
measured without training (rows 11-14 and 17-19 of `nbs/09e_engine_3dapter.ipynb`'s recipe table and its joint table).

`--ring`: `ring_router_check` on held-out ring subjects for every pair of `--widths` (0: no prior) and `--view-steps`
(Euler steps per view frame; the engine ships with 1), with `--center-keys` or not, with the shipped reference branch or, with `--branch none`, the
zero-initialised one (the base engine reading the references). One JSON line each: routing overall, per view step, per
layer, and PSNR. About 6 s per setting at one view step.

`--joint W`: the demo's joint method (Eq. 4, `--joint-steps` iterations, the shipped branch) on held-out subject
`--subject` (0: the demo's lamp) with the spatial prior of width W (and `--center-keys`), 8 videos from text: fidelity over the turn and per sector, rotation, routing. About 5 min.

    python research/router/locality_probe.py --ring --widths 0 0.4 0.2 0.1 0.05 0.03 0.015
    python research/router/locality_probe.py --ring --widths 0 0.05 0.03 --branch none
    python research/router/locality_probe.py --ring --widths 0.05 0 --view-steps 4 10
    python research/router/locality_probe.py --ring --widths 0 0.05 --subjects 12 --seed 1     # a fresh draw
    python research/router/locality_probe.py --joint 0.05
    python research/router/locality_probe.py --ring --center-keys --widths 0 0.2 0.05                    # row 17
    python research/router/locality_probe.py --ring --center-keys --widths 0.05 0.1 0.03 --subjects 12 --seed 1   # row 18
    python research/router/locality_probe.py --joint 0.05 --center-keys --subject 0                      # row 19 (and 1)
"""
import argparse, json, time
import numpy as np, torch
from dreamvid_lib import engine_dapter as ed, toyworld as tw
from dreamvid_lib.orbit_engine import load_orbit_engine

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument('--ring', action='store_true'); p.add_argument('--widths', type=float, nargs='+', default=[0.0, 0.05])
p.add_argument('--view-steps', type=int, nargs='+', default=[1]); p.add_argument('--branch', default='shipped', choices=['shipped', 'none'])
p.add_argument('--subjects', type=int, default=4, help='held-out ring subjects of the ring check (2 videos each)')
p.add_argument('--seed', type=int, default=0, help='draw of the held-out subjects (0: the ones the recipe table uses)')
p.add_argument('--joint', type=float, default=None, help="width of the prior for the demo's joint method on the lamp")
p.add_argument('--center-keys', action='store_true', help="re-centre each reference's keys on the frame's mean key")
p.add_argument('--subject', type=int, default=0, help='held-out subject of --joint (0: the demo\'s lamp)')
p.add_argument('--joint-steps', type=int, default=100); p.add_argument('--threads', type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)
r3 = lambda v: round(float(v), 3)

if a.ring:
    engine = load_orbit_engine()
    if a.branch == 'shipped': ed.load_dapter(engine, ed.default_engine_dapter())
    else: ed.add_dapter_branch(engine)
    held = tw.heldout_subjects(a.subjects, seed=a.seed)
    for vs in a.view_steps:
        engine.config.view_steps = vs
        for w in a.widths:
            ed.add_reference_attention(engine, locality=w, center_keys=a.center_keys); t = time.time()
            r = ed.ring_router_check(engine, held)
            print(json.dumps({'branch': a.branch, 'subjects': a.subjects, 'seed': a.seed, 'view_steps': vs, 'locality': w, 'center_keys': a.center_keys, 'routing': r3(r['routing_accuracy']),
                              'per_step': r['per_step'], 'by_layer': r['by_layer'], 'psnr': round(r['psnr'], 2),
                              'seconds': round(time.time() - t)}), flush=True)

if a.joint is not None:                                   # the demo's own joint method, at this attention setting
    import tempfile
    from dreamvid_lib.cli import demo_engine_joint
    with tempfile.TemporaryDirectory() as d:
        r = demo_engine_joint(tw.heldout_subjects(8, seed=0)[a.subject], d, a.joint_steps, progress=False,
                              attention={'locality': a.joint, 'center_keys': a.center_keys})
    j, ro = r['joint'], r['router']
    print(json.dumps({'subject': a.subject, 'locality': a.joint, 'center_keys': a.center_keys, 'joint_steps': a.joint_steps, 'psnr': round(j['psnr'], 2), 'ssim': r3(j['ssim']),
                      'rotation': j['rotation_monotone_rate'], 'sectors': {k: (round(v['psnr'], 2) if v else None) for k, v in j['per_sector'].items()},
                      'routing': r3(ro['routing_accuracy']), 'by_layer': [round(x, 2) for x in ro['per_layer']],
                      'loss_first_last': [r3(x) for x in j['loss_first_last']], 'train_seconds': round(j['train_seconds'])}), flush=True)
