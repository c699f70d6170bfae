"""The orbit-prior research script (research/orbit_prior/window_ladder.py) runs end to end on toy sizes: training with
image batches mixed in, the diagnostics (continuation and text-to-image), the atomic checkpoint, --eval-only and
--time-limit. The GPU settings (--device cuda --bf16) are the same code on another device."""
import json, sys, pathlib
import torch
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT/'research'/'orbit_prior'))
import window_ladder as wl


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('DREAMVID_CACHE', str(tmp_path/'cache'))
    return tmp_path


def _lines(out): return [json.loads(l) for l in out.splitlines() if l.startswith('{')]


def test_window_ladder_trains_evaluates_and_saves(cache, capsys):
    ck = cache/'w.pt'
    common = ['--frames', '2', '--subjects', '16', '--batch', '2', '--eval-subjects', '1', '--eval-heldout', '2',
              '--workers', '2', '--ema', '0.9', '--cond-sigma', '0.3']
    wl.main(common + ['--steps', '4', '--eval-every', '2', '--image-every', '2', '--batch-images', '3', '--save', str(ck)])
    rows = _lines(capsys.readouterr().out)
    assert [r['step'] for r in rows] == [2, 4]
    for r in rows:
        assert 0 <= r['heldout_t2i_binding'] <= 1 and r['heldout_t2i_mse'] > 0 and r['heldout_mse_true'] > 0
    saved = torch.load(ck)
    assert saved and all(v.device.type == 'cpu' for v in saved.values())
    wl.main(common + ['--init', str(ck), '--eval-only'])                  # the saved weights, evaluated without training
    again = _lines(capsys.readouterr().out)
    assert len(again) == 1 and again[0]['step'] == 0 and again[0]['loss'] is None
    assert abs(again[0]['heldout_mse_true'] - rows[-1]['heldout_mse_true']) < 1e-6   # what was saved is what was scored


def test_window_ladder_time_limit_stops_early(cache, capsys):
    wl.main(['--frames', '2', '--subjects', '16', '--batch', '2', '--eval-subjects', '1', '--steps', '1000',
             '--eval-every', '1000', '--time-limit', '0.001', '--workers', '2'])
    out = capsys.readouterr().out
    assert 'stopped by --time-limit' in out and _lines(out)[0]['step'] == 1
