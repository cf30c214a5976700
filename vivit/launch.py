"""Run a vivit command as several JAX processes on this machine: `vivit-launch`
(multi-host training rehearsed on one box; on a cluster each host starts its own).

  vivit-launch --processes 2 --devices_per_process 4 -- \\
      --config configs/synthetic_motion.py --workdir runs/two_hosts

starts `python -m vivit.train --distributed <args>` (`--module` picks another
command) once per process, with a coordinator on localhost and
`--devices_per_process` CPU devices each; the processes form one mesh over all
devices and exchange data with CPU collectives (gloo). Output lines are prefixed
with the process index; the exit status is the first non-zero one, and a process
that fails stops the others.
"""
import os
import socket
import subprocess
import sys
import threading
import time
from typing import List, Optional

from vivit import cli
from vivit.errors import ConfigError
from vivit.sharding import NUM_PROCESSES_ENV, PROCESS_ID_ENV


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _relay(stream, prefix: str, out) -> None:
  for line in iter(stream.readline, ''):
    out.write(f'{prefix}{line}')
    out.flush()


def launch(args: List[str], processes: int, devices_per_process: int,
           module: str = 'vivit.train', timeout: Optional[float] = None) -> int:
  """Runs `python -m module --distributed *args` in `processes` processes; returns
  the first non-zero exit status (0 when all succeed)."""
  if processes < 1 or devices_per_process < 1:
    raise ConfigError(f'--processes ({processes}) and --devices_per_process '
                      f'({devices_per_process}) must be at least 1')
  coordinator = f'localhost:{free_port()}'
  children, relays = [], []
  for index in range(processes):
    env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_COORDINATOR_ADDRESS=coordinator,
               **{NUM_PROCESSES_ENV: str(processes), PROCESS_ID_ENV: str(index)})
    env['XLA_FLAGS'] = ' '.join(
        [f for f in env.get('XLA_FLAGS', '').split()
         if not f.startswith('--xla_force_host_platform_device_count')] +
        [f'--xla_force_host_platform_device_count={devices_per_process}'])
    child = subprocess.Popen([sys.executable, '-m', module, '--distributed', *args],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    children.append(child)
    relay = threading.Thread(target=_relay, args=(child.stdout, f'[{index}] ', sys.stdout),
                             daemon=True)
    relay.start()
    relays.append(relay)
  deadline = None if timeout is None else time.time() + timeout
  status = 0
  try:
    while [child.poll() for child in children].count(None):  # polls every child
      failed = [c.returncode for c in children if c.returncode not in (None, 0)]
      if failed or (deadline and time.time() > deadline):
        status = failed[0] if failed else 124
        break
      time.sleep(0.2)
  finally:
    for child in children:
      if child.poll() is None:
        child.terminate()
    for child in children:
      try:
        child.wait(timeout=30)
      except subprocess.TimeoutExpired:
        child.kill()
    for relay in relays:
      relay.join(timeout=5)
  return status or next((c.returncode for c in children if c.returncode), 0)


def _main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if '--' in argv:
    split = argv.index('--')
    own, passed = argv[:split], argv[split + 1:]
  else:
    own, passed = argv, []
  parser = cli.ArgumentParser(prog='vivit-launch', description=__doc__)
  parser.add_argument('--processes', type=int, required=True)
  parser.add_argument('--devices_per_process', type=int, default=1)
  parser.add_argument('--module', default='vivit.train',
                      help='the command each process runs (python -m MODULE)')
  parsed = parser.parse_args(own)
  if not passed:
    parser.error("give the command's arguments after --, e.g. -- --config "
                 "configs/synthetic_motion.py --workdir runs/two_hosts")
  return launch(passed + (['--verbose'] if parsed.verbose else []), parsed.processes,
                parsed.devices_per_process, parsed.module)


def main(argv=None) -> int:
  """`vivit-launch`."""
  return cli.run(_main, argv)


if __name__ == '__main__':
  sys.exit(main())
