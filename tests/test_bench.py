"""The benchmark runner and the sweeps: resumable cells, refused mixed settings, tables, the `dreamvid bench` command,
the papermill grid."""
import json, os, subprocess, sys, pathlib
import numpy as np
import pytest
from dreamvid_lib.core import ConfigError
from dreamvid_lib.bench import BenchConfig, run_bench, run_subject, cell_path, collect, summarize, markdown_tables, METHODS
from dreamvid_lib.sweeps import grid_points, papermill_grid, Experiment, replace_exp

TINY = dict(n_subjects=2, methods=('base', '3db'), train_steps=4, gen_steps=2, n_videos=1, geometry=False)


def test_bench_resumes_cell_by_cell_and_refuses_other_settings(tmp_path):
    cfg = BenchConfig(**TINY).validate()
    assert run_subject(cfg, 1, tmp_path) == 2                        # as if a first run had been killed after subject 1
    stamp = cell_path(tmp_path, 1, 'base').stat().st_mtime_ns
    s = run_bench(tmp_path, cfg, progress=False)
    assert s['cells_done'] == s['cells_total'] == 4
    assert cell_path(tmp_path, 1, 'base').stat().st_mtime_ns == stamp  # the finished cell was not recomputed
    for f in ('per_video.csv', 'per_subject.csv', 'summary.json', 'tables.md', 'plots/summary.png'):
        assert (tmp_path/f).exists(), f
    m = s['methods']
    assert set(m) == {'base', '3db'} and m['base']['n_subjects'] == 2
    for k in ('psnr', 'ssim', 't_cons', 'dynamic_degree', 'motion_smoothness'): assert np.isfinite(m['3db'][k]), k
    with pytest.raises(ConfigError, match='other settings'):
        run_bench(tmp_path, BenchConfig(**{**TINY, 'train_steps': 5}), progress=False)


def test_summary_weighs_subjects_equally_and_tables_mark_the_best():
    import pandas as pd
    df = pd.DataFrame([{'subject_index': 0, 'method': 'base', 'seed': 0, 'psnr': 10.0, 'chamfer': 0.1},
                       {'subject_index': 0, 'method': 'base', 'seed': 1, 'psnr': 12.0, 'chamfer': 0.1},
                       {'subject_index': 1, 'method': 'base', 'seed': 0, 'psnr': 20.0, 'chamfer': 0.3},
                       {'subject_index': 0, 'method': '3db', 'seed': 0, 'psnr': 14.0, 'chamfer': 0.05},
                       {'subject_index': 1, 'method': '3db', 'seed': 0, 'psnr': 16.0, 'chamfer': 0.05}])
    s = summarize(df)
    assert s['base']['psnr'] == pytest.approx(15.5) and s['base']['std']['psnr'] == pytest.approx(4.5)
    md = markdown_tables(s)
    assert '**15.500 ± 4.500**' in md                                  # higher PSNR is better
    assert '**0.0500 ± 0.0000**' in md                                 # lower Chamfer is better
    assert 'Table 2' in md and 'Views' in md


def test_bench_config_errors_name_the_input():
    with pytest.raises(ConfigError, match="unknown methods \\['phantom'\\]"): BenchConfig(methods=('phantom',)).validate()
    with pytest.raises(ConfigError, match='n_videos=0'): BenchConfig(n_videos=0).validate()
    with pytest.raises(ConfigError, match='no finished cells'):
        from dreamvid_lib.bench import write_reports
        write_reports(pathlib.Path('/nonexistent-bench-dir'), BenchConfig())


def test_dreamvid_bench_command(tmp_path):
    exe = pathlib.Path(sys.executable).with_name('dreamvid')
    cmd = [str(exe), 'bench', '--out', str(tmp_path), '--subjects', '1', '--methods', 'base,3dapter', '--steps', '4',
           '--gen-steps', '2', '--videos', '1', '--no-geometry']
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path/'summary.json').read_text())
    assert set(s['methods']) == {'base', '3dapter'} and 'Table 1' in r.stdout
    r2 = subprocess.run(cmd[:-1] + ['--steps', '5', '--no-geometry'], capture_output=True, text=True, timeout=600)
    assert r2.returncode == 2 and 'other settings' in r2.stderr


def test_sweep_grid_and_knobs(tmp_path):
    assert len(grid_points({'rank': [4, 8], 'k': [1, 2, 4]})) == 6
    with pytest.raises(ConfigError, match='unknown experiment knobs'): replace_exp(Experiment(), ranks=4)
    nb = tmp_path/'echo.ipynb'                                           # a minimal parametrised notebook
    nb.write_text(json.dumps({'cells': [
        {'cell_type': 'code', 'id': 'params', 'metadata': {'tags': ['parameters']}, 'execution_count': None, 'outputs': [],
         'source': 'a = 1\nb = 2\nresults_path = "r.json"'},
        {'cell_type': 'code', 'id': 'write', 'metadata': {}, 'execution_count': None, 'outputs': [],
         'source': 'import json\njson.dump({"product": a * b}, open(results_path, "w"))'}],
        'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}},
        'nbformat': 4, 'nbformat_minor': 5}))
    env_jp = str(pathlib.Path(sys.prefix)/'share'/'jupyter')
    os.environ['JUPYTER_PATH'] = env_jp + os.pathsep + os.environ.get('JUPYTER_PATH', '')
    df = papermill_grid({'a': [2, 3], 'b': [5]}, tmp_path/'out', notebook=nb, progress=False)
    assert df['product'].tolist() == [10, 15] and (tmp_path/'out'/'results.csv').exists()
    bad = tmp_path/'silent.ipynb'
    cells = json.loads(nb.read_text()); cells['cells'] = cells['cells'][:1]; bad.write_text(json.dumps(cells))
    with pytest.raises(ConfigError, match='wrote no'): papermill_grid({'a': [1]}, tmp_path/'out2', notebook=bad, progress=False)


@pytest.mark.xdist_group('torchrun')   # accelerate's multi-GPU launcher binds torchrun's default port: one at a time
def test_bench_split_over_two_accelerate_processes_matches_one_process(tmp_path):
    """`accelerate launch` splits the subjects across processes; each trains alone (no gradient all-reduce between
    different subjects) and the results equal a single-process run's."""
    import pandas as pd
    acc, exe = pathlib.Path(sys.executable).with_name('accelerate'), pathlib.Path(sys.executable).with_name('dreamvid')
    args = ['bench', '--subjects', '2', '--methods', 'base,3db', '--steps', '3', '--gen-steps', '2', '--videos', '1', '--no-geometry']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    two = subprocess.run([str(acc), 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1', '--mixed_precision', 'no',
                          '--dynamo_backend', 'no', str(exe), *args, '--out', str(tmp_path/'two')], capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    one = subprocess.run([str(exe), *args, '--out', str(tmp_path/'one')], capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (pd.read_csv(tmp_path/d/'per_video.csv').sort_values(['subject_index', 'method']) for d in ('two', 'one'))
    assert len(a) == len(b) == 4
    assert np.allclose(a[['psnr', 'ssim', 't_cons']].to_numpy(), b[['psnr', 'ssim', 't_cons']].to_numpy(), atol=1e-5)
