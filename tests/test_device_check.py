"""The device check runs end to end at a tiny size here, so it works the day an accelerator is
lent: every part present, each a result or a reason, the log and the results lines written."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
KEYS = ('device', 'versions', 'tests', 'throughput', 'peer', 'epoch', 'memory')


def test_the_dry_run_writes_every_part(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'device_check.py'), '--out',
                         str(tmp_path), '--dry_run', '--budget_s', '400'], env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  report = json.loads((tmp_path / 'device_check.json').read_text())
  for key in KEYS:
    assert key in report, key
    assert report[key] is not None or report['skipped'].get(key), (key, report['skipped'])
  for key in ('device', 'versions', 'tests', 'throughput', 'epoch', 'memory'):
    assert report[key] is not None, (key, report['skipped'].get(key))
  assert report['device']['platform'] == 'cpu'
  assert report['tests']['exit_code'] == 0, report['tests']
  assert {(r['batch_size'], r['dtype']) for r in report['throughput']} == {
      (8, 'bfloat16'), (8, 'float16')}
  assert report['epoch']['images'] == 256 and report['memory']['predicted_bytes'] > 0
  assert (tmp_path / 'device_check.log').stat().st_size > 0
  lines = [json.loads(l) for l in (tmp_path / 'results.jsonl').read_text().splitlines()]
  assert {l['benchmark'] for l in lines} >= {'train_throughput', 'device_epoch'}


def test_a_part_past_its_budget_is_null_with_the_reason(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'device_check.py'), '--out',
                         str(tmp_path), '--dry_run', '--budget_s', '12'], env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads((tmp_path / 'device_check.json').read_text())
  assert set(KEYS) <= set(report)
  assert report['versions'] is not None
  assert report['throughput'] is None and report['skipped']['throughput']
