"""Every notebook runs top to bottom: through papermill (kernel python3, CI parameters, temporary working
directory, execution timeout) and through `nbdev-test` (in-process, default parameters; cells tagged `#| slow` skipped,
and the notebooks in NBDEV_TEST_SKIP)."""
import os, re, sys, json, subprocess, pathlib
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NBS = sorted(p.name for p in (ROOT/'nbs').glob('*.ipynb'))

# Tiny parameters for CI; the defaults in each notebook's `parameters` cell are what the committed outputs ran.
CI_PARAMS = {
    '01_toyworld.ipynb': {'n_demo_subjects': 2, 'bench_subjects': 2},
    '02_multiview.ipynb': {'size': 48, 'capture_views': 12, 'capture_res': 96},
    '06_3dreambooth.ipynb': {'steps': 24, 'n_subjects': 2, 'ablation_steps': 8, 'gen_steps': 4},
    '05c_orbit_engine.ipynb': {'n_eval_subjects': 2},
    '06a_engine_dreambooth.ipynb': {'steps': 4, 'n_videos': 2, 'ablation_steps': 4},
    '05_toy_pretrain.ipynb': {'demo_subjects': 8, 'demo_steps': 12, 'diag_subjects': 1, 'compare_steps': 8, 'ladder_subjects': 2, 'overfit_steps': 6, 'ladder_steps': 6, 'ladder_gen_steps': 3},
    '09e_engine_3dapter.ipynb': {'ring_subjects': 16, 'pretrain_steps': 2, 'joint_steps': 2, 'router_subjects': 1, 'n_videos': 2},
    '07_3dapter.ipynb': {'n_subjects': 1, 'max_steps': 20, 'eval_every': 10, 'gen_steps': 3, 'zero_shot_subjects': 1, 'timing_steps': 10},
    '05b_generate.ipynb': {'steps': 6, 'ablation_subjects': 1, 'ablation_joint_steps': 5},
    '09_router.ipynb': {'joint_steps': 10, 'gen_steps': 3, 'n_videos': 2},
    '11_bench.ipynb': {'n_subjects': 1, 'train_steps': 8, 'gen_steps': 3, 'n_videos': 1, 'convergence_db_runs': [[2], [2, 4]],
                       'convergence_joint_runs': [[2]], 'convergence_videos': 2, 'branch_steps': 2, 'ring_subjects': 2},
    '12_sweeps.ipynb': {'steps': 8, 'gen_steps': 3, 'grid_ranks': [4], 'grid_k': [1, 2]},
    '09a_features.ipynb': {'smoke_steps': 20, 'n_eval_subjects': 3},
    '09c_geometry.ipynb': {'n_eval_subjects': 3},
    '10_metrics.ipynb': {'n_eval_subjects': 3},
    '10a_experiments.ipynb': {'steps': 4, 'gen_steps': 3},
    '13_cli.ipynb': {'fast': True},
    '12a_personalize.ipynb': {'steps': 6},
    '15_hunyuan.ipynb': {'demo_steps': 2},
    '12b_lrm.ipynb': {'demo_subjects': 4, 'demo_steps': 6, 'n_heldout': 2, 'mesh_resolution': 24, 'cli_res': 16},
    '12d_vfusion3d.ipynb': {'n_train_subjects': 4, 'n_heldout_subjects': 2, 'engine_steps': 2, 'elevation_orbits': 2, 'gen_subjects': 2, 'shard_size': 1},
    '12e_synthetic3d.ipynb': {'n_real': 2, 'synthetic_factor': 2, 'scales': [1], 'n_heldout': 2, 'filter_subjects': 3, 'lrm_steps': 6,
                              'finetune_steps': 3, 'study_dir': 'study'},
    '12f_make_your_3d.ipynb': {'n_subjects': 1, 'rounds': 1, 'identity_steps': 3, 'prior_steps': 3, 'db_steps': 3, 'gen_steps': 2,
                               'study_dir': 'study', 'ablation_subjects': 1},
}

def _parameters_cell(nb):
    return [c for c in nb['cells'] if 'parameters' in c.get('metadata', {}).get('tags', [])]

@pytest.mark.parametrize('name', NBS)
def test_notebook_structure(name):
    nb = json.loads((ROOT/'nbs'/name).read_text())
    assert nb['metadata']['kernelspec']['name'] == 'python3', f'{name}: kernel must be python3 for papermill'
    code = [c for c in nb['cells'] if c['cell_type'] == 'code' and ''.join(c['source']).strip()]
    assert any(c.get('outputs') for c in code) or not code, f'{name}: commit the notebook with outputs from a real run'
    for k in CI_PARAMS.get(name, {}):
        assert _parameters_cell(nb), f'{name}: has CI parameters but no cell tagged `parameters`'
        assert k in ''.join(_parameters_cell(nb)[0]['source']), f'{name}: parameter {k} is not in its parameters cell'

@pytest.mark.parametrize('name', NBS)
def test_notebook_papermill(name, tmp_path):
    import papermill as pm
    env_jp = str(pathlib.Path(sys.prefix)/'share'/'jupyter')
    os.environ['JUPYTER_PATH'] = env_jp + os.pathsep + os.environ.get('JUPYTER_PATH', '')
    pm.execute_notebook(str(ROOT/'nbs'/name), str(tmp_path/name), parameters=CI_PARAMS.get(name, {}),
                        kernel_name='python3', cwd=str(tmp_path), execution_timeout=900, progress_bar=False)

# Notebooks nbdev-test skips entirely (test_notebook_papermill above executes every cell of them at CI parameters).
# Prefer marking a notebook's long measurement/training cells `#| slow` (skipped by nbdev-test, see tst_flags in
# pyproject.toml) so that the rest of it still runs in-process; list a notebook here only while that is not done.
# None at present: 05_toy_pretrain was listed until its two training cells (35a2ecab, c13dae2d, and c8fbac66 that reads
# the first) were marked `#| slow`; it now runs in about 20 s under nbdev-test.
NBDEV_TEST_SKIP: list[str] = []

def test_nbdev_test():
    exe = pathlib.Path(sys.executable).with_name('nbdev-test')
    skip = '^([_.]' + ''.join('|' + re.escape(n) + '$' for n in NBDEV_TEST_SKIP) + ')'   # nbdev's default skip_file_re is ^[_.]
    r = subprocess.run([str(exe), '--n-workers', '1', '--timing', '--skip-file-re', skip], cwd=ROOT, capture_output=True,
                       text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
