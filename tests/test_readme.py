"""Every code block of the README and of docs/*.md runs as written, in page order, in one scratch folder.

A user follows the README from top to bottom in an empty folder; so does this test, then it runs the docs pages
in the same folder (they build on the tour's files). ``bash`` blocks run with ``bash -euo pipefail``, ``python``
blocks with this interpreter; ``text`` blocks are output and are not run. A block that fails, or a snippet that
drifts from the code, fails the build.

Changes to what is run, each printed when made (``pytest -s`` shows them):

* The Hub is a local server (``tests/hub_server.py``) reached through ``HF_ENDPOINT``, with a write token for the
  README's ``your-org`` in ``HF_TOKEN``: the blocks themselves are unchanged.
* The few text substitutions in ``SUBSTITUTIONS`` below (long CPU runs made short, installs that the test command
  has already done). Each must match its block exactly, so a stale one fails.
* Blocks after ``<!-- readme-test: skip (REASON) -->`` are not run: they need GPUs or a dataset the test cannot
  have (ImageNet), or hours of CPU. Keep them few.
"""
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest

from conftest import REPO_ROOT
from hub_server import HubServer, client_env

README = REPO_ROOT / 'README.md'
DOCS = sorted((REPO_ROOT / 'docs').glob('*.md'))
HUB_TOKEN = 'hf_readme_write_token'
HUB_USER = 'your-org'  # the organisation the README's examples publish to
BLOCK_TIMEOUT_S = 600

# (page, exact text in one block, replacement or None to not run it, why)
SUBSTITUTIONS = [
    ('README.md', 'python -m pip install -q -c constraints.txt -e ".[demo]" && timm-prelu demo', None,
     'installed already by the test command (".[dev]" holds all of ".[demo]", checked); tests/test_demo.py runs '
     '`timm-prelu demo --quick` (the same six stages, 16 epochs, two test scales) and checks every artefact; the '
     'full demo takes under 10 min on 2 cores'),
    ('README.md', 'python -m pip install -q -c constraints.txt -e ".[dev]" && python -m pytest -q', None,
     'this is the command that runs this test; .ci/run runs exactly this line (checked)'),
    ('docs/onnx.md', '--protocol dense --scales 32 48', '--protocol dense --scales 32',
     'exporting the protocol graph takes about a minute per scale on 2 cores: one scale here'),
    ('docs/init.md', 'timm-prelu reproduce depth --out runs/depth',
     'timm-prelu reproduce depth --out runs/depth --steps 60 --depths 22',
     'the full experiment (4 runs of 3000 iterations) takes minutes: 60 iterations of one depth here'),
]

SKIP = re.compile(r'<!--\s*readme-test:\s*skip\s*\((.+?)\)\s*-->')
FENCE = re.compile(r'^```(\w*)\n(.*?)^```\n', re.S | re.M)


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    skip: Optional[str]

    def __str__(self) -> str:
        return f'{self.page}:{self.line} ({self.lang})'


def read_blocks(path: Path) -> List[Block]:
    text = path.read_text()
    blocks = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip().rsplit('\n', 1)[-1]
        skip = SKIP.fullmatch(before.strip())
        blocks.append(Block(str(path.relative_to(REPO_ROOT)), text.count('\n', 0, m.start()) + 1, m.group(1),
                            m.group(2), skip.group(1) if skip else None))
    return blocks


@pytest.fixture(scope='module')
def scratch(tmp_path_factory, train_script):
    """An empty folder, and the environment of a user whose Hub is the local test server."""
    folder = tmp_path_factory.mktemp('readme-user')
    home = tmp_path_factory.mktemp('readme-hf-home')
    with HubServer({HUB_TOKEN: (HUB_USER, True)}) as hub:
        print(f'readme-test: the Hub is a local server at {hub.url} (HF_ENDPOINT), HF_TOKEN writes to {HUB_USER}')
        env = {**os.environ, **client_env(hub.url, home), 'HF_TOKEN': HUB_TOKEN, 'MPLBACKEND': 'Agg'}
        env.pop('HF_HUB_OFFLINE', None)
        yield folder, env


def _children_cpu_s() -> float:
    """CPU seconds of finished child processes: with the wall time, shows what a block costs on a busy machine."""
    try:
        import resource
    except ImportError:  # Windows
        return float('nan')
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_page(page: Path, folder: Path, env: dict) -> None:
    scripts = folder.parent / f'{folder.name}-scripts'
    scripts.mkdir(exist_ok=True)
    blocks = read_blocks(page)
    assert blocks, f'{page} has no code blocks'
    for block in blocks:
        assert block.lang in ('bash', 'python', 'text'), f'{block}: say which language (bash, python or text)'
        if block.lang == 'text':
            continue
        if block.skip:
            print(f'readme-test: {block}: not run ({block.skip})')
            continue
        code = block.code
        for where, old, new, why in SUBSTITUTIONS:
            if where == block.page and old in code:
                if new is None:
                    print(f'readme-test: {block}: not run ({why})')
                    code = None
                    break
                code = code.replace(old, new)
                print(f'readme-test: {block}: ran `{new}` for `{old}` ({why})')
        if code is None:
            continue
        script = scripts / f'{Path(block.page).stem}-{block.line}.{"py" if block.lang == "python" else "sh"}'
        script.write_text(code)
        command = [sys.executable, str(script)] if block.lang == 'python' else ['bash', '-euo', 'pipefail',
                                                                                 str(script)]
        cpu, start = _children_cpu_s(), time.perf_counter()
        proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
        print(f'readme-test: {block}: {time.perf_counter() - start:.1f} s wall, {_children_cpu_s() - cpu:.1f} s CPU')
        assert proc.returncode == 0, (f'{block} failed (exit {proc.returncode}):\n{code}\n--- output ---\n'
                                      f'{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')


@pytest.fixture(scope='module')
def toured(scratch):
    """The scratch folder after the README's blocks, run in order (the docs pages build on its files)."""
    folder, env = scratch
    run_page(README, folder, env)
    return folder, env


def test_readme_blocks_run_as_written(toured):
    folder, _ = toured
    for made in ('output/train/tour/model_best.pth.tar', 'hub_folder/model.safetensors', 'digits.onnx',
                 'digits.head.onnx'):
        assert (folder / made).is_file(), made


@pytest.mark.parametrize('page', DOCS, ids=[p.name for p in DOCS])
def test_docs_blocks_run_as_written(page, toured):
    run_page(page, *toured)


def test_every_substitution_matches_one_block():
    for page, old, _, _ in SUBSTITUTIONS:
        matches = [b for b in read_blocks(REPO_ROOT / page) if old in b.code and not b.skip]
        assert len(matches) == 1, f'{page}: {old!r} matches {len(matches)} blocks (the page changed?)'


def test_demo_extra_is_part_of_the_test_install():
    import tomllib
    extras = tomllib.loads((REPO_ROOT / 'pyproject.toml').read_text())['project']['optional-dependencies']
    assert set(extras['demo']) <= set(extras['dev'])


def test_readme_models_table_is_generated_by_the_command():
    text = README.read_text()
    start = text.index('<!-- generated by `timm-prelu models`')
    table = text[text.index('\n', start) + 1:text.index('<!-- end of generated table -->')].strip()
    out = subprocess.run([sys.executable, '-m', 'timm_prelu', 'models'], capture_output=True, text=True, check=True)
    assert table == out.stdout.strip()


def test_ci_runs_the_readme_test_command():
    ci = (REPO_ROOT / '.ci' / 'run').read_text().strip().splitlines()[-1]
    assert f'```bash\n{ci}\n```' in README.read_text()


def test_layout_lists_every_package():
    text = README.read_text()
    layout = text[text.index('## Layout'):]
    layout = layout[:layout.find('\n## ', 1) if '\n## ' in layout[1:] else len(layout)]
    listed = set(re.findall(r'^\s*- `([\w/]+/)`', layout, re.M))
    packages = {f'{p.name}/' for p in (REPO_ROOT / 'timm_prelu').iterdir() if (p / '__init__.py').is_file()}
    top = {'timm_prelu/', 'train/', 'export/', 'docs/', 'tests/'}
    assert listed == packages | top, (f'not listed: {sorted((packages | top) - listed)}; '
                                      f'listed but absent: {sorted(listed - packages - top)}')
    for name in top:
        assert (REPO_ROOT / name).is_dir(), name


def test_no_page_names_a_path_outside_the_repository():
    for page in [README, *DOCS, REPO_ROOT / 'train' / 'README.md', REPO_ROOT / 'docs' / 'benchmarks' / 'README.md']:
        text = page.read_text()
        for rel in re.findall(r'(?:\.\./)+[\w./-]*', text):  # every parent-relative path stays in the repository
            assert (page.parent / rel).resolve().is_relative_to(REPO_ROOT.resolve()), f'{page}: {rel}'
        assert '/work/' not in text, page
        assert not re.search(r'\bissue \d+|\(#\d+\)', text, re.I), f'{page} names an issue number'
