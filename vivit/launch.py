"""Run a vivit command as several JAX processes on this machine: `vivit-launch`
(multi-host training rehearsed on one box; on a cluster each host starts its own).

  vivit-launch --processes 2 --devices_per_process 4 -- \\
      --config configs/synthetic_motion.py --workdir runs/two_hosts

starts `python -m vivit.train --distributed <args>` (`--module` picks another
command) once per process, with a coordinator on localhost and
`--devices_per_process` CPU devices each; the processes form one mesh over all
devices and exchange data with CPU collectives (gloo). Output lines are prefixed
with the process index; the exit status is the first non-zero one, and a process
that fails stops the others. SIGTERM and Ctrl-C are passed on to every process
(training saves and exits 0; a second Ctrl-C stops at once).
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import List, Optional

from vivit import cli
from vivit.errors import ConfigError
from vivit.sharding import NUM_PROCESSES_ENV, PROCESS_ID_ENV

# The largest --processes and --devices_per_process (one machine runs them all), and
# --stop_timeout (a day).
MAX_PROCESSES = 64
MAX_DEVICES = 1024
MAX_STOP_TIMEOUT = 86400.0


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _relay(stream, prefix: str, out) -> None:
  for line in iter(stream.readline, ''):
    out.write(f'{prefix}{line}')
    out.flush()


def launch(args: List[str], processes: int, devices_per_process: int,
           module: str = 'vivit.train', timeout: Optional[float] = None,
           stop_timeout: float = 60.0) -> int:
  """Runs `python -m module --distributed *args` in `processes` processes; returns
  the first non-zero exit status (0 when all succeed).

  SIGTERM and SIGINT to the launcher are forwarded to every process (each runs in
  its own process group, so a terminal's Ctrl-C reaches them once, through here);
  processes still running `stop_timeout` seconds after the first are killed."""
  if processes < 1 or devices_per_process < 1:
    raise ConfigError(f'--processes ({processes}) and --devices_per_process '
                      f'({devices_per_process}) must be at least 1')
  coordinator = f'localhost:{free_port()}'
  children, relays, stop_signals = [], [], []

  def forward(signum, _):
    stop_signals.append((signum, time.time()))
    for child in children:
      if child.poll() is None:
        child.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  status = 0
  try:
    for index in range(processes):
      env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_COORDINATOR_ADDRESS=coordinator,
                 **{NUM_PROCESSES_ENV: str(processes), PROCESS_ID_ENV: str(index)})
      env['XLA_FLAGS'] = ' '.join(
          [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')] +
          [f'--xla_force_host_platform_device_count={devices_per_process}'])
      child = subprocess.Popen([sys.executable, '-m', module, '--distributed', *args],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, process_group=0)
      children.append(child)
      relay = threading.Thread(target=_relay, args=(child.stdout, f'[{index}] ', sys.stdout),
                               daemon=True)
      relay.start()
      relays.append(relay)
    deadline = None if timeout is None else time.time() + timeout
    while [child.poll() for child in children].count(None):  # polls every child
      failed = [c.returncode for c in children if c.returncode not in (None, 0)]
      if failed and not stop_signals:
        status = failed[0]
        break
      if deadline and time.time() > deadline:
        status = 124
        break
      if stop_signals and time.time() > stop_signals[0][1] + stop_timeout:
        print(f'vivit-launch: processes still running {stop_timeout:g}s after '
              f'{signal.Signals(stop_signals[0][0]).name}; killing them', flush=True)
        for child in children:
          if child.poll() is None:
            child.kill()
        status = -signal.SIGKILL
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
        child.wait()
    for relay in relays:
      relay.join(timeout=5)
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  status = status or next((c.returncode for c in children if c.returncode), 0)
  # A process killed by a signal has status -N; a shell reports it as 128 + N.
  return 128 - status if status < 0 else status


def _main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if '--' in argv:
    split = argv.index('--')
    own, passed = argv[:split], argv[split + 1:]
  else:
    own, passed = argv, []
  parser = cli.ArgumentParser(prog='vivit-launch', description=__doc__)
  parser.add_argument('--processes', type=cli.whole(1, MAX_PROCESSES), required=True,
                      help=f'JAX processes to start (at most {MAX_PROCESSES})')
  parser.add_argument('--devices_per_process', type=cli.whole(1, MAX_DEVICES), default=1,
                      help=f'CPU devices of each (default 1, at most {MAX_DEVICES})')
  parser.add_argument('--module', default='vivit.train',
                      help='the command each process runs (python -m MODULE)')
  parser.add_argument('--stop_timeout', type=cli.finite(0, MAX_STOP_TIMEOUT), default=60.0,
                      help='seconds the processes get to save and exit after a SIGTERM '
                      'or SIGINT (forwarded to each) before they are killed (at most '
                      f'{MAX_STOP_TIMEOUT:g})')
  parsed = parser.parse_args(own)
  if not passed:
    parser.error("give the command's arguments after --, e.g. -- --config "
                 "configs/synthetic_motion.py --workdir runs/two_hosts")
  return launch(passed + (['--verbose'] if parsed.verbose else []), parsed.processes,
                parsed.devices_per_process, parsed.module,
                stop_timeout=parsed.stop_timeout)


def main(argv=None) -> int:
  """`vivit-launch`."""
  return cli.run(_main, argv)


if __name__ == '__main__':
  sys.exit(main())
