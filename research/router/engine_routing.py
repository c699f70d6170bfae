"""Router recipes for 3Dapter on the orbit engine (issue 12; rows 8-10 and 15-16 of `nbs/09e_engine_3dapter.ipynb`'s recipe table).

Pre-trains the reference branch with `engine_dapter.pretrain_engine_dapter` (Eq. 2) under changes meant to make the
references *necessary* and so to force routing, and scores `ring_router_check` on held-out ring subjects every `--every`
steps:

- `--near P --radius R`: in a share P of the samples one of the K references lies within ±R ring steps (15° each) of the
  target view, so the reference at the target's pose holds the answer;
- `--drop-source P`: in a share P of the samples the target pass gets no source view (zeros), so the target can only
  come from the references (the reference pass keeps it, as at generation);
- `--shared`: the branch's LoRA is active in the target pass too, so the target's queries can learn to look for the
  reference at their pose (generation then runs it in both passes);
- `--locality W`: the spatial prior shared by target and reference tokens (`engine_dapter.spatial_prior`, width W of the
  image side), in training and at evaluation.

    python research/router/engine_routing.py --near 1 --radius 2 --camera --steps 200                    # row 8
    python research/router/engine_routing.py --near 1 --radius 2 --camera --drop-source 1 --steps 200    # row 9
    python research/router/engine_routing.py --near 1 --radius 2 --camera --drop-source 0.5 --shared --steps 200   # row 10
    python research/router/engine_routing.py --near 1 --radius 2 --camera --locality 0.05 --steps 100 --every 50  # row 15
    python research/router/engine_routing.py --near 1 --radius 2 --camera --locality 0.05 --drop-source 0.5 --shared --steps 200 --every 50  # row 16

One JSON line per evaluation: step, mean loss of the last 50 steps, routing accuracy (chance 1/K) overall and per layer,
PSNR. Resumable from `--work` (`train_loop`'s checkpoints). About 6 s per step at K = 4, batch 16 on 2 CPU threads.
"""
import argparse, json
import numpy as np, torch
from dreamvid_lib import engine_dapter as ed
from dreamvid_lib.orbit_engine import load_orbit_engine
from dreamvid_lib import toyworld as tw
from dreamvid_lib.core import cache_dir

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument('--steps', type=int, default=200); p.add_argument('--k', type=int, default=4)
p.add_argument('--lr', type=float, default=5e-4); p.add_argument('--batch', type=int, default=16)
p.add_argument('--subjects', type=int, default=1000, help='training ring subjects (rendered and cached on first use)')
p.add_argument('--near', type=float, default=1.0, help='share of samples with a reference near the target')
p.add_argument('--radius', type=int, default=2, help='ring steps (15° each) the near reference may lie from the target')
p.add_argument('--drop-source', type=float, default=0.0, help='share of samples whose target pass gets no source view')
p.add_argument('--camera', action='store_true', help='camera_embed: a learned camera position on both passes')
p.add_argument('--shared', action='store_true', help='the branch is active in the target pass too (trained there, and used at generation)')
p.add_argument('--locality', type=float, default=0.0, help='width of the spatial prior on the reference logits (0: none)')
p.add_argument('--work', default='engine_routing_work'); p.add_argument('--every', type=int, default=100)
p.add_argument('--eval-subjects', type=int, default=4); p.add_argument('--threads', type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)


class NearRefBatches(ed.RingRefBatches):
    "`RingRefBatches` whose K references include, in a share `--near` of the samples, one within `--radius` steps of the target."
    def pick_references(self, targets, g):
        V, K, rows = self.rgba.shape[1], self.cfg.k, []
        for t in targets:
            if torch.rand((), generator=g) < a.near:
                n0 = (int(t) + int(torch.randint(-a.radius, a.radius + 1, (), generator=g))) % V
                row = [n0] + [int(x) for x in torch.randperm(V, generator=g) if int(x) != n0][:K - 1]
                rows.append([row[q] for q in torch.randperm(K, generator=g)])
            else: rows.append(torch.randperm(V, generator=g)[:K].tolist())
        return np.asarray(rows)


class DropSourceLoss(ed.RefFlowLoss):
    "`RefFlowLoss` whose target pass gets a zero source view in a share `--drop-source` of the samples."
    def forward(self, src, y0, delta, refs, ref_delta, sig, noise, owner):
        e, dev = self.engine, self.engine.device
        emb, mask = e.text([self.captions[int(o)] for o in owner])
        src, y0, noise, sig, delta = src.to(dev), y0.to(dev), noise.to(dev), sig.to(dev), delta.to(dev)
        seed = int(noise.abs().sum() * 1000) % 2 ** 31                  # from the batch, so a resumed run draws the same
        keep = (torch.rand(len(src), generator=torch.Generator().manual_seed(seed)) >= a.drop_source).float().view(-1, 1, 1, 1)
        s = sig.view(-1, 1, 1, 1)
        with ed.references(e, refs.to(dev), src, ref_delta.to(dev), emb, mask, 1, self.branch):
            v = ed.read_velocity(e, (1 - s) * y0 + s * noise, sig, src * keep.to(dev), delta, emb, mask, self.target)
        return ed.F.mse_loss(v.float(), (noise - y0).float())


ed.RingRefBatches = NearRefBatches
if a.drop_source > 0: ed.RefFlowLoss = DropSourceLoss
if a.shared:                                  # the target pass runs the branch as well, in training and at generation
    _loss, _gen = ed.RefFlowLoss, ed.generate_with_references
    class SharedLoss(_loss):
        def __init__(self, engine, captions, branch='dapter', target=None): super().__init__(engine, captions, branch, branch)
    ed.RefFlowLoss = SharedLoss
    ed.generate_with_references = lambda *args, **kw: _gen(*args, **{**kw, 'target': kw.get('branch', 'dapter')})
rings = tw.load_ring_dataset(tw.build_ring_dataset(cache_dir(), a.subjects))   # rendered and cached on first use
engine = load_orbit_engine()
cfg = ed.DapterPretrainConfig(steps=a.steps, k=a.k, lr=a.lr, batch_size=a.batch, checkpoint_every=a.every, camera_embed=a.camera,
                              locality=a.locality)
held = tw.heldout_subjects(a.eval_subjects, seed=0)
done = 0
while done < a.steps:
    log = ed.pretrain_engine_dapter(engine, rings, cfg, a.work, progress=False, stop_after=a.every)
    done = log['step']
    r = ed.ring_router_check(engine, held)
    print(json.dumps({'step': done, 'loss': round(float(np.mean([h['loss'] for h in log['history'][-50:]])), 4),
                      **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}}), flush=True)
