import os, sys, pathlib
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
os.environ.setdefault('MPLBACKEND', 'Agg')

@pytest.fixture(scope='session')
def root(): return ROOT

@pytest.fixture(scope='session')
def toy():
    "The shipped toy backbone."
    from dreamvid_lib.backbones import load_backbone
    return load_backbone('toy')
