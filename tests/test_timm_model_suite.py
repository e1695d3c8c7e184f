"""timm's own model tests, run against the PReLU-nets.

timm ships tests/test_models.py in its sdist only. The sdist of the pinned timm release is downloaded once from PyPI
into tests/.cache/ (pip checks its sha256; a cached copy is checked again), test_models.py is extracted next to a
conftest that imports timm_prelu, and pytest runs it in a subprocess per model (memory goes back to the system
between models: the full-size model C alone peaks at about 6 GB).

What runs is every timm test parametrised over registered models, minus two that need published weights:
test_model_load_pretrained and test_model_features_pretrained download each pretrained tag from the Hub (timm's own
CI leaves them out too); tests/test_models.py covers the same loading path from local files. timm picks the models
of its forward_intermediates / prune tests by module name (FEAT_INTER_FILTERS); our module 'prelu_net' is added to
that list, as timm would when adding a model family with that API.
"""
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import timm

TIMM_VERSION = '1.0.31'
TIMM_SDIST_SHA256 = 'baa0b333339c46d3d6d4965d99b69f5053afed71210e8f433d7ea5ee6a18f0ec'
CACHE_DIR = Path(__file__).resolve().parent / '.cache'
MODEL_NAMES = ('prelu_model_a', 'prelu_model_b', 'prelu_model_c')
DESELECTED = 'not test_model_load_pretrained and not test_model_features_pretrained'
# Each of these runs once per model; anything else (skips, other tests) means the selection went wrong.
EXPECTED_TESTS = (
    'test_model_forward', 'test_model_backward', 'test_model_default_cfgs', 'test_model_forward_torchscript',
    'test_model_forward_features', 'test_model_forward_intermediates_features', 'test_model_forward_intermediates',
    'test_prune_intermediate_layers_contract', 'test_model_forward_fx', 'test_model_backward_fx',
    'test_model_forward_fx_torchscript',
)
TIMM_MARKERS = (
    'base', 'forward', 'backward', 'cfg', 'cfg_nonstd', 'torchscript', 'features', 'fxforward', 'fxbackward',
    'timeout(seconds): per-test limit, enforced only when pytest-timeout is installed',
)
CONFTEST = f'''"""Registers the PReLU-nets before timm's test module lists models, and timm's pytest markers."""
import timm_prelu  # noqa: F401


def pytest_configure(config):
    for marker in {TIMM_MARKERS!r}:
        config.addinivalue_line('markers', marker)
'''


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _timm_sdist() -> Path:
    """The verified timm sdist in the cache, downloaded with pip if absent."""
    sdist = CACHE_DIR / f'timm-{TIMM_VERSION}.tar.gz'
    if sdist.is_file() and _sha256(sdist) == TIMM_SDIST_SHA256:
        return sdist
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        requirement = Path(tmp) / 'requirements.txt'
        requirement.write_text(f'timm=={TIMM_VERSION} --hash=sha256:{TIMM_SDIST_SHA256}\n')
        proc = subprocess.run(
            [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:', '--require-hashes',
             '-r', str(requirement), '-d', tmp, '-q'],
            capture_output=True, text=True)
        downloaded = Path(tmp) / sdist.name
        if proc.returncode != 0 or not downloaded.is_file():
            pytest.fail(f'could not download the timm {TIMM_VERSION} sdist from PyPI ({proc.stderr.strip()[-500:]}); '
                        f'put {sdist.name} (sha256 {TIMM_SDIST_SHA256}) into {CACHE_DIR}')
        os.replace(downloaded, sdist)
    return sdist


def _prepare_run_dir() -> Path:
    """A folder with timm's test_models.py (our module added to FEAT_INTER_FILTERS), a conftest and a pytest.ini."""
    run_dir = CACHE_DIR / f'timm-{TIMM_VERSION}-tests'
    run_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(_timm_sdist()) as tar:
        source = tar.extractfile(f'timm-{TIMM_VERSION}/tests/test_models.py').read().decode()
    patched = source.replace('FEAT_INTER_FILTERS = [', "FEAT_INTER_FILTERS = ['prelu_net', ", 1)
    assert patched != source, "timm's test_models.py has no FEAT_INTER_FILTERS list any more: update this runner"
    for name, text in (('test_models.py', patched), ('conftest.py', CONFTEST),
                       ('pytest.ini', '[pytest]\n')):  # the ini makes this folder the rootdir: no project conftest
        with tempfile.NamedTemporaryFile('w', dir=run_dir, delete=False) as f:
            f.write(text)
        os.replace(f.name, run_dir / name)
    return run_dir


def _outcomes(junit_xml: Path) -> dict:
    """{test name: 'passed' | 'failed' | 'error' | 'skipped'} from a JUnit XML report."""
    outcomes = {}
    for case in ET.parse(junit_xml).getroot().iter('testcase'):
        tags = {child.tag for child in case}
        outcomes[case.get('name')] = next((t for t in ('failure', 'error', 'skipped') if t in tags), 'passed')
    return outcomes


@pytest.mark.slow
@pytest.mark.parametrize('model_name', MODEL_NAMES)
def test_timm_model_suite(model_name, tmp_path):
    assert timm.__version__ == TIMM_VERSION, (
        f'timm {timm.__version__} is installed but this runner pins the tests of timm {TIMM_VERSION}: install with '
        f'the constraints file, or update TIMM_VERSION and TIMM_SDIST_SHA256')
    run_dir = _prepare_run_dir()
    junit = tmp_path / 'junit.xml'
    env = dict(os.environ, TORCH_DEVICE='cpu')
    # Same selection everywhere: TORCH_BACKEND / TIMEOUT retarget the tests, GITHUB_ACTIONS drops some of them.
    for var in ('TORCH_BACKEND', 'TIMEOUT', 'GITHUB_ACTIONS'):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, '-m', 'pytest', 'test_models.py', '-q', '-p', 'no:cacheprovider',
         '-k', f'{model_name} and {DESELECTED}',
         f'--junitxml={junit}'],
        cwd=run_dir, env=env, capture_output=True, text=True, timeout=1800)
    log = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, log
    outcomes = _outcomes(junit)
    assert set(outcomes.values()) == {'passed'}, log
    for test in EXPECTED_TESTS:
        assert [n for n in outcomes if n.startswith(f'{test}[') and model_name in n], f'{test} did not run'
    assert len(outcomes) == len(EXPECTED_TESTS), sorted(outcomes)
